//! Proving what a boolean attention mask computes.
//!
//! The mask is a tree of `and` / `or` over comparisons whose sides are the *key position* (an
//! `iota` along the key axis, or that minus the rows' padding `reshape(padding, [B, 1, 1, 1])`),
//! a *query position* (`reshape(positions, [B, 1, S, 1])`, plus or minus an integer constant)
//! or an integer constant, each reaching the `[B, H, S, T]` mask through `broadcast`s.
//! Broadcasts are right-aligned, so a node's axis `a` is the mask's axis `a + 4 − rank`; that is
//! how the key index is known to run along the key axis and the positions along batch and query
//! axes.
//!
//! Every comparison becomes one bound on the key position `j` for the query position `p`:
//! `j ≤ p + o` (upper), `j ≥ p + o` (lower), `j < n` (prefix) or `j ≥ n`. The recognized masks
//! are `j ≤ p` (causal), `j ≤ p ∧ j ≥ p − w + 1` (a window of `w`) and `j ≤ p ∨ j < n` (a prefix
//! of `n`) over unpadded keys, and any of them over padded key positions `and`ed with `j ≥ 0`
//! (the filler keys excluded: `padding=left`); anything else is refused with a description of
//! what was found.

use kiln_ir::{AttentionMask, BinaryOp, Dim, Graph, Literal, NodeId, Op};

/// The `[B, S, T]` extents the mask must be built for.
pub struct Extents<'a> {
    pub batch: &'a Dim,
    pub seq: &'a Dim,
    pub keys: &'a Dim,
}

/// One side of a comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Term {
    /// The key position: the key index `j`, less the rows' padding when it is `Some`.
    Key {
        padding: Option<NodeId>,
    },
    /// `positions[b, i] + offset`.
    Query {
        positions: NodeId,
        offset: i64,
    },
    /// The rows' padding, `padding[b]`.
    Padding(NodeId),
    Constant(i64),
}

/// One comparison as a bound on the key position (of keys padded by `padding`, if any).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bound {
    padding: Option<NodeId>,
    kind: BoundKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BoundKind {
    /// `j ≤ p + o`.
    Upper { positions: NodeId, offset: i64 },
    /// `j ≥ p + o`.
    Lower { positions: NodeId, offset: i64 },
    /// `j < n`.
    Below(i64),
    /// `j ≥ n`.
    AtLeast(i64),
}

/// What a mask was proven to compute.
pub struct Proof {
    pub mask: AttentionMask,
    pub positions: NodeId,
    /// The rows' padding the key positions subtract (`padding=left`), if any.
    pub padding: Option<NodeId>,
}

/// What `mask` computes, or why it is not recognized.
pub fn prove(g: &Graph, mask: NodeId, ext: &Extents) -> Result<Proof, String> {
    let mask = through_broadcasts(g, mask);
    if let Op::Binary(BinaryOp::And) = g.node(mask).op {
        let ops = g.operands(mask);
        for (filler, rest) in [(ops[0], ops[1]), (ops[1], ops[0])] {
            let Some(Bound {
                padding: Some(padding),
                kind: BoundKind::AtLeast(0),
            }) = bound(g, filler, ext)
            else {
                continue;
            };
            let proof = prove_unpadded(g, rest, ext)?;
            if proof.padding != Some(padding) {
                return unrecognized("filler keys excluded by another padding than the mask's");
            }
            return Ok(proof);
        }
    }
    let proof = prove_unpadded(g, mask, ext)?;
    if proof.padding.is_some() {
        return unrecognized("padded key positions with the filler keys not excluded");
    }
    Ok(proof)
}

fn unrecognized<T>(what: &str) -> Result<T, String> {
    Err(format!("unrecognized mask ({what})"))
}

/// A causal, sliding-window or prefix mask over key positions (padded or not).
fn prove_unpadded(g: &Graph, mask: NodeId, ext: &Extents) -> Result<Proof, String> {
    let mask = through_broadcasts(g, mask);
    let both = |a: NodeId, b: NodeId| -> Option<(Bound, Bound)> {
        let (x, y) = (bound(g, a, ext)?, bound(g, b, ext)?);
        (x.padding == y.padding).then_some((x, y))
    };
    let causal = |b: Bound| match b.kind {
        BoundKind::Upper {
            positions,
            offset: 0,
        } => Some(positions),
        _ => None,
    };
    let proof = |mask, positions, b: Bound| Proof {
        mask,
        positions,
        padding: b.padding,
    };
    match g.node(mask).op {
        Op::Binary(BinaryOp::And) => {
            let ops = g.operands(mask);
            let Some((x, y)) = both(ops[0], ops[1]) else {
                return unrecognized(
                    "`and` of comparisons that are not bounds of one key position",
                );
            };
            for (upper, lower) in [(x, y), (y, x)] {
                if let (Some(p), BoundKind::Lower { positions, offset }) =
                    (causal(upper), lower.kind)
                {
                    if p == positions && offset <= 0 {
                        return Ok(proof(
                            AttentionMask::Window((1 - offset) as usize),
                            p,
                            upper,
                        ));
                    }
                }
            }
            unrecognized("`and` that is not a causal sliding window")
        }
        Op::Binary(BinaryOp::Or) => {
            let ops = g.operands(mask);
            let Some((x, y)) = both(ops[0], ops[1]) else {
                return unrecognized("`or` of comparisons that are not bounds of one key position");
            };
            for (upper, prefix) in [(x, y), (y, x)] {
                if let (Some(p), BoundKind::Below(n)) = (causal(upper), prefix.kind) {
                    if n >= 0 {
                        return Ok(proof(AttentionMask::Prefix(n as usize), p, upper));
                    }
                }
            }
            unrecognized("`or` that is not causal with a prefix")
        }
        _ => match bound(g, mask, ext) {
            Some(b) => match causal(b) {
                Some(p) => Ok(proof(AttentionMask::Causal, p, b)),
                None => unrecognized("not a causal comparison of key and query positions"),
            },
            None => unrecognized("not a causal comparison of key and query positions"),
        },
    }
}

fn through_broadcasts(g: &Graph, mut id: NodeId) -> NodeId {
    while matches!(g.node(id).op, Op::Broadcast) {
        id = g.operands(id)[0];
    }
    id
}

/// The mask axis that axis `axis` of `id` lands on.
fn mask_axis(g: &Graph, id: NodeId, axis: usize) -> Option<usize> {
    (axis + 4).checked_sub(g.ty(id).rank())
}

fn term(g: &Graph, id: NodeId, ext: &Extents) -> Option<Term> {
    let id = through_broadcasts(g, id);
    let node = g.node(id);
    match &node.op {
        Op::Iota { axis } => {
            let on_keys = mask_axis(g, id, *axis) == Some(3) && node.ty.shape[*axis] == *ext.keys;
            on_keys.then_some(Term::Key { padding: None })
        }
        Op::Const(Literal::Splat(v)) if node.ty.dtype.is_int() => Some(Term::Constant(*v as i64)),
        Op::Reshape => {
            let source = g.operands(id)[0];
            let p = g.ty(source);
            let (batch, one) = (ext.batch.clone(), Dim::fixed(1));
            let positions = [batch.clone(), one.clone(), ext.seq.clone(), one.clone()];
            let padding = [batch.clone(), one.clone(), one.clone(), one];
            if !p.dtype.is_int() {
                None
            } else if p.shape == [batch.clone(), ext.seq.clone()] && node.ty.shape == positions {
                Some(Term::Query {
                    positions: source,
                    offset: 0,
                })
            } else if p.shape == [batch] && node.ty.shape == padding {
                Some(Term::Padding(source))
            } else {
                None
            }
        }
        Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub)) => {
            let ops = g.operands(id);
            let sign = if *op == BinaryOp::Sub { -1 } else { 1 };
            match (term(g, ops[0], ext)?, term(g, ops[1], ext)?) {
                (Term::Query { positions, offset }, Term::Constant(c)) => Some(Term::Query {
                    positions,
                    offset: offset + sign * c,
                }),
                (Term::Constant(c), Term::Query { positions, offset }) if sign == 1 => {
                    Some(Term::Query {
                        positions,
                        offset: offset + c,
                    })
                }
                (Term::Key { padding: None }, Term::Padding(p)) if sign == -1 => {
                    Some(Term::Key { padding: Some(p) })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A comparison as a bound on the key position.
fn bound(g: &Graph, id: NodeId, ext: &Extents) -> Option<Bound> {
    let id = through_broadcasts(g, id);
    let Op::Binary(op) = g.node(id).op else {
        return None;
    };
    let ops = g.operands(id);
    let (lhs, rhs) = (term(g, ops[0], ext)?, term(g, ops[1], ext)?);
    // With the key on the left: `j op x`; mirrored comparisons are turned around first.
    let (op, padding, other) = match (lhs, rhs) {
        (Term::Key { padding }, other) => (op, padding, other),
        (other, Term::Key { padding }) => (mirror(op)?, padding, other),
        _ => return None,
    };
    let kind = match (op, other) {
        (BinaryOp::Le | BinaryOp::Lt, Term::Query { positions, offset }) => BoundKind::Upper {
            positions,
            offset: offset - (op == BinaryOp::Lt) as i64,
        },
        (BinaryOp::Ge | BinaryOp::Gt, Term::Query { positions, offset }) => BoundKind::Lower {
            positions,
            offset: offset + (op == BinaryOp::Gt) as i64,
        },
        (BinaryOp::Lt, Term::Constant(n)) => BoundKind::Below(n),
        (BinaryOp::Le, Term::Constant(n)) => BoundKind::Below(n + 1),
        (BinaryOp::Ge, Term::Constant(n)) => BoundKind::AtLeast(n),
        (BinaryOp::Gt, Term::Constant(n)) => BoundKind::AtLeast(n + 1),
        _ => return None,
    };
    Some(Bound { padding, kind })
}

/// `a op b` ⇔ `b mirror(op) a`.
fn mirror(op: BinaryOp) -> Option<BinaryOp> {
    Some(match op {
        BinaryOp::Le => BinaryOp::Ge,
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::Ge => BinaryOp::Le,
        BinaryOp::Gt => BinaryOp::Lt,
        _ => return None,
    })
}
