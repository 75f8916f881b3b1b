//! Dead-code elimination: nodes that no output depends on are removed (inputs and weights stay:
//! they are the program's signature).

use kiln_ir::{Graph, NodeId};
use std::collections::HashSet;

pub fn run(g: &mut Graph) -> usize {
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(g.operands(id));
        }
    }
    let signature: HashSet<NodeId> = g.inputs().iter().chain(g.weights()).copied().collect();
    let mut dead: Vec<NodeId> = g
        .node_ids()
        .filter(|id| !live.contains(id) && !signature.contains(id))
        .collect();
    // Remove users before their operands.
    let order = g.order();
    let position: std::collections::HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    dead.sort_by_key(|id| std::cmp::Reverse(position[id]));
    let count = dead.len();
    for id in dead {
        g.remove(id);
    }
    count
}
