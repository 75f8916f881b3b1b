//! Common-subexpression elimination: two nodes with the same op, the same operands and the same
//! type compute the same value; uses of the later one move to the first (in canonical order).

use kiln_ir::{Graph, NodeId, Op, TensorType};
use std::collections::HashMap;

pub fn run(g: &mut Graph) -> usize {
    let mut seen: HashMap<(Op, Vec<NodeId>, TensorType), NodeId> = HashMap::new();
    let mut merged = 0;
    for id in g.order() {
        let node = g.node(id);
        let key = (node.op.clone(), g.operands(id), node.ty.clone());
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
