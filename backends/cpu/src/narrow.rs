//! The `bf16` values lowering accepts, and how kernels read widening views.
//!
//! What a target's kernels hold is its [`NarrowValues`]. The CPU's ([`NarrowValues::Storage`])
//! compute in f32 and hold bf16 only as storage: a weight, a view of one (`permute`,
//! `reshape`, `broadcast`, `slice`), or rows gathered from one; a `cast` of a bf16 weight to f32
//! is a widening view (storage bf16, IR type f32) that costs nothing. Everything else narrow is
//! refused there: `f16` values, and bf16 arithmetic, matmuls, reductions, constants and inputs.
//! Kernels that round to bf16 ([`NarrowValues::Bf16`], the CUDA backend's) also hold the values
//! the `bf16` precision policy computes: casts to bf16 (a `cast`, the last step of a fused
//! elementwise region or matmul epilogue, or an attention result declared bf16, rounded to
//! nearest even as it is stored), their views, concats of them, and matmuls with bf16 operands
//! of any origin (f32 accumulation; the result f32, or rounded to bf16 as it is stored).
//! Arithmetic on bf16 values, bf16 reductions, constants, inputs and `f16` values are refused
//! there too.
//!
//! Who reads a widening view: matmuls load the bf16 operand and widen it in registers; maps and
//! reductions (plain or fused) widen each narrow leaf with a `cast` node in their expression;
//! layout ops pass the view on. Every other kernel gets a widened copy first (`Lowering::widened`).

use crate::error::{CompileError, Result};
use crate::kernel::{ExprNode, ExprOp};
use crate::view::{Source, View};
use kiln_ir::{DType, Node, Op, RegionKind};
use kiln_runtime::manifest::{BufferDesc, BufferKind};

/// The narrow values a target's kernels hold (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NarrowValues {
    /// bf16 as stored weights, their views and gathered rows, widened as kernels read them.
    #[default]
    Storage,
    /// Also bf16 values rounded from f32 by casts, and matmuls of bf16 operands.
    Bf16,
}

/// Whether `node`, a bf16 value, is stored weights or what was read from them without
/// arithmetic.
fn is_bf16_storage(node: &Node) -> bool {
    matches!(
        node.op,
        Op::Weight { .. }
            | Op::Gather { .. }
            | Op::Permute { .. }
            | Op::Reshape
            | Op::Broadcast
            | Op::Slice { .. }
    )
}

/// Whether `node`, a bf16 value, is rounded from f32 or moved, not computed in bf16: a cast, a
/// fused elementwise region or matmul epilogue (whose steps are checked as kernels are emitted:
/// arithmetic in bf16 is refused there), a matmul or attention result rounded as it is stored,
/// or a concat of such values.
fn is_bf16_rounded(node: &Node) -> bool {
    match &node.op {
        Op::Cast
        | Op::Concat { .. }
        | Op::MatMul
        | Op::FlashAttention(_)
        | Op::FlashAttentionGrad { .. } => true,
        Op::Fused(region) => matches!(region.kind, RegionKind::Map | RegionKind::MatMul),
        _ => false,
    }
}

/// Refuses a node whose value the target's kernels cannot hold (see the module doc).
pub fn check_supported(node: &Node, narrow: NarrowValues) -> Result<()> {
    match (node.ty.dtype, narrow) {
        (DType::F16, NarrowValues::Storage) => Err(CompileError(
            "f16 values are not supported by the CPU backend".into(),
        )),
        (DType::F16, NarrowValues::Bf16) => Err(CompileError(
            "f16 values are not supported: kernels hold bf16 as their only 16-bit float type"
                .into(),
        )),
        (DType::BF16, NarrowValues::Storage) if !is_bf16_storage(node) => Err(CompileError(
            "bf16 values are not supported here: the CPU backend computes in f32 and holds bf16 \
             only as stored weights, their views and gathered rows (the bf16-weights precision)"
                .into(),
        )),
        (DType::BF16, NarrowValues::Bf16) if !is_bf16_storage(node) && !is_bf16_rounded(node) => {
            Err(CompileError(format!(
                "bf16 `{}` is not supported: kernels compute in f32 and hold bf16 only as \
                 weights, their views and gathers, values rounded by a cast and concats of them",
                node.op.name()
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses a matmul of operand types `operands` that the target's kernels cannot compute: f32
/// with bf16 storage (bf16 weights reach it as widening views), f32 or bf16 with bf16 values
/// (f32 accumulation; a bf16 result is checked as a value).
pub fn check_matmul(operands: &[DType], narrow: NarrowValues) -> Result<()> {
    let supported = |t: &DType| match narrow {
        NarrowValues::Storage => *t == DType::F32,
        NarrowValues::Bf16 => matches!(t, DType::F32 | DType::BF16),
    };
    if operands.iter().all(supported) {
        return Ok(());
    }
    Err(CompileError(match narrow {
        NarrowValues::Storage => {
            "matmul is compiled for f32 only (bf16 weights are read through a \
             cast to f32: the bf16-weights precision)"
                .into()
        }
        NarrowValues::Bf16 => format!(
            "matmul of {} is not supported: its operands must be f32 or bf16",
            operands
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" × ")
        ),
    }))
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
    let mut expr = ExprNode::leaf(from);
    expr.push(ExprNode {
        op: ExprOp::Cast(0),
        dtype: to,
    });
    expr
}
