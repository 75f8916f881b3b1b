//! Lowering `matmul` and `fused_matmul`: batch-broadcast operand views, the tile shape (a few
//! rows for decode, 128 × 128 otherwise), and the epilogue the kernel applies to each tile.

use super::Lowering;
use crate::error::Result;
use crate::kernel::{Epilogue, Kernel};
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
        let out = self.temp(ty);
        let (a, b) = (
            self.buffered(&operands[0], &label),
            self.buffered(&operands[1], &label),
        );
        let r = out.rank();
        let batch = &out.dims[..r - 2];
        let widen = |v: &View| {
            let mut dims = batch.to_vec();
            dims.extend_from_slice(&v.dims[v.rank() - 2..]);
            v.broadcast(dims)
        };
        let (a, b) = (widen(&a), widen(&b));
        let (tile_m, tile_n) = match out.dims[r - 2].as_constant() {
            Some(m) if m <= 4 => (m.max(1), 16),
            _ => (128, 128),
        };
        self.push(
            Kernel::MatMul {
                a,
                b,
                out: out.clone(),
                tile_m,
                tile_n,
                gemm_min_rows: self.options.gemm_min_rows,
                epilogue,
            },
            label,
        );
        Ok(out)
    }
}
