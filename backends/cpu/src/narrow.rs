//! The `bf16` values lowering accepts, and how kernels read widening views.
//!
//! Kernels compute in f32. A bf16 value may be a weight, a view of one (`permute`, `reshape`,
//! `broadcast`, `slice`), or rows gathered from one; a `cast` of a bf16 weight to f32 is a
//! widening view (storage bf16, IR type f32) that costs nothing. Everything else narrow is
//! refused: `f16` values, and bf16 arithmetic, matmuls, reductions, constants and inputs (the
//! `bf16` and `f16` precision policies are for backends with 16-bit arithmetic).
//!
//! Who reads a widening view: matmuls load the bf16 operand and widen it in registers; maps and
//! reductions (plain or fused) widen each narrow leaf with a `cast` node in their expression;
//! layout ops pass the view on. Every other kernel gets a widened copy first (`Lowering::widened`).

use crate::error::{CompileError, Result};
use crate::kernel::{ExprNode, ExprOp};
use crate::view::{Source, View};
use kiln_ir::{DType, Node, Op};
use kiln_runtime::manifest::{BufferDesc, BufferKind};

/// Refuses a node whose value the CPU backend cannot hold (see the module doc).
pub fn check_supported(node: &Node) -> Result<()> {
    let holds_bf16 = matches!(
        node.op,
        Op::Weight { .. }
            | Op::Gather { .. }
            | Op::Permute { .. }
            | Op::Reshape
            | Op::Broadcast
            | Op::Slice { .. }
    );
    match node.ty.dtype {
        DType::F16 => Err(CompileError(
            "f16 values are not supported by the CPU backend".into(),
        )),
        DType::BF16 if !holds_bf16 => Err(CompileError(
            "bf16 values are not supported here: the CPU backend computes in f32 and holds bf16 \
             only as stored weights, their views and gathered rows (the bf16-weights precision)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `op` reads a widening view itself (the others get a widened copy).
pub fn reads_widening(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Select
            | Op::Cast
            | Op::Reduce { .. }
            | Op::Fused(_)
            | Op::MatMul
            | Op::Permute { .. }
            | Op::Reshape
            | Op::Broadcast
            | Op::Slice { .. }
    )
}

/// Whether casting `view` to `to` is a widening view: a bf16 weight (or a view of one) read as
/// f32.
pub fn is_widening_view(view: &View, to: DType, buffers: &[BufferDesc]) -> bool {
    let weight = match view.source {
        Source::Buffer(b) => matches!(buffers[b].kind, BufferKind::Weight(_)),
        _ => false,
    };
    weight && view.dtype == DType::BF16 && to == DType::F32
}

/// The expression widening one leaf stored as `from` to `to`.
pub fn widening(from: DType, to: DType) -> Vec<ExprNode> {
    vec![
        ExprNode {
            op: ExprOp::Leaf(0),
            dtype: from,
        },
        ExprNode {
            op: ExprOp::Cast(0),
            dtype: to,
        },
    ]
}
