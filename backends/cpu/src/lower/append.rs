//! In-place appends: a program output `concat(I, parts…, axis)` whose first operand is a program
//! input `I` that nothing else reads becomes an append into `I`'s buffer — the decoder's KV
//! cache, `key_L = concat(past_key_L, new, axis=2)`.
//!
//! `I`'s buffer is allocated with room for the concat's length along `axis` at the symbols'
//! declared maxima, its *capacity* (`past+1` with `past ≤ 127` gives 128), and `I` is viewed
//! through it with the strides of that capacity. The concat's view is the same buffer with the
//! concat's length, so the other parts land after `I`'s entries (written there directly when
//! `concat.rs` places them, copied otherwise), and `I`'s own entries are not copied at all: they
//! are already in place. The output names `I`'s buffer, both with the capacity (the manifest's
//! module doc states the contract with the runtime).
//!
//! Nothing can observe the write: `I` has no other user and is no output, so every read of its
//! buffer goes through the concat's view, after the parts are written; the parts are written
//! only past `I`'s logical length; and the concat is one output under one name.
//!
//! Not matched (compiled as before, the concat copying every operand): an input read by
//! anything else, not the concat's first operand, or itself an output; a concat that is not an
//! output, or is one under two names; an axis whose length is a constant (nothing grows) or
//! shrinks as a symbol grows.

use kiln_ir::{Graph, NodeId, Op};
use kiln_runtime::manifest::Capacity;
use std::collections::HashMap;

/// One cache appended in place.
#[derive(Clone, Copy, Debug)]
pub(super) struct Append {
    pub input: NodeId,
    pub concat: NodeId,
    pub axis: usize,
    /// Entries along `axis` the buffer has room for: the concat's length at the maxima.
    pub capacity: usize,
}

impl Append {
    pub fn capacity(&self) -> Capacity {
        Capacity {
            axis: self.axis,
            entries: self.capacity,
        }
    }
}

/// The appends of `g`, by input and by concat.
pub(super) fn appends(g: &Graph) -> HashMap<NodeId, Append> {
    let mut found = HashMap::new();
    for (_, concat) in g.outputs() {
        let Op::Concat { axis } = g.node(*concat).op else {
            continue;
        };
        let operands = g.operands(*concat);
        let input = operands[0];
        let named = |id: NodeId| g.outputs().iter().filter(|(_, o)| *o == id).count();
        let eligible = matches!(g.node(input).op, Op::Input { .. })
            && g.users(input) == [*concat]
            && operands.iter().filter(|&&o| o == input).count() == 1
            && named(input) == 0
            && named(*concat) == 1
            && !g.ty(input).shape[axis].terms().is_empty();
        let capacity = eligible
            .then(|| at_maxima(g, &g.ty(*concat).shape[axis]))
            .flatten();
        if let Some(capacity) = capacity {
            let append = Append {
                input,
                concat: *concat,
                axis,
                capacity,
            };
            found.insert(input, append);
            found.insert(*concat, append);
        }
    }
    found
}

/// The value of `dim` at the symbols' maxima, when that is its largest value (no negative
/// coefficient).
fn at_maxima(g: &Graph, dim: &kiln_ir::Dim) -> Option<usize> {
    let mut value = dim.constant();
    for (symbol, k) in dim.terms() {
        if *k < 0 {
            return None;
        }
        value += k * *g.symbols().get(symbol)? as i64;
    }
    usize::try_from(value).ok()
}
