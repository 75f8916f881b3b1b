//! Concats whose parts are written in place: an elementwise result or an inner concat that only
//! one concat reads is computed straight into its slice of that concat's buffer, so the concat
//! copies only the parts it does not own (the old cache rows, values read elsewhere).

use super::Lowering;
use crate::view::View;
use kiln_ir::{Graph, NodeId, Op, RegionKind};
use kiln_runtime::Poly;
use std::collections::HashMap;

/// Whether `op`'s kernels write through any view they are given: elementwise ops, fused maps
/// and concats — so their result may lie in another value's buffer or in any order.
pub(super) fn writes_any_view(op: &Op) -> bool {
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast | Op::Concat { .. } => true,
        Op::Fused(region) => region.kind == RegionKind::Map,
        _ => false,
    }
}

/// The values a concat's buffer can receive directly: maps and concats (their kernels write
/// through any view) read by that concat alone, once, and not program outputs.
pub(super) fn concat_parts_in_place(g: &Graph) -> HashMap<NodeId, (NodeId, usize)> {
    let outputs: Vec<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    let mut placed = HashMap::new();
    for id in g.order() {
        if !matches!(g.node(id).op, Op::Concat { .. }) {
            continue;
        }
        let operands = g.operands(id);
        for (slot, &o) in operands.iter().enumerate() {
            let once = operands.iter().filter(|&&x| x == o).count() == 1;
            if writes_any_view(&g.node(o).op) && once && g.users(o) == [id] && !outputs.contains(&o)
            {
                placed.insert(o, (id, slot));
            }
        }
    }
    placed
}

impl Lowering<'_> {
    /// The view `id` is written through: its part of a concat's buffer (see
    /// [`concat_parts_in_place`]), a new buffer in the order of the permute that reads it
    /// (`transposed.rs`), or a new buffer.
    pub(super) fn destination(&mut self, id: NodeId) -> View {
        let Some(&(concat, slot)) = self.in_place.get(&id) else {
            if let Some(view) = self.transposed_destination(id) {
                return view;
            }
            return self.temp(&self.g.node(id).ty);
        };
        let Op::Concat { axis } = self.g.node(concat).op else {
            unreachable!("parts are placed in concats")
        };
        let whole = self.concat_view(concat);
        let before = self.g.operands(concat)[..slot]
            .iter()
            .fold(Poly::constant(0), |at, &o| {
                at.add(&self.dim(&self.g.ty(o).shape[axis]))
            });
        let end = before.add(&self.dim(&self.g.ty(id).shape[axis]));
        whole.slice(axis, &before, &end)
    }

    /// The buffer view of `concat`: an append's input buffer (`append.rs`), its part of an
    /// outer concat, or a new buffer.
    pub(super) fn concat_view(&mut self, concat: NodeId) -> View {
        if let Some(view) = self.concat_views.get(&concat) {
            return view.clone();
        }
        let view = match self.appends.get(&concat) {
            Some(append) => {
                let mut view = self.views[&append.input].clone();
                view.dims[append.axis] = self.dim(&self.g.ty(concat).shape[append.axis]);
                view
            }
            None => self.destination(concat),
        };
        self.concat_views.insert(concat, view.clone());
        view
    }
}
