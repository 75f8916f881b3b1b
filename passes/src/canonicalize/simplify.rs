//! Algebraic simplification as a table of rules, each a name and a matcher.
//!
//! Assumes the interpreter's semantics: `x + 0`, `x · 1` and friends are exact identities for
//! every value the interpreter compares (the sign of a zero result may change, which no
//! comparison of values can see). A rule applies only when the replacement has exactly the
//! node's type, so no rule changes a program's signature or a shape.

use kiln_ir::{BinaryOp, Graph, IrError, Literal, NodeId, Op, TensorType, UnaryOp};
use std::collections::BTreeMap;

/// What a rule turns a node into.
enum Rewrite {
    /// Use an existing value instead.
    Use(NodeId),
    /// Build a new node of the same type.
    Build(Op, Vec<NodeId>),
}

type Rule = fn(&Graph, NodeId) -> Option<Rewrite>;

const RULES: &[(&str, Rule)] = &[
    ("x+0=x", add_zero),
    ("x*1=x", mul_one),
    ("identity cast", identity_cast),
    ("identity layout", identity_layout),
    ("reshape∘reshape", reshape_reshape),
    ("broadcast∘broadcast", broadcast_broadcast),
    ("permute∘permute", permute_permute),
    ("-(-x)=x", neg_neg),
];

pub fn run(g: &mut Graph) -> Result<BTreeMap<&'static str, usize>, IrError> {
    let mut counts = BTreeMap::new();
    for id in g.order() {
        for (name, rule) in RULES {
            let Some(rewrite) = rule(g, id) else { continue };
            let replacement = match rewrite {
                Rewrite::Use(other) => other,
                Rewrite::Build(op, operands) => {
                    let ty = g.ty(id).clone();
                    g.push_typed(op, &operands, ty)?
                }
            };
            g.replace_uses(id, replacement);
            *counts.entry(*name).or_insert(0) += 1;
            break;
        }
    }
    Ok(counts)
}

fn splat_value(g: &Graph, id: NodeId) -> Option<f64> {
    match &g.node(id).op {
        Op::Const(Literal::Splat(v)) => Some(*v),
        _ => None,
    }
}

fn same_type(g: &Graph, a: NodeId, b: NodeId) -> bool {
    g.ty(a) == g.ty(b)
}

/// The operand `x` of a binary `x ⊙ c` or `c ⊙ x` (commutative ops only for the latter) whose
/// other side is the splat `unit`.
fn binary_with_unit(
    g: &Graph,
    id: NodeId,
    ops: &[BinaryOp],
    commutative: &[BinaryOp],
    unit: f64,
) -> Option<Rewrite> {
    let Op::Binary(op) = g.node(id).op else {
        return None;
    };
    if !ops.contains(&op) {
        return None;
    }
    let [a, b] = g.operands(id)[..] else {
        return None;
    };
    if splat_value(g, b) == Some(unit) && same_type(g, a, id) {
        return Some(Rewrite::Use(a));
    }
    if commutative.contains(&op) && splat_value(g, a) == Some(unit) && same_type(g, b, id) {
        return Some(Rewrite::Use(b));
    }
    None
}

fn add_zero(g: &Graph, id: NodeId) -> Option<Rewrite> {
    binary_with_unit(
        g,
        id,
        &[BinaryOp::Add, BinaryOp::Sub],
        &[BinaryOp::Add],
        0.0,
    )
}

fn mul_one(g: &Graph, id: NodeId) -> Option<Rewrite> {
    binary_with_unit(
        g,
        id,
        &[BinaryOp::Mul, BinaryOp::Div],
        &[BinaryOp::Mul],
        1.0,
    )
}

fn single_operand(g: &Graph, id: NodeId) -> Option<NodeId> {
    match g.operands(id)[..] {
        [x] => Some(x),
        _ => None,
    }
}

fn identity_cast(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let x = single_operand(g, id)?;
    (matches!(g.node(id).op, Op::Cast) && same_type(g, x, id)).then_some(Rewrite::Use(x))
}

fn identity_layout(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let x = single_operand(g, id)?;
    let identity = match &g.node(id).op {
        Op::Reshape | Op::Broadcast => true,
        Op::Permute { perm } => perm.iter().enumerate().all(|(i, &p)| i == p),
        Op::Slice { .. } => true,
        _ => false,
    };
    (identity && same_type(g, x, id)).then_some(Rewrite::Use(x))
}

/// The operand of `id`'s single operand when that operand is itself an op matching `inner`.
fn inner_operand(g: &Graph, id: NodeId, inner: fn(&Op) -> bool) -> Option<(NodeId, NodeId)> {
    let x = single_operand(g, id)?;
    if !inner(&g.node(x).op) {
        return None;
    }
    Some((x, single_operand(g, x)?))
}

fn reshape_reshape(g: &Graph, id: NodeId) -> Option<Rewrite> {
    if !matches!(g.node(id).op, Op::Reshape) {
        return None;
    }
    let (_, y) = inner_operand(g, id, |op| matches!(op, Op::Reshape))?;
    Some(Rewrite::Build(Op::Reshape, vec![y]))
}

fn broadcast_broadcast(g: &Graph, id: NodeId) -> Option<Rewrite> {
    if !matches!(g.node(id).op, Op::Broadcast) {
        return None;
    }
    let (_, y) = inner_operand(g, id, |op| matches!(op, Op::Broadcast))?;
    // Right-aligned broadcasts compose when every axis of y maps to the outer result directly.
    let out: &TensorType = g.ty(id);
    let inner = g.ty(y);
    let offset = out.rank() - inner.rank();
    let ok = inner
        .shape
        .iter()
        .enumerate()
        .all(|(i, d)| d.is_one() || *d == out.shape[offset + i]);
    ok.then(|| Rewrite::Build(Op::Broadcast, vec![y]))
}

fn permute_permute(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let Op::Permute { perm: outer } = &g.node(id).op else {
        return None;
    };
    let (x, y) = inner_operand(g, id, |op| matches!(op, Op::Permute { .. }))?;
    let Op::Permute { perm: inner } = &g.node(x).op else {
        return None;
    };
    let perm = outer.iter().map(|&p| inner[p]).collect();
    Some(Rewrite::Build(Op::Permute { perm }, vec![y]))
}

fn neg_neg(g: &Graph, id: NodeId) -> Option<Rewrite> {
    if g.node(id).op != Op::Unary(UnaryOp::Neg) {
        return None;
    }
    let (_, y) = inner_operand(g, id, |op| *op == Op::Unary(UnaryOp::Neg))?;
    Some(Rewrite::Use(y))
}
