//! The verifier: every invariant of a valid graph, checked after every pass.
//!
//! A graph is valid when
//! 1. every node's operand slots are exactly `0..n`, with `n` the op's arity (any `n ≥ 1` for
//!    `concat` and fused regions), and every operand exists;
//! 2. every node's stored type is the type [`crate::infer::infer`] derives for its op and operands
//!    (dense constants have a fixed shape and one value per element);
//! 3. every symbol named in a type is declared on the graph, with a maximum of at least 1;
//! 4. the graph has no cycle;
//! 5. the inputs and weights lists hold exactly the `input` and `weight` nodes, with unique names;
//!    output names are unique and name existing nodes;
//! 6. every shape's dimensions are non-negative at the symbols' maxima (no negative slice).

use crate::error::IrError;
use crate::graph::Graph;
use crate::infer::infer;
use crate::op::Op;
use std::collections::HashSet;

pub fn verify(g: &Graph) -> Result<(), IrError> {
    for (name, &max) in g.symbols() {
        if max == 0 {
            return Err(IrError::new(format!("symbol `{name}` has maximum 0")));
        }
    }
    let mut input_names = HashSet::new();
    let mut weight_names = HashSet::new();
    for id in g.node_ids() {
        let node = g.node(id);
        let at = || format!("node {} ({})", id.index(), node.op.name());
        let slots = g.operand_slots(id);
        if slots.iter().enumerate().any(|(i, &s)| s as usize != i) {
            return Err(IrError::new(format!(
                "operand slots {slots:?} are not 0..{}",
                slots.len()
            ))
            .context(at()));
        }
        if node.op.arity().is_none() && slots.is_empty() {
            return Err(IrError::new("no operands").context(at()));
        }
        let operands = g.operands(id);
        let types: Vec<_> = operands.iter().map(|&o| g.ty(o)).collect();
        let inferred =
            infer(&node.op, &types, Some(&node.ty)).map_err(|e| IrError::new(e).context(at()))?;
        if inferred != node.ty {
            return Err(IrError::new(format!(
                "stored type {} but the op gives {inferred}",
                node.ty
            ))
            .context(at()));
        }
        for d in &node.ty.shape {
            for s in d.symbols() {
                if !g.symbols().contains_key(s) {
                    return Err(IrError::new(format!("undeclared symbol `{s}`")).context(at()));
                }
            }
            if d.max_value(g.symbols()).is_none() {
                return Err(IrError::new(format!("dimension {d} can be negative")).context(at()));
            }
        }
        match &node.op {
            Op::Input { name }
                if !g.inputs().contains(&id) || !input_names.insert(name.clone()) =>
            {
                return Err(IrError::new(format!("input `{name}` is not declared once")));
            }
            Op::Weight { name }
                if !g.weights().contains(&id) || !weight_names.insert(name.clone()) =>
            {
                return Err(IrError::new(format!(
                    "weight `{name}` is not declared once"
                )));
            }
            _ => {}
        }
    }
    for &id in g.inputs().iter().chain(g.weights()) {
        if !g.contains(id) || !matches!(g.node(id).op, Op::Input { .. } | Op::Weight { .. }) {
            return Err(IrError::new(format!(
                "signature entry {} is not an input or weight",
                id.index()
            )));
        }
    }
    let mut output_names = HashSet::new();
    for (name, id) in g.outputs() {
        if !output_names.insert(name) {
            return Err(IrError::new(format!("output `{name}` declared twice")));
        }
        if !g.contains(*id) {
            return Err(IrError::new(format!(
                "output `{name}` names a removed node"
            )));
        }
    }
    if petgraph::algo::is_cyclic_directed(g.petgraph()) {
        return Err(IrError::new("the graph has a cycle"));
    }
    Ok(())
}
