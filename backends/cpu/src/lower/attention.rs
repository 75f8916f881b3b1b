//! Lowering `flash_attention` to one `Kernel::Attention`, its log-sum-exp to another (or, where
//! the target's kernel writes both — `LowerOptions::attention_with_lse` — a `flash_attention`
//! and a `flash_attention_lse` of the same operands to one kernel, at the first of them), and
//! its gradients to one reduction (`Δ = Σ d_out·out` per query, shared by the gradients of one
//! attention) and a `Kernel::AttentionGrad` each (or, where the target's kernel writes both —
//! `LowerOptions::attention_key_value_grads` — the gradients by the keys and by the values to
//! one kernel, at the first of them).
//!
//! Queries, keys and values are read in place when their last axis is unit-stride (copied
//! contiguous otherwise), and the head sizes must be constants (they size the kernel's scratch
//! and unroll its inner loops). The result, and each gradient, is written into a
//! `[B, S, H, D]` buffer through a permuted view, so the `permute` to `[B, S, H, D]` and the
//! `reshape` to `[B, S, H·D]` that follow attention in every decoder (and precede the
//! projections' matmuls in its backward) are free views instead of a copy.
//!
//! Refused, with an error: symbolic head sizes, and tiles whose scratch would not fit the
//! kernel's stack budget.

use super::Lowering;
use crate::error::{CompileError, Result};
use crate::kernel::{
    AttentionGradKernel, AttentionKernel, AttentionOutput, ExprNode, ExprOp, Kernel,
};
use crate::view::View;
use kiln_ir::{Attention, AttentionInput, BinaryOp, DType, NodeId, Op, ReduceOp, TensorType};
use kiln_runtime::manifest::BufferKind;

/// The most bytes of stack scratch one attention kernel may use.
const SCRATCH_LIMIT: i64 = 256 * 1024;

/// A fused attention's operands as its kernels read them.
struct Operands {
    q: View,
    k: View,
    v: View,
    positions: Option<View>,
    padding: Option<View>,
}

impl Lowering<'_> {
    /// `operands[i]` as a buffer whose last axis is unit-stride (copied otherwise).
    fn rows(&mut self, view: &View, label: &str) -> View {
        let v = self.buffered(view, label);
        if v.strides[v.rank() - 1].is_constant(1) {
            v
        } else {
            self.materialize(&v, label)
        }
    }

    /// The forward's operands as the kernels read them, after checking the head sizes and the
    /// scratch the tiles need.
    fn attention_operands(
        &mut self,
        attention: &Attention,
        operands: &[View],
        label: &str,
    ) -> Result<Operands> {
        let q = self.rows(&operands[0], label);
        let k = self.rows(&operands[1], label);
        let v = self.rows(&operands[2], label);
        let mut ints = |slot: Option<usize>| slot.map(|i| self.buffered(&operands[i], label));
        let positions = ints(attention.positions_slot());
        let padding = ints(attention.padding_slot());
        let size = |v: &View| {
            v.dims[3]
                .as_constant()
                .ok_or_else(|| CompileError("attention head sizes must be constants".into()))
        };
        let (d, dv) = (size(&q)?, size(&v)?);
        let (tile_q, tile_k) = (attention.tile_q as i64, attention.tile_k as i64);
        let scratch = tile_q
            .saturating_mul(dv.saturating_add(6))
            .saturating_add(tile_k)
            .saturating_mul(4);
        if scratch > SCRATCH_LIMIT || d > SCRATCH_LIMIT {
            return Err(CompileError(format!(
                "attention tiles of {tile_q} queries and {tile_k} keys need {scratch} bytes of \
                 scratch, more than {SCRATCH_LIMIT}"
            )));
        }
        Ok(Operands {
            q,
            k,
            v,
            positions,
            padding,
        })
    }

    /// The buffer of a `[B, H, S, D]` attention result or gradient of type `ty`: written
    /// through a permuted view of a `[B, S, H, D]` buffer (see the module doc).
    fn heads_inner_buffer(&mut self, ty: &TensorType) -> View {
        let dims = self.shape(ty);
        let heads_inner = vec![
            dims[0].clone(),
            dims[2].clone(),
            dims[1].clone(),
            dims[3].clone(),
        ];
        self.new_buffer(BufferKind::Temp, ty.dtype, heads_inner)
            .permute(&[0, 2, 1, 3])
    }

    /// The `flash_attention_lse` of node `id`'s operands if `id` is a `flash_attention`, or the
    /// reverse, not lowered yet, where the target writes both with one kernel (`kernel` is
    /// `id`'s own).
    fn attention_sibling(&self, id: NodeId, kernel: &AttentionKernel) -> Option<NodeId> {
        let writes_both = self.options.attention_with_lse?;
        let values = AttentionKernel {
            output: AttentionOutput::Values,
            ..kernel.clone()
        };
        if !writes_both(&values) {
            return None;
        }
        self.unlowered_twin(id, |op| match (op, kernel.output) {
            (Op::FlashAttentionLse(a), AttentionOutput::Values)
            | (Op::FlashAttention(a), AttentionOutput::LogSumExp) => *a == kernel.attention,
            _ => false,
        })
    }

    /// A node of node `id`'s operands, not lowered yet, whose op `pairs` accepts.
    fn unlowered_twin(&self, id: NodeId, pairs: impl Fn(&Op) -> bool) -> Option<NodeId> {
        let g = self.g;
        let operands = g.operands(id);
        g.users(operands[0]).into_iter().find(|&u| {
            pairs(&g.node(u).op) && g.operands(u) == operands && !self.views.contains_key(&u)
        })
    }

    /// `flash_attention` (`output` values) or `flash_attention_lse` (`output` log-sum-exp) of
    /// node `id`; with the other of the same operands in one kernel where the target's kernel
    /// writes both (`LowerOptions::attention_with_lse`), that one's view kept for its turn.
    pub(super) fn attention(
        &mut self,
        id: NodeId,
        output: AttentionOutput,
        operands: &[View],
        ty: &TensorType,
        label: String,
    ) -> Result<View> {
        let attention = match &self.g.node(id).op {
            Op::FlashAttention(a) | Op::FlashAttentionLse(a) => a.clone(),
            _ => unreachable!("lowered as attention"),
        };
        let Operands {
            q,
            k,
            v,
            positions,
            padding,
        } = self.attention_operands(&attention, operands, &label)?;
        let out = match output {
            AttentionOutput::Values => self.heads_inner_buffer(ty),
            AttentionOutput::LogSumExp => self.temp(ty),
        };
        let kernel = AttentionKernel {
            q,
            k,
            v,
            positions,
            padding,
            out: out.clone(),
            attention,
            output,
            lse: None,
        };
        if let Some(sibling) = self.attention_sibling(id, &kernel) {
            let sibling_ty = self.g.ty(sibling).clone();
            let (values, lse, values_label) = match output {
                AttentionOutput::Values => (out.clone(), self.temp(&sibling_ty), label.clone()),
                AttentionOutput::LogSumExp => {
                    let values = self.heads_inner_buffer(&sibling_ty);
                    (values, out.clone(), self.label_of(sibling))
                }
            };
            let both = AttentionKernel {
                out: values.clone(),
                output: AttentionOutput::Values,
                lse: Some(lse.clone()),
                ..kernel
            };
            let early = match output {
                AttentionOutput::Values => lse,
                AttentionOutput::LogSumExp => values,
            };
            self.written_early.insert(sibling, early);
            let label = format!("{values_label} (with its log-sum-exp)");
            self.push(Kernel::Attention(Box::new(both)), label);
            return Ok(out);
        }
        self.push(Kernel::Attention(Box::new(kernel)), label);
        Ok(out)
    }

    /// The `flash_attention_grad` of the same operands by the values if `id` is one by the keys,
    /// or the reverse, not lowered yet, where the target writes both with one kernel (`kernel`
    /// is `id`'s own).
    fn key_value_sibling(&self, id: NodeId, kernel: &AttentionGradKernel) -> Option<NodeId> {
        let writes_both = self.options.attention_key_value_grads?;
        let by_keys = AttentionGradKernel {
            wrt: AttentionInput::Keys,
            ..kernel.clone()
        };
        if !writes_both(&by_keys) {
            return None;
        }
        let wanted = match kernel.wrt {
            AttentionInput::Keys => AttentionInput::Values,
            AttentionInput::Values => AttentionInput::Keys,
            AttentionInput::Queries => return None,
        };
        self.unlowered_twin(id, |op| {
            matches!(op, Op::FlashAttentionGrad { attention, wrt }
                if *wrt == wanted && *attention == kernel.attention)
        })
    }

    /// `Δ[b, h, i] = Σ_c d_out[b, h, i, c] · out[b, h, i, c]`, shaped like the log-sum-exp: one
    /// reduction for every gradient of one attention (`key`: the nodes of `out` and `d_out`).
    fn attention_delta(
        &mut self,
        key: (NodeId, NodeId),
        (out, d_out): (&View, &View),
        lse: &View,
        label: &str,
    ) -> View {
        if let Some(delta) = self.attention_deltas.get(&key) {
            return delta.clone();
        }
        let mut rows = out.dims.clone();
        rows[3] = kiln_runtime::Poly::constant(1);
        let delta = self.new_buffer(BufferKind::Temp, DType::F32, rows);
        // A narrow result or cotangent is widened as it is read.
        let mut expr = Vec::new();
        let mut widened = |leaf: usize, dtype: DType| {
            expr.push(ExprNode {
                op: ExprOp::Leaf(leaf),
                dtype,
            });
            if dtype != DType::F32 {
                let at = expr.len() - 1;
                expr.push(ExprNode {
                    op: ExprOp::Cast(at),
                    dtype: DType::F32,
                });
            }
            expr.len() - 1
        };
        let d_out_f32 = widened(0, d_out.dtype);
        let out_f32 = widened(1, out.dtype);
        expr.push(ExprNode {
            op: ExprOp::Binary(BinaryOp::Mul, d_out_f32, out_f32),
            dtype: DType::F32,
        });
        self.push(
            Kernel::Reduce {
                op: ReduceOp::Sum,
                leaves: vec![d_out.clone(), out.clone()],
                expr,
                axes: vec![3],
                out: delta.clone(),
            },
            format!("{label} Δ"),
        );
        let delta = delta
            .reshape(lse.dims.clone())
            .expect("a fresh buffer reshapes");
        self.attention_deltas.insert(key, delta.clone());
        delta
    }

    /// `flash_attention_grad` node `id` by `wrt`: `Δ` (shared by the attention's gradients),
    /// then the gradient's kernel; by the keys and the values in one kernel where the target's
    /// kernel writes both (`LowerOptions::attention_key_value_grads`), the other's view kept
    /// for its turn.
    pub(super) fn attention_grad(
        &mut self,
        id: NodeId,
        (attention, wrt): (&Attention, AttentionInput),
        operands: &[View],
        ty: &TensorType,
        label: String,
    ) -> Result<View> {
        let n = attention.arity();
        let Operands {
            q,
            k,
            v,
            positions,
            padding,
        } = self.attention_operands(attention, &operands[..n], &label)?;
        let (out, d_out) = (&operands[n], &operands[n + 1]);
        let lse = self.buffered(&operands[n + 2], &label);
        let nodes = self.g.operands(id);
        let delta = self.attention_delta((nodes[n], nodes[n + 1]), (out, d_out), &lse, &label);
        let d_out = self.rows(d_out, &label);
        let result = self.heads_inner_buffer(ty);
        let kernel = AttentionGradKernel {
            q,
            k,
            v,
            positions,
            padding,
            d_out,
            lse,
            delta,
            out: result.clone(),
            wrt,
            attention: attention.clone(),
            d_values: None,
        };
        if let Some(sibling) = self.key_value_sibling(id, &kernel) {
            let sibling_result = self.heads_inner_buffer(&self.g.ty(sibling).clone());
            let (d_keys, d_values, keys_label) = match wrt {
                AttentionInput::Keys => (result.clone(), sibling_result.clone(), label.clone()),
                _ => (
                    sibling_result.clone(),
                    result.clone(),
                    self.label_of(sibling),
                ),
            };
            self.written_early.insert(sibling, sibling_result);
            let both = AttentionGradKernel {
                out: d_keys,
                wrt: AttentionInput::Keys,
                d_values: Some(d_values),
                ..kernel
            };
            let label = format!("{keys_label} (with the values')");
            self.push(Kernel::AttentionGrad(Box::new(both)), label);
            return Ok(result);
        }
        self.push(Kernel::AttentionGrad(Box::new(kernel)), label);
        Ok(result)
    }
}
