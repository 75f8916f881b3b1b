//! The causal-LM loss, written in primitives: token-level cross-entropy against the next token,
//! with an ignore index, optional label smoothing and optional z-loss.
//!
//! For logits `z` over the vocabulary at one position and target `t`:
//! `lse = max z + log Σ exp(z − max z)`, `ce = lse − z[t]`; label smoothing `ε` mixes in the
//! cross-entropy against the uniform distribution, `(1 − ε)·ce + ε·(lse − mean z)` (as PyTorch's
//! `label_smoothing`); z-loss adds `λ·lse²` (PaLM). Positions whose target is
//! [`IGNORE_INDEX`] contribute nothing and are not counted.
//!
//! The log-sum-exp is a max, a shifted `exp` and a sum that the fusion pass turns into two
//! reductions over the logits: no second vocabulary-sized f32 tensor is written. The target's
//! logit is picked by comparing the vocabulary index with the target (a one-hot select, also
//! fused into its reduction) rather than by a gather per row.

use kiln_ir::{BinaryOp, DType, Dim, Graph, IrError, NodeId, ReduceOp, TensorType, UnaryOp};

/// The target id of positions that take no part in the loss (PyTorch's and Hugging Face's).
pub const IGNORE_INDEX: i64 = -100;

/// What the training objective adds to plain cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOptions {
    /// `ε` in `[0, 1)`: the weight of the uniform distribution in the target.
    pub label_smoothing: f64,
    /// `λ ≥ 0`: the weight of `lse²`.
    pub z_loss: f64,
    /// `α` in `(0, 1]`: the embedding-gradient shrink (GLM-130B). The embedding lookup becomes
    /// `α·e + (1 − α)·stop_gradient(e)`: the same value, with the gradient reaching the
    /// embedding table through the lookup scaled by `α` (1: no shrink).
    pub embedding_gradient_scale: f64,
}

impl Default for LossOptions {
    fn default() -> LossOptions {
        LossOptions {
            label_smoothing: 0.0,
            z_loss: 0.0,
            embedding_gradient_scale: 1.0,
        }
    }
}

impl LossOptions {
    pub fn check(&self) -> Result<(), String> {
        let alpha = self.embedding_gradient_scale;
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(format!(
                "the embedding-gradient scale must be in (0, 1], found {alpha}"
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label smoothing must be in [0, 1), found {}",
                self.label_smoothing
            ));
        }
        if !(self.z_loss >= 0.0 && self.z_loss.is_finite()) {
            return Err(format!(
                "z-loss weight must be finite and at least 0, found {}",
                self.z_loss
            ));
        }
        Ok(())
    }
}

/// The summed loss `f32[]` over the positions whose target is not ignored, and their count
/// `f32[]`, for `logits f32[batch, seq, vocab]` and `targets i64[batch, seq]`.
pub fn cross_entropy(
    g: &mut Graph,
    logits: NodeId,
    targets: NodeId,
    opts: &LossOptions,
) -> Result<(NodeId, NodeId), IrError> {
    let shape = g.ty(logits).shape.clone();
    let last = shape.len() - 1;
    // The shift by the row maximum only keeps `exp` in range: the gradient reaching it through
    // `lse` and through `shifted` cancels exactly (softmax sums to one), so differentiation
    // stops at it, as PyTorch's log-softmax does, rather than build the `[batch, seq, vocab]`
    // terms of that cancellation.
    let max = g.reduce(ReduceOp::Max, logits, &[last])?;
    let max = g.push(kiln_ir::Op::StopGradient, &[max])?;
    let shifted = g.sub(logits, max)?;
    let exps = g.unary(UnaryOp::Exp, shifted)?;
    let total = g.reduce(ReduceOp::Sum, exps, &[last])?;
    let log_total = g.unary(UnaryOp::Log, total)?;
    let lse = g.add(max, log_total)?;
    g.set_label(lse, "loss.logsumexp");

    let mut column = shape[..last].to_vec();
    column.push(Dim::fixed(1));
    let target = g.reshape(targets, column)?;
    let mut vocab_shape = vec![Dim::fixed(1); last];
    vocab_shape.push(shape[last].clone());
    let vocab = g.iota(TensorType::new(DType::I64, vocab_shape), last)?;
    let is_target = g.binary(BinaryOp::Eq, vocab, target)?;
    let zero = g.scalar(DType::F32, 0.0)?;
    let picked = g.select(is_target, logits, zero)?;
    let target_logit = g.reduce(ReduceOp::Sum, picked, &[last])?;
    let mut token = g.sub(lse, target_logit)?;
    if opts.label_smoothing > 0.0 {
        let mean = g.reduce(ReduceOp::Mean, logits, &[last])?;
        let uniform = g.sub(lse, mean)?;
        let kept = g.binary_scalar(BinaryOp::Mul, token, 1.0 - opts.label_smoothing)?;
        let mixed = g.binary_scalar(BinaryOp::Mul, uniform, opts.label_smoothing)?;
        token = g.add(kept, mixed)?;
    }
    if opts.z_loss > 0.0 {
        let square = g.mul(lse, lse)?;
        let z = g.binary_scalar(BinaryOp::Mul, square, opts.z_loss)?;
        token = g.add(token, z)?;
    }
    g.set_label(token, "loss.token");

    let ignore = g.scalar(DType::I64, IGNORE_INDEX as f64)?;
    let counted = g.binary(BinaryOp::Ne, target, ignore)?;
    let kept = g.select(counted, token, zero)?;
    let every: Vec<usize> = (0..shape.len()).collect();
    let sum = g.reduce(ReduceOp::Sum, kept, &every)?;
    let sum = g.reshape(sum, Vec::new())?;
    let ones = g.cast(counted, DType::F32)?;
    let count = g.reduce(ReduceOp::Sum, ones, &every)?;
    let count = g.reshape(count, Vec::new())?;
    Ok((sum, count))
}
