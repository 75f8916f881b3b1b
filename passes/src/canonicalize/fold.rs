//! Constant folding: an op whose operands are all constants becomes a constant.
//!
//! Splat operands through shape-agnostic ops (elementwise, layout) fold to a splat of the result
//! type, whatever its (possibly symbolic) shape. Otherwise the op folds only when every shape is
//! fixed and the result has at most `DENSE_LIMIT` elements, so folding never bloats the graph.

use kiln_ir::interp::{eval_op, Tensor};
use kiln_ir::{Bindings, Graph, IrError, Literal, Op};

const DENSE_LIMIT: usize = 4096;

pub fn run(g: &mut Graph) -> Result<usize, IrError> {
    let mut folded = 0;
    for id in g.order() {
        let node = g.node(id);
        if node.op.is_source() {
            continue;
        }
        let operands = g.operands(id);
        let literals: Option<Vec<Literal>> = operands.iter().map(|&o| as_literal(g, o)).collect();
        let Some(literals) = literals else { continue };
        let literals: Vec<&Literal> = literals.iter().collect();
        let all_splat = literals.iter().all(|l| matches!(l, Literal::Splat(_)));
        let value = if all_splat && preserves_splat(&node.op) {
            let scalars: Vec<Tensor> = operands
                .iter()
                .zip(&literals)
                .map(|(&o, lit)| splat_scalar(g.ty(o).dtype, lit))
                .collect();
            let result = match &node.op {
                Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast => {
                    let args: Vec<&Tensor> = scalars.iter().collect();
                    eval_op(&node.op, &args, node.ty.dtype, Vec::new(), &Bindings::new())
                        .map_err(IrError::new)?
                }
                _ => scalars[0].clone(),
            };
            Literal::Splat(result.to_f64()[0])
        } else {
            match dense_fold(g, id, &operands, &literals)? {
                Some(lit) => lit,
                None => continue,
            }
        };
        let ty = node.ty.clone();
        let label = node.label.clone();
        let c = g.constant(ty, value)?;
        if let Some(label) = label {
            g.set_label(c, label);
        }
        g.replace_uses(id, c);
        folded += 1;
    }
    Ok(folded)
}

/// The value of a constant, or of an `iota` of fixed shape (materialized when small).
fn as_literal(g: &Graph, id: kiln_ir::NodeId) -> Option<Literal> {
    let node = g.node(id);
    match &node.op {
        Op::Const(lit) => Some(lit.clone()),
        Op::Iota { .. } => {
            let shape = node.ty.fixed_shape()?;
            if shape.iter().product::<usize>() > DENSE_LIMIT {
                return None;
            }
            let t = eval_op(&node.op, &[], node.ty.dtype, shape, &Bindings::new()).ok()?;
            Some(Literal::Dense(t.to_f64()))
        }
        _ => None,
    }
}

/// Ops that map splat operands to a splat result.
fn preserves_splat(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Select
            | Op::Cast
            | Op::Reshape
            | Op::Broadcast
            | Op::Permute { .. }
            | Op::Slice { .. }
    )
}

fn splat_scalar(dtype: kiln_ir::DType, lit: &Literal) -> Tensor {
    let Literal::Splat(v) = lit else {
        unreachable!("checked all splat")
    };
    Tensor::from_f64(dtype, &[], [*v])
}

fn dense_fold(
    g: &Graph,
    id: kiln_ir::NodeId,
    operands: &[kiln_ir::NodeId],
    literals: &[&Literal],
) -> Result<Option<Literal>, IrError> {
    let node = g.node(id);
    let Some(shape) = node.ty.fixed_shape() else {
        return Ok(None);
    };
    if shape.iter().product::<usize>() > DENSE_LIMIT {
        return Ok(None);
    }
    let mut args = Vec::new();
    for (&o, lit) in operands.iter().zip(literals) {
        let ty = g.ty(o);
        let Some(s) = ty.fixed_shape() else {
            return Ok(None);
        };
        let n: usize = s.iter().product();
        let values: Vec<f64> = match lit {
            Literal::Splat(v) => vec![*v; n],
            Literal::Dense(vs) => vs.clone(),
        };
        args.push(Tensor::from_f64(ty.dtype, &s, values));
    }
    let refs: Vec<&Tensor> = args.iter().collect();
    let result =
        eval_op(&node.op, &refs, node.ty.dtype, shape, &Bindings::new()).map_err(IrError::new)?;
    let values = result.to_f64();
    Ok(Some(match values.first() {
        Some(&first) if values.iter().all(|v| v.to_bits() == first.to_bits()) => {
            Literal::Splat(first)
        }
        _ => Literal::Dense(values),
    }))
}
