//! Elementwise expressions for map, reduce and epilogue kernels: a fused region's steps (or one
//! op) over leaves numbered as in the region, with narrow leaves widened by a cast.

use crate::kernel::{ExprNode, ExprOp};
use kiln_ir::{DType, Step, StepOp};

/// The expression of elementwise `steps` (of result types `dtypes`) over leaves stored as
/// `stored` (of IR types `leaf_types`), numbered as in a fused region: the leaves first, then
/// each step. A leaf stored narrower than its IR type (a bf16 weight read as f32) is widened
/// by a cast.
pub(super) fn expression(
    stored: &[DType],
    leaf_types: &[DType],
    steps: &[Step],
    dtypes: &[DType],
) -> Vec<ExprNode> {
    let mut expr: Vec<ExprNode> = stored
        .iter()
        .enumerate()
        .map(|(i, &dtype)| ExprNode {
            op: ExprOp::Leaf(i),
            dtype,
        })
        .collect();
    // Where each region value is: a leaf stored narrower than its IR type reads through a cast.
    let mut at: Vec<usize> = (0..stored.len()).collect();
    for (i, (&storage, &ty)) in stored.iter().zip(leaf_types).enumerate() {
        if storage != ty {
            expr.push(ExprNode {
                op: ExprOp::Cast(i),
                dtype: ty,
            });
            at[i] = expr.len() - 1;
        }
    }
    for (step, &dtype) in steps.iter().zip(dtypes) {
        let a: Vec<usize> = step.args.iter().map(|&x| at[x]).collect();
        let op = match step.op {
            StepOp::Unary(u) => ExprOp::Unary(u, a[0]),
            StepOp::Binary(b) => ExprOp::Binary(b, a[0], a[1]),
            StepOp::Select => ExprOp::Select(a[0], a[1], a[2]),
            StepOp::Cast(_) => ExprOp::Cast(a[0]),
        };
        expr.push(ExprNode { op, dtype });
        at.push(expr.len() - 1);
    }
    expr
}
