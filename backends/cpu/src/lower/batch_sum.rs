//! A matmul whose product is only summed over its leading batch axes (a weight's gradient:
//! `Σ_b X_bᵀ·dY_b`, as differentiation writes it for a weight broadcast over the batch) is
//! lowered as one matmul contracting over those axes and `k` together, straight into the sum:
//! no `[batch, m, n]` buffer of partial products, and no reduction kernel.
//!
//! It applies where the reduction (`reduce_sum` over axes `0..j`, `j` at most the batch rank)
//! is the product's only use, the product is not a program output, and each operand walks its
//! summed axes and `k` as one axis: each summed axis's stride is the stride of the axes inside
//! it times their extent (a contiguous activation and its cotangent do; an operand broadcast
//! over a summed axis does not). The sum then differs from the unfolded one only in the order
//! of its additions.
//!
//! Invariant: the reduction's node is lowered to the view made here, and the product's own
//! node to a placeholder that nothing reads.

use super::matmul::widened_to;
use super::Lowering;
use crate::error::Result;
use crate::narrow;
use crate::view::View;
use kiln_ir::{DType, NodeId, Op, ReduceOp};
use kiln_runtime::Poly;

impl Lowering<'_> {
    /// Lowers matmul `id` of `operands` (of IR types `types`) into the reduction summing it
    /// over leading batch axes, where that applies (see the module doc): the reduction's node
    /// and its view.
    pub(super) fn summed_matmul(
        &mut self,
        id: NodeId,
        operands: &[View],
        types: &[DType],
        label: &str,
    ) -> Result<Option<(NodeId, View)>> {
        let g = self.g;
        let (users, ty) = (g.users(id), g.ty(id));
        let [sum] = users[..] else {
            return Ok(None);
        };
        let summed = match &g.node(sum).op {
            Op::Reduce {
                op: ReduceOp::Sum,
                axes,
            } if !axes.is_empty() && axes.iter().enumerate().all(|(i, &x)| i == x) => axes.len(),
            _ => return Ok(None),
        };
        let output = g.outputs().iter().any(|(_, o)| *o == id);
        let (kept, buffers) = (
            g.ty(sum).rank() == ty.rank() && g.ty(sum).dtype == ty.dtype,
            operands.iter().all(|v| v.buffer().is_some()),
        );
        if summed > ty.rank() - 2 || output || !kept || !buffers {
            return Ok(None);
        }
        narrow::check_matmul(types, self.options.narrow)?;
        let product = View::splat(0.0, ty.dtype, self.shape(ty));
        let (a, b) = widened_to(&product, &operands[0], &operands[1]);
        let r = ty.rank();
        let (Some(a), Some(b)) = (folded(&a, summed, r - 1), folded(&b, summed, r - 2)) else {
            return Ok(None);
        };
        let out = self.temp(g.ty(sum));
        let label = format!("{label} (summed over the batch)");
        self.push_matmul(a, b, out.clone(), None, label);
        Ok(Some((sum, out)))
    }
}

/// `v` with its axes `0..summed` folded into axis `axis` (size 1 there, the extents multiplied
/// into `axis`, which keeps its stride), where `v` walks them as one axis, `axis` innermost.
fn folded(v: &View, summed: usize, axis: usize) -> Option<View> {
    let mut out = v.clone();
    let stride = &v.strides[axis];
    let mut extent = v.dims[axis].clone();
    for x in (0..summed).rev() {
        if !v.dims[x].is_constant(1) && v.strides[x] != stride.mul(&extent) {
            return None;
        }
        extent = extent.mul(&v.dims[x]);
        out.dims[x] = Poly::constant(1);
        out.strides[x] = Poly::constant(0);
    }
    out.dims[axis] = extent;
    Some(out)
}
