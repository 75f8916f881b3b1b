//! `attention-fusion`: scaled, masked softmax attention becomes one `flash_attention` op.
//!
//! Matches: a softmax over the last axis of rank-4 scores, `div(e, broadcast(reduce_sum(e)))`
//! with `e = exp(sub(x, broadcast(reduce_max(x))))`, where
//! - `x` is `select(mask, scaled, -inf)` (the mask proven by `mask.rs` to be causal, a sliding
//!   window or causal with a prefix, over the program's position ids, the key positions possibly
//!   shifted by the rows' left padding with the filler keys excluded) or `scaled` alone;
//! - `scaled` is `mul(scores, c)` for a splat constant `c` (in either order) or `scores` alone;
//! - `scores` is `q · kᵀ` in one of two forms: `matmul(q, permute(K, [0,1,3,2]))` with `K` the
//!   keys or their KV-head repeat (`reshape(broadcast(reshape(k)))`, the builders' `repeat_kv`),
//!   or the form `gqa-share` leaves, `reshape(matmul(reshape(q, [b,kv,g,S,d]),
//!   permute(k5, [0,1,2,4,3])))` with `k5: [b, kv, 1, T, d]`;
//! - the probabilities' only use is `matmul(probs, V)` (values or their repeat) or the grouped
//!   `reshape(matmul(reshape(probs, [b,kv,g,S,T]), v5))`.
//!
//! Produces: `flash_attention q, k, v, positions[, padding]` carrying the mask kind, padding
//! (none or left), bias kind (none), GQA group, softmax scale and tile sizes, in place of the final matmul (or its reshape); the
//! scores, mask, softmax and their `[B, H, S, T]` intermediates become dead and are removed.
//!
//! Why: the unfused form materializes `S×T` scores, probabilities and mask per head, quadratic
//! in the prompt length; the fused op lets a backend run tiled online softmax in `O(S)` memory
//! and skip keys the mask hides.
//!
//! Refuses (leaves the primitives, with a remark naming the probabilities' label and the
//! reason): an intermediate (scores, probabilities, …) with another use, a mask it cannot
//! prove (`mask.rs`), a fill value other than `-inf`, scores that are not `q · kᵀ`, keys and
//! values grouped differently, and operands the op's typing rule rejects.

mod mask;

use crate::canonicalize::remove_dead;
use crate::gqa_share::match_repeat;
use crate::pipeline::Pass;
use kiln_ir::{
    Attention, AttentionBias, AttentionMask, AttentionPadding, BinaryOp, Graph, IrError, Literal,
    NodeId, Op, ReduceOp, TensorType, UnaryOp,
};
use std::collections::BTreeMap;

pub struct AttentionFusion;

/// Queries per tile when the query count is symbolic (also the most for a fixed count).
const TILE_Q: usize = 16;
/// Keys per tile.
const TILE_K: usize = 64;

/// Keys or values as matched: a `[b, kv, T, d]` value, or a rank-5 `[b, kv, 1, T, d]` one that
/// the rewrite squeezes.
#[derive(Clone, Copy)]
enum Heads {
    Plain(NodeId),
    Grouped(NodeId),
}

/// One attention ready to be rewritten.
struct Fusion {
    q: NodeId,
    k: Heads,
    v: Heads,
    positions: Option<NodeId>,
    padding: Option<NodeId>,
    attention: Attention,
    /// The node the fused op replaces.
    result: NodeId,
}

/// The values that must disappear with the fusion, i.e. have no use outside it.
type Interior = Vec<NodeId>;

fn op(g: &Graph, id: NodeId) -> &Op {
    &g.node(id).op
}

fn operand(g: &Graph, id: NodeId, slot: usize) -> NodeId {
    g.operands(id)[slot]
}

fn through_broadcast(g: &Graph, id: NodeId) -> NodeId {
    match op(g, id) {
        Op::Broadcast => operand(g, id, 0),
        _ => id,
    }
}

/// The splat value of a constant, through broadcasts.
fn splat(g: &Graph, mut id: NodeId) -> Option<f64> {
    while matches!(op(g, id), Op::Broadcast) {
        id = operand(g, id, 0);
    }
    match op(g, id) {
        Op::Const(Literal::Splat(v)) => Some(*v),
        _ => None,
    }
}

/// `reduce(x, [last])` (possibly broadcast back), returning `x`.
fn reduced(g: &Graph, id: NodeId, want: ReduceOp, interior: &mut Interior) -> Option<NodeId> {
    let r = through_broadcast(g, id);
    let last = g.ty(r).rank().checked_sub(1)?;
    match op(g, r) {
        Op::Reduce { op, axes } if *op == want && axes == &[last] => {
            interior.extend([id, r]);
            Some(operand(g, r, 0))
        }
        _ => None,
    }
}

/// The softmax's input `x` when `probs` is a softmax over the last axis of a rank-4 value.
fn softmax(g: &Graph, probs: NodeId, interior: &mut Interior) -> Option<NodeId> {
    if *op(g, probs) != Op::Binary(BinaryOp::Div) || g.ty(probs).rank() != 4 {
        return None;
    }
    let [e, sum] = [operand(g, probs, 0), operand(g, probs, 1)];
    if *op(g, e) != Op::Unary(UnaryOp::Exp) || reduced(g, sum, ReduceOp::Sum, interior)? != e {
        return None;
    }
    let shifted = operand(g, e, 0);
    if *op(g, shifted) != Op::Binary(BinaryOp::Sub) {
        return None;
    }
    let x = operand(g, shifted, 0);
    if reduced(g, operand(g, shifted, 1), ReduceOp::Max, interior)? != x {
        return None;
    }
    interior.extend([probs, e, shifted]);
    Some(x)
}

/// `reshape(x)` from a rank-4 `x`: the `x`.
fn reshaped_from_rank4(g: &Graph, id: NodeId) -> Option<NodeId> {
    if !matches!(op(g, id), Op::Reshape) {
        return None;
    }
    let x = operand(g, id, 0);
    (g.ty(x).rank() == 4).then_some(x)
}

/// Whether `five` is `four` with its head axis split in two, `[b, h, x, y] → [b, kv, g, x, y]`
/// (a reshape between them then only regroups heads).
fn splits_heads(g: &Graph, four: NodeId, five: NodeId) -> bool {
    let (a, b) = (&g.ty(four).shape, &g.ty(five).shape);
    let heads = match (
        b.get(1).and_then(|d| d.as_fixed()),
        b.get(2).and_then(|d| d.as_fixed()),
    ) {
        (Some(kv), Some(group)) => kv * group,
        _ => return false,
    };
    a.len() == 4
        && b.len() == 5
        && a[1].as_fixed() == Some(heads)
        && a[0] == b[0]
        && a[2..] == b[3..]
}

/// Keys or values read directly (group 1) or through their KV-head repeat.
fn heads(g: &Graph, x: NodeId) -> (Heads, usize) {
    match match_repeat(g, x) {
        Some(rep) => (
            Heads::Grouped(rep.grouped),
            rep.group.as_fixed().unwrap_or(1),
        ),
        None => (Heads::Plain(x), 1),
    }
}

/// `q · kᵀ`: queries, keys and group.
fn scores(g: &Graph, s: NodeId, interior: &mut Interior) -> Result<(NodeId, Heads, usize), String> {
    let not_scores = || "the scores are not queries × keysᵀ".to_string();
    match op(g, s) {
        Op::MatMul => {
            let (q, kt) = (operand(g, s, 0), operand(g, s, 1));
            match op(g, kt) {
                Op::Permute { perm } if perm == &[0, 1, 3, 2] => {}
                _ => return Err(not_scores()),
            }
            interior.push(s);
            let (k, group) = heads(g, operand(g, kt, 0));
            Ok((q, k, group))
        }
        Op::Reshape => {
            let mm = operand(g, s, 0);
            let grouped = *op(g, mm) == Op::MatMul && splits_heads(g, s, mm);
            if !grouped {
                return Err(not_scores());
            }
            let (q5, kt5) = (operand(g, mm, 0), operand(g, mm, 1));
            let q = reshaped_from_rank4(g, q5).filter(|&q| splits_heads(g, q, q5));
            let q = q.ok_or_else(not_scores)?;
            match op(g, kt5) {
                Op::Permute { perm } if perm == &[0, 1, 2, 4, 3] => {}
                _ => return Err(not_scores()),
            }
            let k5 = operand(g, kt5, 0);
            if g.ty(k5).rank() != 5 || !g.ty(k5).shape[2].is_one() {
                return Err(not_scores());
            }
            let group = g.ty(q5).shape[2].as_fixed().ok_or_else(not_scores)?;
            interior.extend([s, mm]);
            Ok((q, Heads::Grouped(k5), group))
        }
        _ => Err(not_scores()),
    }
}

/// `probs · v`: values, group and the node the fused op replaces.
fn values(
    g: &Graph,
    probs: NodeId,
    interior: &mut Interior,
) -> Result<(Heads, usize, NodeId), String> {
    let other_use = || "the probabilities have another use".to_string();
    let only_user = |id: NodeId| match g.users(id).as_slice() {
        [u] => Some(*u),
        _ => None,
    };
    let user = only_user(probs).ok_or_else(other_use)?;
    let is_matmul_of = |mm: NodeId, a: NodeId| {
        *op(g, mm) == Op::MatMul && operand(g, mm, 0) == a && operand(g, mm, 1) != a
    };
    if is_matmul_of(user, probs) {
        let (v, group) = heads(g, operand(g, user, 1));
        return Ok((v, group, user));
    }
    if !matches!(op(g, user), Op::Reshape) || !splits_heads(g, probs, user) {
        return Err(other_use());
    }
    let mm = only_user(user).filter(|&mm| is_matmul_of(mm, user));
    let mm = mm.ok_or_else(other_use)?;
    let result =
        only_user(mm).filter(|&r| matches!(op(g, r), Op::Reshape) && splits_heads(g, r, mm));
    let result = result.ok_or_else(other_use)?;
    let v5 = operand(g, mm, 1);
    if g.ty(v5).rank() != 5 || !g.ty(v5).shape[2].is_one() {
        return Err("the values are not read per KV head".into());
    }
    let group = g.ty(user).shape[2].as_fixed().ok_or_else(other_use)?;
    interior.extend([user, mm]);
    Ok((Heads::Grouped(v5), group, result))
}

/// Matches the attention whose probabilities are `probs`: `None` when `probs` is no softmax,
/// the reason when the softmax is not a fusable attention.
fn match_attention(g: &Graph, probs: NodeId) -> Option<Result<Fusion, String>> {
    let mut interior = Interior::new();
    let x = softmax(g, probs, &mut interior)?;
    Some(match_from_softmax(g, probs, x, interior))
}

fn match_from_softmax(
    g: &Graph,
    probs: NodeId,
    x: NodeId,
    mut interior: Interior,
) -> Result<Fusion, String> {
    let (mask, scaled) = match op(g, x) {
        Op::Select => {
            let [m, a, fill] = [0, 1, 2].map(|i| operand(g, x, i));
            if splat(g, fill) != Some(f64::NEG_INFINITY) {
                return Err("masked scores are not filled with -inf".into());
            }
            interior.push(x);
            (Some(m), a)
        }
        _ => (None, x),
    };
    let (scale, s) = match op(g, scaled) {
        Op::Binary(BinaryOp::Mul) => {
            let [a, b] = [0, 1].map(|i| operand(g, scaled, i));
            match (splat(g, a), splat(g, b)) {
                (_, Some(c)) => (c, a),
                (Some(c), _) => (c, b),
                _ => return Err("the scores are scaled by a tensor, not a constant".into()),
            }
        }
        _ => (1.0, scaled),
    };
    if scaled != s {
        interior.push(scaled);
    }
    let (q, k, key_group) = scores(g, s, &mut interior)?;
    let (v, value_group, result) = values(g, probs, &mut interior)?;
    if key_group != value_group {
        return Err(format!(
            "keys are shared by groups of {key_group} heads but values by {value_group}"
        ));
    }
    for &id in &interior {
        let outside = g
            .users(id)
            .into_iter()
            .any(|u| u != result && !interior.contains(&u));
        if outside || g.outputs().iter().any(|(_, o)| *o == id) {
            return Err(format!(
                "an intermediate `{}` of the attention has another use",
                op(g, id).name()
            ));
        }
    }
    let q_shape = &g.ty(q).shape;
    let keys = match k {
        Heads::Plain(k) => &g.ty(k).shape[2],
        Heads::Grouped(k5) => &g.ty(k5).shape[3],
    };
    let (mask, positions, padding) = match mask {
        Some(m) => {
            let ext = mask::Extents {
                batch: &q_shape[0],
                seq: &q_shape[2],
                keys,
            };
            let proof = mask::prove(g, m, &ext)?;
            (proof.mask, Some(proof.positions), proof.padding)
        }
        None => (AttentionMask::None, None, None),
    };
    let tile_q = match q_shape[2].as_fixed() {
        Some(n) => n.clamp(1, TILE_Q),
        None => TILE_Q,
    };
    let attention = Attention {
        mask,
        padding: match padding {
            Some(_) => AttentionPadding::Left,
            None => AttentionPadding::None,
        },
        bias: AttentionBias::None,
        group: key_group,
        scale,
        tile_q,
        tile_k: TILE_K,
    };
    let mut types = vec![g.ty(q).clone(), plain_type(g, k), plain_type(g, v)];
    types.extend(positions.iter().chain(&padding).map(|&p| g.ty(p).clone()));
    let ty = attention.infer(&types.iter().collect::<Vec<_>>())?;
    if ty != *g.ty(result) {
        return Err(format!(
            "the fused result would be {ty}, not {}",
            g.ty(result)
        ));
    }
    Ok(Fusion {
        q,
        k,
        v,
        positions,
        padding,
        attention,
        result,
    })
}

/// The `[b, kv, T, d]` shape of the fused op's keys or values.
fn plain_type(g: &Graph, heads: Heads) -> TensorType {
    match heads {
        Heads::Plain(x) => g.ty(x).clone(),
        Heads::Grouped(x5) => {
            let t = g.ty(x5);
            let s = &t.shape;
            let shape = vec![s[0].clone(), s[1].clone(), s[3].clone(), s[4].clone()];
            TensorType::new(t.dtype, shape)
        }
    }
}

/// A `[b, kv, T, d]` value for matched heads: a grouped `[b, kv, 1, T, d]` value is squeezed,
/// reusing the rank-4 value it was reshaped from when there is one.
fn plain(g: &mut Graph, heads: Heads) -> Result<NodeId, IrError> {
    let x5 = match heads {
        Heads::Plain(x) => return Ok(x),
        Heads::Grouped(x5) => x5,
    };
    let want = plain_type(g, heads).shape;
    match reshaped_from_rank4(g, x5) {
        Some(x) if g.ty(x).shape == want => Ok(x),
        _ => g.reshape(x5, want),
    }
}

fn rewrite(g: &mut Graph, f: Fusion, label: Option<String>) -> Result<(), IrError> {
    let mut operands = vec![f.q, plain(g, f.k)?, plain(g, f.v)?];
    operands.extend(f.positions.into_iter().chain(f.padding));
    let fused = g.push(Op::FlashAttention(f.attention), &operands)?;
    if let Some(label) = label {
        g.set_label(fused, label);
    }
    g.replace_uses(f.result, fused);
    Ok(())
}

/// `mask=… group=…`, for the summary remark.
fn kind(a: &Attention) -> String {
    let attrs = a.attributes();
    format!("{} group={}", attrs[0].1, a.group)
}

impl Pass for AttentionFusion {
    fn name(&self) -> &'static str {
        "attention-fusion"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let mut fused: BTreeMap<String, usize> = BTreeMap::new();
        let mut refusals = Vec::new();
        for probs in g.order() {
            if !g.contains(probs) {
                continue;
            }
            let label = g.node(probs).label.clone();
            match match_attention(g, probs) {
                None => {}
                Some(Ok(f)) => {
                    *fused.entry(kind(&f.attention)).or_insert(0) += 1;
                    let label = label.map(|l| match l.strip_suffix(".probs") {
                        Some(prefix) => format!("{prefix}.attention"),
                        None => l,
                    });
                    rewrite(g, f, label)?;
                }
                Some(Err(reason)) => {
                    let at = label.unwrap_or_else(|| format!("node {}", probs.index()));
                    refusals.push(format!("attention-fusion: refused `{at}`: {reason}"));
                }
            }
        }
        let removed = remove_dead(g);
        let kinds: Vec<String> = fused.iter().map(|(k, n)| format!("{n}× {k}")).collect();
        let count: usize = fused.values().sum();
        g.remark(format!(
            "attention-fusion: fused {count} of {} attentions into flash_attention ({}), \
             {removed} dead nodes removed",
            count + refusals.len(),
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            },
        ));
        for r in refusals {
            g.remark(r);
        }
        Ok(())
    }
}
