//! Lowering `matmul` and `fused_matmul`: batch-broadcast operand views, the tile shape (a few
//! rows for decode, 128 × 128 otherwise), and the epilogue the kernel applies to each tile —
//! or, for a matmul the backend offers to a GEMM library (`LowerOptions::library_matmuls`), a
//! map of its own reading the product back from an f32 buffer (unless it only rounds the
//! product to the output's type, which the library does as it stores).

use super::Lowering;
use crate::error::Result;
use crate::kernel::{decode_rows, Epilogue, Kernel, DECODE_ROWS};
use crate::narrow;
use crate::view::View;
use kiln_ir::{DType, TensorType};

impl Lowering<'_> {
    /// `a·b` (of IR types `types`), then `epilogue` on each output tile.
    pub(super) fn matmul(
        &mut self,
        ty: &TensorType,
        operands: &[View],
        types: &[DType],
        epilogue: Option<Epilogue>,
        label: String,
    ) -> Result<View> {
        narrow::check_matmul(types, self.options.narrow)?;
        let (a, b) = (
            self.buffered(&operands[0], &label),
            self.buffered(&operands[1], &label),
        );
        let r = ty.rank();
        let decode = decode_rows(&self.dim(&ty.shape[r - 2]));
        let offered = self.options.library_matmuls
            && !decode
            && a.dtype == DType::BF16
            && b.dtype == DType::BF16;
        if let (true, Some(e)) = (offered, epilogue.as_ref().filter(|e| !e.is_rounding())) {
            let product = TensorType::new(DType::F32, ty.shape.clone());
            let sum = self.matmul(&product, operands, types, None, label.clone())?;
            let out = self.temp(ty);
            let leaves = [vec![sum], e.leaves.clone()].concat();
            self.push(
                Kernel::Map {
                    out: out.clone(),
                    leaves,
                    expr: e.expr.clone(),
                },
                format!("{label} (epilogue)"),
            );
            return Ok(out);
        }
        let out = self.temp(ty);
        let (a, b) = widened_to(&out, &a, &b);
        self.push_matmul(a, b, out.clone(), epilogue, label);
        Ok(out)
    }

    /// The kernel computing `out = a·b` (operands already broadcast to `out`'s batch axes),
    /// then `epilogue`.
    pub(super) fn push_matmul(
        &mut self,
        a: View,
        b: View,
        out: View,
        epilogue: Option<Epilogue>,
        label: String,
    ) {
        let r = out.rank();
        let (tile_m, tile_n) = match out.dims[r - 2].as_constant() {
            Some(m) if m <= DECODE_ROWS => (m.max(1), 16),
            _ => (128, 128),
        };
        self.push(
            Kernel::MatMul {
                a,
                b,
                out,
                tile_m,
                tile_n,
                gemm_min_rows: self.options.gemm_min_rows,
                epilogue,
            },
            label,
        );
    }
}

/// `a` and `b` broadcast to the batch axes of `out` (their own last two axes kept).
pub(super) fn widened_to(out: &View, a: &View, b: &View) -> (View, View) {
    let batch = &out.dims[..out.rank() - 2];
    let widen = |v: &View| {
        let mut dims = batch.to_vec();
        dims.extend_from_slice(&v.dims[v.rank() - 2..]);
        v.broadcast(dims)
    };
    (widen(a), widen(b))
}
