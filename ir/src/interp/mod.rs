//! The reference interpreter: the oracle every pass and backend is checked against.
//!
//! It binds the graph's symbols from the shapes of the given inputs and weights (each symbol
//! must be consistent everywhere and within its declared maximum), then evaluates nodes in the
//! canonical order, dropping each value after its last use. Semantics per op live in
//! `kernels.rs`, those of `flash_attention` in `attention.rs`.

mod attention;
mod kernels;
pub mod random;
mod tensor;

pub use kernels::{eval as eval_op, eval_with as eval_op_with};
pub use tensor::{strides, Arithmetic, Data, Tensor};

use crate::dim::Bindings;
use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::{BTreeMap, HashMap};

/// Named tensors: a program's inputs, its weights, or its outputs.
pub type TensorMap = BTreeMap<String, Tensor>;

pub fn interpret(g: &Graph, inputs: &TensorMap, weights: &TensorMap) -> Result<TensorMap, IrError> {
    interpret_with(g, inputs, weights, Arithmetic::Native)
}

/// [`interpret`] under the given arithmetic (`Exact` keeps every float in f64).
pub fn interpret_with(
    g: &Graph,
    inputs: &TensorMap,
    weights: &TensorMap,
    arithmetic: Arithmetic,
) -> Result<TensorMap, IrError> {
    let env = bind_symbols(g, inputs, weights)?;
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    for &id in g.inputs().iter().chain(g.weights()) {
        let (name, map) = match &g.node(id).op {
            Op::Input { name } => (name, inputs),
            Op::Weight { name } => (name, weights),
            _ => unreachable!("signature holds only inputs and weights"),
        };
        values.insert(id, map[name].clone());
    }
    let order = g.order();
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        for operand in g.operands(id) {
            *uses.entry(operand).or_insert(0) += 1;
        }
    }
    for (_, id) in g.outputs() {
        *uses.entry(*id).or_insert(0) += 1;
    }
    for id in order {
        let node = g.node(id);
        let operands = g.operands(id);
        let shape = node
            .ty
            .shape
            .iter()
            .map(|d| d.eval(&env))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                IrError::new(format!(
                    "{}: shape {} does not evaluate",
                    node.op.name(),
                    node.ty
                ))
            })?;
        let args: Vec<&Tensor> = operands.iter().map(|o| &values[o]).collect();
        let result = kernels::eval_with(&node.op, &args, node.ty.dtype, shape, &env, arithmetic);
        let result = result.map_err(|e| {
            let label = node
                .label
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            IrError::new(format!("{}{label}: {e}", node.op.name()))
        })?;
        for operand in operands {
            let left = uses.get_mut(&operand).expect("operand use counted");
            *left -= 1;
            if *left == 0 {
                values.remove(&operand);
            }
        }
        values.insert(id, result);
    }
    Ok(g.outputs()
        .iter()
        .map(|(name, id)| (name.clone(), values[id].clone()))
        .collect())
}

/// Solves the graph's symbols from the shapes of the bound tensors.
pub fn bind_symbols(
    g: &Graph,
    inputs: &TensorMap,
    weights: &TensorMap,
) -> Result<Bindings, IrError> {
    let mut env = Bindings::new();
    let mut checks = Vec::new();
    for &id in g.inputs().iter().chain(g.weights()) {
        let node = g.node(id);
        let (kind, name, map) = match &node.op {
            Op::Input { name } => ("input", name, inputs),
            Op::Weight { name } => ("weight", name, weights),
            _ => unreachable!("signature holds only inputs and weights"),
        };
        let t = map
            .get(name)
            .ok_or_else(|| IrError::new(format!("{kind} `{name}` is not given")))?;
        let at = || format!("{kind} `{name}`");
        if t.dtype != node.ty.dtype || t.shape.len() != node.ty.rank() {
            return Err(IrError::new(format!(
                "expected {}, got {}{:?}",
                node.ty, t.dtype, t.shape
            ))
            .context(at()));
        }
        for (d, &n) in node.ty.shape.iter().zip(&t.shape) {
            match d.as_symbol() {
                Some(s) => match env.insert(s.to_string(), n) {
                    Some(prev) if prev != n => {
                        return Err(IrError::new(format!(
                            "symbol `{s}` is {prev} elsewhere but {n} here"
                        ))
                        .context(at()))
                    }
                    _ => {}
                },
                None => checks.push((at(), d.clone(), n)),
            }
        }
    }
    for (at, d, n) in checks {
        if d.eval(&env) != Some(n) {
            return Err(IrError::new(format!("dimension {d} does not match size {n}")).context(at));
        }
    }
    for (s, &v) in &env {
        let max = g.symbols()[s];
        if v > max {
            return Err(IrError::new(format!(
                "symbol `{s}` = {v} exceeds its maximum {max}"
            )));
        }
    }
    Ok(env)
}
