//! `gqa-share`: attention reads each shared key/value head in place instead of a repeated copy.
//!
//! Matches: the explicit KV-head repeat the builders write for grouped-query attention,
//! `R = reshape(broadcast(reshape(X)))` taking `X: [b, kv, P, d]` through `[b, kv, 1, P, d]` and
//! `[b, kv, g, P, d]` to `R: [b, kv·g, P, d]`, when every use of `R` is a batched matmul that
//! contracts it: `matmul(A, R)` (probabilities × values) or `matmul(A, permute(R, [0,1,3,2]))`
//! (queries × keysᵀ).
//!
//! Produces: the same matmul on grouped axes, `reshape(matmul(reshape(A, [b, kv, g, S, ·]),
//! X5), [b, kv·g, S, ·])` with `X5 = reshape(X, [b, kv, 1, P, d])` (transposed for keys), so the
//! group axis broadcasts inside the matmul and no `[b, heads, P, d]` tensor exists. Every reshape
//! splits or merges adjacent axes of a contiguous value, which backends treat as free views.
//!
//! Why: the repeat costs `g×` the cache's bytes in copies every step, and is what keeps the
//! attention pattern from being recognized as reading a shared head. The KV cache itself already
//! holds `kv` heads (the builders' choice, as Hugging Face's), so the pass changes no program
//! signature; the remark reports the repeated bytes per token it removes.
//!
//! Refuses (leaves the repeat, with a remark): a repeat with any other kind of use.

use crate::canonicalize::remove_dead;
use crate::pipeline::Pass;
use kiln_ir::{Dim, Graph, IrError, NodeId, Op};

pub struct GqaShare;

/// The parts of one matched repeat.
pub(crate) struct Repeat {
    /// `X` as `[b, kv, 1, P, d]`.
    pub(crate) grouped: NodeId,
    kv: Dim,
    pub(crate) group: Dim,
}

fn is_op(g: &Graph, id: NodeId, want: fn(&Op) -> bool) -> bool {
    want(&g.node(id).op)
}

/// `R = reshape(broadcast(X5))` with `X5 = reshape(X)` of the shapes in the module doc.
pub(crate) fn match_repeat(g: &Graph, r: NodeId) -> Option<Repeat> {
    if !is_op(g, r, |op| matches!(op, Op::Reshape)) || g.ty(r).rank() != 4 {
        return None;
    }
    let b = g.operands(r)[0];
    if !is_op(g, b, |op| matches!(op, Op::Broadcast)) {
        return None;
    }
    let x5 = g.operands(b)[0];
    let (rs, bs, xs) = (&g.ty(r).shape, &g.ty(b).shape, &g.ty(x5).shape);
    let grouped_shape = xs.len() == 5 && bs.len() == 5 && xs[2].is_one();
    if !grouped_shape || xs[..2] != bs[..2] || xs[3..] != bs[3..] {
        return None;
    }
    let (kv, group) = (bs[1].as_fixed()?, bs[2].as_fixed()?);
    if group < 2 || rs[0] != bs[0] || rs[1] != Dim::fixed(kv * group) || rs[2..] != bs[3..] {
        return None;
    }
    Some(Repeat {
        grouped: x5,
        kv: Dim::fixed(kv),
        group: Dim::fixed(group),
    })
}

/// A use of the repeat this pass can rewrite: the matmul, and whether it goes through the
/// key transpose.
fn contracting_uses(g: &Graph, r: NodeId) -> Option<Vec<(NodeId, bool)>> {
    let mut uses = Vec::new();
    for user in g.users(r) {
        match &g.node(user).op {
            Op::MatMul if g.operands(user)[1] == r && g.operands(user)[0] != r => {
                uses.push((user, false))
            }
            Op::Permute { perm } if perm == &[0, 1, 3, 2] => {
                for mm in g.users(user) {
                    let ops = g.operands(mm);
                    if !matches!(g.node(mm).op, Op::MatMul) || ops[1] != user || ops[0] == user {
                        return None;
                    }
                    uses.push((mm, true));
                }
            }
            _ => return None,
        }
    }
    Some(uses)
}

/// Rewrites one matmul to read the shared heads.
fn rewrite(g: &mut Graph, rep: &Repeat, mm: NodeId, keys: bool) -> Result<(), IrError> {
    let a = g.operands(mm)[0];
    let out_shape = g.ty(mm).shape.clone();
    let a_shape = g.ty(a).shape.clone();
    let mut a5 = vec![a_shape[0].clone(), rep.kv.clone(), rep.group.clone()];
    a5.extend_from_slice(&a_shape[2..]);
    let a5 = g.reshape(a, a5)?;
    let rhs = if keys {
        g.permute(rep.grouped, &[0, 1, 2, 4, 3])?
    } else {
        rep.grouped
    };
    let grouped = g.matmul(a5, rhs)?;
    let out = g.reshape(grouped, out_shape)?;
    if let Some(label) = g.node(mm).label.clone() {
        g.set_label(out, label);
    }
    g.replace_uses(mm, out);
    Ok(())
}

impl Pass for GqaShare {
    fn name(&self) -> &'static str {
        "gqa-share"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let candidates: Vec<NodeId> = g.order();
        let (mut shared, mut refused, mut bytes_per_token) = (0, 0, 0usize);
        for r in candidates {
            let Some(rep) = match_repeat(g, r) else {
                continue;
            };
            let Some(uses) = contracting_uses(g, r) else {
                refused += 1;
                continue;
            };
            for &(mm, keys) in &uses {
                rewrite(g, &rep, mm, keys)?;
            }
            let shape = &g.ty(r).shape;
            let heads_times_dim =
                shape[1].as_fixed().unwrap_or(0) * shape[3].as_fixed().unwrap_or(0);
            bytes_per_token += heads_times_dim * 4;
            shared += 1;
        }
        let removed = remove_dead(g);
        g.remark(format!(
            "gqa-share: {shared} KV-head repeats read in place ({bytes_per_token} bytes of repeated \
             keys/values per cached position no longer copied; the cache holds kv_heads heads \
             before and after), {refused} refused (a use other than a contracting matmul), \
             {removed} dead nodes removed"
        ));
        Ok(())
    }
}
