//! `autodiff`: replaces every `grad %loss, %x` with the reverse-mode computation of `∂loss/∂x`.
//!
//! **Matches** the `grad` nodes of the graph (a training program states its gradients with them).
//! **Produces**, for each distinct loss, one backward sweep: the nodes on a path from a
//! differentiated value to the loss are visited in reverse topological order, each pulls its
//! cotangent back to its operands by its vector–Jacobian product (`vjp.rs`), and cotangents that
//! reach one value from several users are summed. A value the loss does not depend on gets a zero
//! gradient. Fused regions on the path are first expanded back into their primitives
//! (`expand.rs`): a region means exactly its steps, so their VJPs are its VJP, and the fusion
//! pass forms regions again afterwards.
//! **Why here**: after attention fusion (so `flash_attention` keeps its own backward, which
//! recomputes the probabilities from the saved log-sum-exp) and before mixed precision and
//! fusion, which then treat forward and backward alike.
//! **Refuses** (an error naming the node) a loss that itself depends on a `grad` (no higher
//! derivatives) and ops without a derivative on the path (integer-valued ones have none: their
//! operands get no cotangent, which is right, as they are piecewise constant).

mod expand;
mod vjp;

use crate::Pass;
use kiln_ir::{Graph, IrError, Literal, NodeId, Op, TensorType};
use std::collections::{BTreeMap, HashMap, HashSet};

pub struct Autodiff;

/// The label of each backward sweep's seed `∂loss/∂loss = 1`: the backward is what depends on a
/// seed (`recompute` tells forward from backward by it).
pub const SEED_LABEL: &str = "autodiff.seed";

impl Pass for Autodiff {
    fn name(&self) -> &'static str {
        "autodiff"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let grads: Vec<NodeId> = g
            .order()
            .into_iter()
            .filter(|&id| g.node(id).op == Op::Grad)
            .collect();
        let losses: Vec<NodeId> = grads.iter().map(|&id| g.operands(id)[0]).collect();
        for id in ancestors(g, &losses)? {
            if matches!(g.node(id).op, Op::Fused(_)) {
                expand::expand(g, id)?;
            }
        }
        let mut by_loss: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        for id in grads {
            by_loss.entry(g.operands(id)[0]).or_default().push(id);
        }
        for (loss, grads) in by_loss {
            let targets: Vec<NodeId> = grads.iter().map(|&id| g.operands(id)[1]).collect();
            let adjoints = backward(g, loss, &targets)?;
            for (grad, target) in grads.into_iter().zip(targets) {
                let value = match adjoints.get(&target) {
                    Some(&adjoint) => adjoint,
                    None => zeros(g, g.ty(target).clone())?,
                };
                g.replace_uses(grad, value);
                g.remove(grad);
            }
        }
        Ok(())
    }
}

/// The cotangent of each of `targets` that the loss depends on, after one backward sweep.
fn backward(
    g: &mut Graph,
    loss: NodeId,
    targets: &[NodeId],
) -> Result<HashMap<NodeId, NodeId>, IrError> {
    let active = on_paths(g, loss, targets)?;
    let seed = g.scalar(g.ty(loss).dtype, 1.0)?;
    g.set_label(seed, SEED_LABEL);
    let mut contributions: HashMap<NodeId, Vec<NodeId>> = HashMap::from([(loss, vec![seed])]);
    let mut adjoints = HashMap::new();
    for id in g.order().into_iter().rev() {
        let Some(parts) = contributions.remove(&id) else {
            continue;
        };
        let cotangent = sum(g, parts)?;
        adjoints.insert(id, cotangent);
        let operands = g.operands(id);
        let wanted: Vec<bool> = operands.iter().map(|o| active.contains(o)).collect();
        if !wanted.contains(&true) {
            continue;
        }
        let pulled = vjp::vjp(g, id, cotangent, &wanted).map_err(|e| {
            e.context(format!(
                "differentiating `{}`{}",
                g.node(id).op.name(),
                g.node(id)
                    .label
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            ))
        })?;
        for ((operand, want), part) in operands.into_iter().zip(wanted).zip(pulled) {
            if let (true, Some(part)) = (want, part) {
                contributions.entry(operand).or_default().push(part);
            }
        }
    }
    for (id, parts) in contributions {
        // Sources (inputs, weights) are not in the order: their sums are made here.
        let cotangent = sum(g, parts)?;
        adjoints.insert(id, cotangent);
    }
    Ok(targets
        .iter()
        .filter_map(|t| adjoints.get(t).map(|&a| (*t, a)))
        .collect())
}

/// The nodes the losses depend on, the losses included. Refuses a loss that depends on a
/// `grad`.
fn ancestors(g: &Graph, losses: &[NodeId]) -> Result<HashSet<NodeId>, IrError> {
    let mut ancestors: HashSet<NodeId> = losses.iter().copied().collect();
    let mut stack = losses.to_vec();
    while let Some(id) = stack.pop() {
        if g.node(id).op == Op::Grad {
            return Err(IrError::new(
                "the loss depends on a `grad`: higher derivatives are not supported",
            ));
        }
        for operand in g.operands(id) {
            if ancestors.insert(operand) {
                stack.push(operand);
            }
        }
    }
    Ok(ancestors)
}

/// The float nodes that depend on some target and that the loss depends on (targets and loss
/// included).
fn on_paths(g: &Graph, loss: NodeId, targets: &[NodeId]) -> Result<HashSet<NodeId>, IrError> {
    let ancestors = ancestors(g, &[loss])?;
    let mut active = HashSet::new();
    let mut stack: Vec<NodeId> = targets.to_vec();
    while let Some(id) = stack.pop() {
        if !ancestors.contains(&id) || !g.ty(id).dtype.is_float() || !active.insert(id) {
            continue;
        }
        stack.extend(g.users(id));
    }
    Ok(active)
}

/// The sum of the cotangents reaching one value.
fn sum(g: &mut Graph, parts: Vec<NodeId>) -> Result<NodeId, IrError> {
    let mut parts = parts.into_iter();
    let first = parts
        .next()
        .expect("a value with a cotangent has at least one part");
    parts.try_fold(first, |acc, part| g.add(acc, part))
}

/// A zero tensor of `ty` (a splat: any shape, symbolic or not).
fn zeros(g: &mut Graph, ty: TensorType) -> Result<NodeId, IrError> {
    g.constant(ty, Literal::Splat(0.0))
}
