//! Common-subexpression elimination: two nodes with the same op, the same operands and the same
//! type compute the same value; uses of the later one move to the first (in canonical order).
//! A copy that `recompute` made on purpose is never merged with the value it copies.

use crate::recompute::is_recomputed;
use kiln_ir::{Graph, NodeId, Op, TensorType};
use std::collections::HashMap;

pub fn run(g: &mut Graph) -> usize {
    let mut seen: HashMap<(Op, Vec<NodeId>, TensorType, bool), NodeId> = HashMap::new();
    let mut merged = 0;
    for id in g.order() {
        let node = g.node(id);
        let key = (
            node.op.clone(),
            g.operands(id),
            node.ty.clone(),
            is_recomputed(node),
        );
        match seen.get(&key) {
            Some(&first) => {
                g.replace_uses(id, first);
                merged += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    merged
}
