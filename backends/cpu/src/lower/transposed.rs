//! Results written in the order their one reader wants: an elementwise result or a concat read
//! only by a `permute` that keeps the last axis in place (the query and key gradients after
//! RoPE's backward, `[B, H, S, D]` permuted to `[B, S, H, D]`) gets a buffer in the permuted
//! order and is written through the inverse permutation of it. The permute is then contiguous,
//! so the `reshape` after it (to `[B, S, H·D]`, what the projection's matmuls read) is a view
//! instead of a copy. The values are the same; only where they lie changes, and the kernels
//! writing them still write whole rows of the unit-stride last axis.

use super::concat::writes_any_view;
use super::Lowering;
use crate::view::View;
use kiln_ir::{Graph, NodeId, Op};
use kiln_runtime::manifest::BufferKind;
use std::collections::HashMap;

/// The results to write in their reader's order, with that reader's permutation: those whose
/// kernels write through any view (maps, concats), read by one `permute` alone that moves some
/// axis but not the last, and not program outputs.
pub(super) fn transposed_results(g: &Graph) -> HashMap<NodeId, Vec<usize>> {
    let outputs: Vec<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    let mut transposed = HashMap::new();
    for id in g.order() {
        let [reader] = g.users(id)[..] else {
            continue;
        };
        let Op::Permute { perm } = &g.node(reader).op else {
            continue;
        };
        let last = perm.len() - 1;
        let moves = perm.iter().enumerate().any(|(i, &p)| i != p);
        if writes_any_view(&g.node(id).op) && moves && perm[last] == last && !outputs.contains(&id)
        {
            transposed.insert(id, perm.clone());
        }
    }
    transposed
}

impl Lowering<'_> {
    /// A new buffer for `id` in the order its reader permutes it to (see
    /// [`transposed_results`]), viewed in `id`'s own order; `None` where `id` is not such a
    /// result.
    pub(super) fn transposed_destination(&mut self, id: NodeId) -> Option<View> {
        let perm = self.transposed.get(&id)?.clone();
        let ty = self.g.node(id).ty.clone();
        let dims = self.shape(&ty);
        let permuted = perm.iter().map(|&p| dims[p].clone()).collect();
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        let buffer = self.new_buffer(BufferKind::Temp, ty.dtype, permuted);
        Some(buffer.permute(&inverse))
    }
}
