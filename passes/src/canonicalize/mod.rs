//! `canonicalize`: constant folding, algebraic simplification, common-subexpression elimination
//! and dead-code elimination, repeated until nothing changes.
//!
//! Matches: ops whose operands are all constants (folded when the result is a splat, or small
//! and of fixed shape), the identities in `simplify.rs`, structurally equal nodes, and nodes no
//! output depends on. Produces: the same function with fewer nodes; a remark in the dump counts
//! what each part did. Why first: builders write plainly (one cos/sin table per layer, scalar
//! constants broadcast at every use) and rely on this pass to share and fold, so later passes
//! match one canonical shape of each pattern. Refuses: nothing — each rewrite is exact in the
//! interpreter's semantics; inputs and weights are never removed (they are the signature).

mod cse;
mod dce;
mod fold;
mod simplify;

use crate::pipeline::Pass;
use kiln_ir::{Graph, IrError};
use std::collections::BTreeMap;

pub struct Canonicalize;

/// Removes the nodes no output depends on (inputs and weights stay); returns how many.
pub fn remove_dead(g: &mut Graph) -> usize {
    dce::run(g)
}

/// Merges structurally equal nodes; returns how many were merged.
pub fn merge_equal(g: &mut Graph) -> usize {
    cse::run(g)
}

/// Rounds after which the pass stops even if a rewrite still applies (none should).
const MAX_ROUNDS: usize = 16;

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        "canonicalize"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let mut folded = 0;
        let mut simplified: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut merged = 0;
        let mut removed = 0;
        for _ in 0..MAX_ROUNDS {
            let f = fold::run(g)?;
            let s = simplify::run(g)?;
            let c = cse::run(g);
            let d = dce::run(g);
            folded += f;
            for (rule, n) in &s {
                *simplified.entry(rule).or_insert(0) += n;
            }
            merged += c;
            removed += d;
            if f + s.values().sum::<usize>() + c + d == 0 {
                break;
            }
        }
        let rules: Vec<String> = simplified
            .iter()
            .map(|(r, n)| format!("{r} ×{n}"))
            .collect();
        g.remark(format!(
            "canonicalize: folded {folded} constants, simplified {} ({}), merged {merged} duplicates, removed {removed} dead nodes",
            simplified.values().sum::<usize>(),
            if rules.is_empty() { "none".to_string() } else { rules.join(", ") },
        ));
        Ok(())
    }
}
