//! Proving what a boolean attention mask computes.
//!
//! The mask is a tree of `and` / `or` over comparisons whose sides are the *key index* (an
//! `iota` along the key axis), a *query position* (`reshape(positions, [B, 1, S, 1])`, plus or
//! minus an integer constant) or an integer constant, each reaching the `[B, H, S, T]` mask
//! through `broadcast`s. Broadcasts are right-aligned, so a node's axis `a` is the mask's axis
//! `a + 4 − rank`; that is how the key index is known to run along the key axis and the
//! positions along batch and query axes.
//!
//! Every comparison becomes one bound on the key index `j` for the query position `p`:
//! `j ≤ p + o` (upper), `j ≥ p + o` (lower) or `j < n` (prefix). The recognized masks are
//! `j ≤ p` (causal), `j ≤ p ∧ j ≥ p − w + 1` (a window of `w`) and `j ≤ p ∨ j < n` (a prefix of
//! `n`); anything else is refused with a description of what was found.

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
    /// The key index `j`.
    Key,
    /// `positions[b, i] + offset`.
    Query {
        positions: NodeId,
        offset: i64,
    },
    Constant(i64),
}

/// One comparison as a bound on `j`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    /// `j ≤ p + o`.
    Upper { positions: NodeId, offset: i64 },
    /// `j ≥ p + o`.
    Lower { positions: NodeId, offset: i64 },
    /// `j < n`.
    Below(i64),
}

/// The mask kind of `mask` and the positions it reads, or why it is not recognized.
pub fn prove(g: &Graph, mask: NodeId, ext: &Extents) -> Result<(AttentionMask, NodeId), String> {
    let unrecognized = |what: &str| Err(format!("unrecognized mask ({what})"));
    let mask = through_broadcasts(g, mask);
    let both = |a: NodeId, b: NodeId| -> Option<(Bound, Bound)> {
        Some((bound(g, a, ext)?, bound(g, b, ext)?))
    };
    let causal = |b: Bound| match b {
        Bound::Upper {
            positions,
            offset: 0,
        } => Some(positions),
        _ => None,
    };
    match g.node(mask).op {
        Op::Binary(BinaryOp::And) => {
            let ops = g.operands(mask);
            let Some((x, y)) = both(ops[0], ops[1]) else {
                return unrecognized("`and` of comparisons that are not key bounds");
            };
            for (upper, lower) in [(x, y), (y, x)] {
                if let (Some(p), Bound::Lower { positions, offset }) = (causal(upper), lower) {
                    if p == positions && offset <= 0 {
                        return Ok((AttentionMask::Window((1 - offset) as usize), p));
                    }
                }
            }
            unrecognized("`and` that is not a causal sliding window")
        }
        Op::Binary(BinaryOp::Or) => {
            let ops = g.operands(mask);
            let Some((x, y)) = both(ops[0], ops[1]) else {
                return unrecognized("`or` of comparisons that are not key bounds");
            };
            for (upper, prefix) in [(x, y), (y, x)] {
                if let (Some(p), Bound::Below(n)) = (causal(upper), prefix) {
                    if n >= 0 {
                        return Ok((AttentionMask::Prefix(n as usize), p));
                    }
                }
            }
            unrecognized("`or` that is not causal with a prefix")
        }
        _ => match bound(g, mask, ext).and_then(causal) {
            Some(p) => Ok((AttentionMask::Causal, p)),
            None => unrecognized("not a causal comparison of key index and query position"),
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
            on_keys.then_some(Term::Key)
        }
        Op::Const(Literal::Splat(v)) if node.ty.dtype.is_int() => Some(Term::Constant(*v as i64)),
        Op::Reshape => {
            let positions = g.operands(id)[0];
            let p = g.ty(positions);
            let expected = [
                ext.batch.clone(),
                Dim::fixed(1),
                ext.seq.clone(),
                Dim::fixed(1),
            ];
            let fits = p.dtype.is_int()
                && p.shape == [ext.batch.clone(), ext.seq.clone()]
                && node.ty.shape == expected;
            fits.then_some(Term::Query {
                positions,
                offset: 0,
            })
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
                _ => None,
            }
        }
        _ => None,
    }
}

/// A comparison as a bound on the key index.
fn bound(g: &Graph, id: NodeId, ext: &Extents) -> Option<Bound> {
    let id = through_broadcasts(g, id);
    let Op::Binary(op) = g.node(id).op else {
        return None;
    };
    let ops = g.operands(id);
    let (lhs, rhs) = (term(g, ops[0], ext)?, term(g, ops[1], ext)?);
    // With the key on the left: `j op x`; mirrored comparisons are turned around first.
    let (op, other) = match (lhs, rhs) {
        (Term::Key, other) => (op, other),
        (other, Term::Key) => (mirror(op)?, other),
        _ => return None,
    };
    match (op, other) {
        (BinaryOp::Le | BinaryOp::Lt, Term::Query { positions, offset }) => Some(Bound::Upper {
            positions,
            offset: offset - (op == BinaryOp::Lt) as i64,
        }),
        (BinaryOp::Ge | BinaryOp::Gt, Term::Query { positions, offset }) => Some(Bound::Lower {
            positions,
            offset: offset + (op == BinaryOp::Gt) as i64,
        }),
        (BinaryOp::Lt, Term::Constant(n)) => Some(Bound::Below(n)),
        (BinaryOp::Le, Term::Constant(n)) => Some(Bound::Below(n + 1)),
        _ => None,
    }
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
