//! Matmul epilogues: after regions are formed, an elementwise root (a region or a single op)
//! that is the only reader of a matmul's result takes the matmul in: `f(a·b, c…)` becomes
//! `fused_matmul a, b, c… { … }` with the product as value `$0`. The backend then applies `f`
//! to each output tile as it is computed. Only matmuls into f32 of two f32 or two bf16 operands
//! are taken (the product `$0` of bf16 operands is the f32 sum, as the plain matmul's; the
//! root may round its result back to bf16), never a program output, and one matmul per root:
//! of several single-use matmuls a root reads, the last operand's.

use super::is_elementwise;
use kiln_ir::{DType, Graph, IrError, NodeId, Op, Region, RegionKind, Step, StepOp};
use std::collections::HashSet;

/// The region a root computes, as (leaves, steps), whether it is one op or a region.
fn as_region(g: &Graph, root: NodeId) -> Option<(Vec<NodeId>, Vec<Step>)> {
    let node = g.node(root);
    let operands = g.operands(root);
    match &node.op {
        Op::Fused(Region {
            kind: RegionKind::Map,
            steps,
        }) => Some((operands, steps.clone())),
        op if is_elementwise(op) => {
            let step = Step {
                op: StepOp::of(op, node.ty.dtype)?,
                args: (0..operands.len()).collect(),
            };
            Some((operands, vec![step]))
        }
        _ => None,
    }
}

/// A matmul `root` may take in: f32 out, of two f32 or two bf16 operands, read by `root` alone.
fn takes_in(g: &Graph, outputs: &HashSet<NodeId>, root: NodeId, m: NodeId) -> bool {
    let dtype = |id: NodeId| g.ty(id).dtype;
    let operands: Vec<DType> = g.operands(m).into_iter().map(dtype).collect();
    matches!(g.node(m).op, Op::MatMul)
        && !outputs.contains(&m)
        && g.users(m) == [root]
        && dtype(m) == DType::F32
        && (operands.iter().all(|&d| d == DType::F32) || operands.iter().all(|&d| d == DType::BF16))
}

/// Folds every matmul an elementwise root alone reads into it; returns how many.
pub fn run(g: &mut Graph) -> Result<usize, IrError> {
    let outputs: HashSet<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    let mut folded = 0;
    for root in g.order() {
        let Some((leaves, steps)) = as_region(g, root) else {
            continue;
        };
        let Some(&m) = leaves
            .iter()
            .rev()
            .find(|&&l| takes_in(g, &outputs, root, l))
        else {
            continue;
        };
        // Values: the product is $0, the other leaves follow in order; steps keep their numbers.
        let others: Vec<NodeId> = leaves.iter().copied().filter(|&l| l != m).collect();
        let number = |v: usize| -> usize {
            match leaves.get(v) {
                Some(&l) if l == m => 0,
                Some(&l) => 1 + others.iter().position(|&o| o == l).expect("another leaf"),
                None => v - leaves.len() + 1 + others.len(),
            }
        };
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|s| Step {
                op: s.op,
                args: s.args.into_iter().map(number).collect(),
            })
            .collect();
        let mut operands = g.operands(m);
        operands.extend(&others);
        let region = Region {
            kind: RegionKind::MatMul,
            steps,
        };
        super::absorb(g, (root, m), Op::Fused(region), &operands)?;
        folded += 1;
    }
    Ok(folded)
}
