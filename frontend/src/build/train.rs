//! The training programs: loss, gradients and the optimizer step, appended to the forward of
//! every position.
//!
//! One optimizer step may span several micro-batches. Each micro-batch but the last runs
//! `accumulate`; the last runs `train_step`. Both take the sums so far — `loss_sum`,
//! `token_count` (`f32[]`) and `grad_sum.NAME` for every weight (zeros before the first
//! micro-batch) — and add this micro-batch's summed token loss, its count of counted tokens and
//! the gradient of its summed loss. `accumulate` returns the new sums under the same names.
//! `train_step` divides by the total count (so the loss is the mean over every counted token of
//! the step, whatever the split), clips the gradients to a global norm, applies AdamW and returns:
//!
//! - `loss`, `grad_norm` (`f32[]`, the norm before clipping);
//! - `accepted` (`f32[]`, 1 or 0): whether the step was applied — its loss and gradient norm
//!   are finite and the loss is at most the `max_loss` input (`inf`: any finite loss);
//! - `param.NAME`, `adam_m.NAME`, `adam_v.NAME`: each weight and its moments after the step —
//!   the values before it, bit for bit, when the step is not accepted.
//!
//! The decision is the program's own so that a backend may write the new state over the old
//! (the training state's outputs name the values they replace: `param.NAME` weight `NAME`,
//! `adam_m.NAME` and `adam_v.NAME` the inputs of the same name) and a rejected step still
//! leaves it as it was.
//!
//! Inputs besides the sums: `targets i64[batch, seq]` (the next token at each position, or
//! `-100` to ignore it), the moments `adam_m.NAME` and `adam_v.NAME` (f32, the weight's shape),
//! and the hyperparameters as `f32[]` inputs — `lr`, `beta1`, `beta2`, `eps`, `weight_decay`,
//! `max_grad_norm` (`inf`: no clipping), `max_loss` and `step` (1 for the first) — so one artifact serves
//! any schedule. The update is PyTorch's `AdamW` (decoupled decay `w·(1 − lr·wd)`, bias-corrected
//! moments, `eps` added after the corrected square root) and its clipping
//! (`clip_grad_norm_`: scale `min(1, max / (norm + 1e-6))`), in the same order of operations.
//! Every weight is trained and decayed; gradients are stated with `grad` and computed by the
//! `autodiff` pass.

use super::loss::{cross_entropy, LossOptions};
use super::Program;
use kiln_ir::{BinaryOp, DType, Graph, IrError, NodeId, Op, ReduceOp, TensorType, UnaryOp};

/// Adds the loss, gradients and (for `train_step`) the update of every weight of `g`.
pub fn append(
    g: &mut Graph,
    program: Program,
    logits: NodeId,
    tokens: TensorType,
    loss: &LossOptions,
) -> Result<(), IrError> {
    let targets = g.input("targets", tokens)?;
    let (loss_sum, count) = cross_entropy(g, logits, targets, loss)?;
    let scalar = TensorType::scalar(DType::F32);
    let loss_before = g.input("loss_sum", scalar.clone())?;
    let count_before = g.input("token_count", scalar)?;
    let loss_total = g.add(loss_before, loss_sum)?;
    let count_total = g.add(count_before, count)?;
    let weights: Vec<(String, NodeId)> = g
        .weights()
        .iter()
        .map(|&w| match &g.node(w).op {
            Op::Weight { name } => (name.clone(), w),
            _ => unreachable!("the signature holds weights"),
        })
        .collect();
    let mut grad_sums = Vec::new();
    for (name, w) in &weights {
        let before = g.input(&format!("grad_sum.{name}"), g.ty(*w).clone())?;
        let grad = g.push(Op::Grad, &[loss_sum, *w])?;
        grad_sums.push(g.add(before, grad)?);
    }
    if program == Program::Accumulate {
        g.output("loss_sum", loss_total)?;
        g.output("token_count", count_total)?;
        // Last weight first: the canonical order then computes each layer's weight gradients
        // right after its backward (see `clip`).
        for ((name, _), sum) in weights.iter().zip(grad_sums).rev() {
            g.output(&format!("grad_sum.{name}"), sum)?;
        }
        return Ok(());
    }
    let mean_loss = g.div(loss_total, count_total)?;
    g.output("loss", mean_loss)?;
    let grads: Vec<NodeId> = grad_sums
        .into_iter()
        .map(|sum| g.div(sum, count_total))
        .collect::<Result<_, _>>()?;
    let (norm, grads) = clip(g, grads)?;
    g.output("grad_norm", norm)?;
    let accepted = acceptance(g, mean_loss, norm)?;
    let as_number = g.cast(accepted, DType::F32)?;
    g.output("accepted", as_number)?;
    let hyper = Hyperparameters::inputs(g)?;
    for ((name, w), grad) in weights.iter().zip(grads) {
        let [param, m, v] = adamw(g, name, *w, grad, &hyper, accepted)?;
        g.output(&format!("param.{name}"), param)?;
        g.output(&format!("adam_m.{name}"), m)?;
        g.output(&format!("adam_v.{name}"), v)?;
    }
    Ok(())
}

/// The global L2 norm of `grads` and the gradients scaled by `min(1, max / (norm + 1e-6))`.
fn clip(g: &mut Graph, grads: Vec<NodeId>) -> Result<(NodeId, Vec<NodeId>), IrError> {
    let mut squares = Vec::new();
    for &grad in &grads {
        let square = g.mul(grad, grad)?;
        let every: Vec<usize> = (0..g.ty(grad).rank()).collect();
        let sum = g.reduce(ReduceOp::Sum, square, &every)?;
        squares.push(g.reshape(sum, Vec::new())?);
    }
    // Summed from the last weight to the first: the canonical order computes the gradients in
    // that order, so each weight's gradient follows its layer's backward closely and the
    // activation gradients it reads die early.
    let mut squares = squares.into_iter().rev();
    let mut total = squares.next().expect("a model has weights");
    for s in squares {
        total = g.add(total, s)?;
    }
    let norm = g.unary(UnaryOp::Sqrt, total)?;
    g.set_label(norm, "grad_norm");
    let max = g.input("max_grad_norm", TensorType::scalar(DType::F32))?;
    let padded = g.binary_scalar(BinaryOp::Add, norm, 1e-6)?;
    let ratio = g.div(max, padded)?;
    let coef = g.binary_scalar(BinaryOp::Min, ratio, 1.0)?;
    let clipped = grads
        .into_iter()
        .map(|grad| g.mul(grad, coef))
        .collect::<Result<_, _>>()?;
    Ok((norm, clipped))
}

/// Whether the step is applied (`bool[]`): `loss` and `norm` below `inf` (which NaN is not) and
/// `loss ≤ max_loss`.
fn acceptance(g: &mut Graph, loss: NodeId, norm: NodeId) -> Result<NodeId, IrError> {
    let max_loss = g.input("max_loss", TensorType::scalar(DType::F32))?;
    let finite_loss = g.binary_scalar(BinaryOp::Lt, loss, f64::INFINITY)?;
    let finite_norm = g.binary_scalar(BinaryOp::Lt, norm, f64::INFINITY)?;
    let below = g.binary(BinaryOp::Le, loss, max_loss)?;
    let finite = g.binary(BinaryOp::And, finite_loss, finite_norm)?;
    let accepted = g.binary(BinaryOp::And, finite, below)?;
    g.set_label(accepted, "accepted");
    Ok(accepted)
}

/// The optimizer's `f32[]` inputs.
struct Hyperparameters {
    lr: NodeId,
    beta1: NodeId,
    beta2: NodeId,
    eps: NodeId,
    weight_decay: NodeId,
    step: NodeId,
}

impl Hyperparameters {
    fn inputs(g: &mut Graph) -> Result<Hyperparameters, IrError> {
        let mut input = |name: &str| g.input(name, TensorType::scalar(DType::F32));
        Ok(Hyperparameters {
            lr: input("lr")?,
            beta1: input("beta1")?,
            beta2: input("beta2")?,
            eps: input("eps")?,
            weight_decay: input("weight_decay")?,
            step: input("step")?,
        })
    }
}

/// One AdamW step of weight `w` with gradient `grad`: the new weight and moments where
/// `accepted`, else the old ones. The weight's update reads the moments as selected (equal to
/// the updated ones where it is used), so each old value is read once, where it is replaced.
fn adamw(
    g: &mut Graph,
    name: &str,
    w: NodeId,
    grad: NodeId,
    h: &Hyperparameters,
    accepted: NodeId,
) -> Result<[NodeId; 3], IrError> {
    let ty = g.ty(w).clone();
    let m = g.input(&format!("adam_m.{name}"), ty.clone())?;
    let v = g.input(&format!("adam_v.{name}"), ty)?;
    let one = g.scalar(DType::F32, 1.0)?;
    // w·(1 − lr·wd)
    let decay = g.mul(h.lr, h.weight_decay)?;
    let keep = g.sub(one, decay)?;
    let decayed = g.mul(w, keep)?;
    // m + (1 − β1)(g − m)
    let toward = g.sub(grad, m)?;
    let rate1 = g.sub(one, h.beta1)?;
    let moved = g.mul(toward, rate1)?;
    let m_updated = g.add(m, moved)?;
    let m_new = g.select(accepted, m_updated, m)?;
    // β2·v + (1 − β2)·g²
    let kept = g.mul(v, h.beta2)?;
    let rate2 = g.sub(one, h.beta2)?;
    let square = g.mul(grad, grad)?;
    let added = g.mul(square, rate2)?;
    let v_updated = g.add(kept, added)?;
    let v_new = g.select(accepted, v_updated, v)?;
    // step size lr / (1 − β1ᵗ); denominator √v / √(1 − β2ᵗ) + eps
    let power1 = g.binary(BinaryOp::Pow, h.beta1, h.step)?;
    let correction1 = g.sub(one, power1)?;
    let step_size = g.div(h.lr, correction1)?;
    let power2 = g.binary(BinaryOp::Pow, h.beta2, h.step)?;
    let correction2 = g.sub(one, power2)?;
    let root2 = g.unary(UnaryOp::Sqrt, correction2)?;
    let root = g.unary(UnaryOp::Sqrt, v_new)?;
    let scaled = g.div(root, root2)?;
    let denominator = g.add(scaled, h.eps)?;
    let direction = g.div(m_new, denominator)?;
    let update = g.mul(direction, step_size)?;
    let w_updated = g.sub(decayed, update)?;
    let w_new = g.select(accepted, w_updated, w)?;
    g.set_label(w_new, format!("adamw {name}"));
    Ok([w_new, m_new, v_new])
}
