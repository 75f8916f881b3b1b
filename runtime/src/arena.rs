//! A runner's arena: one allocation holding every intermediate of its program, at the offsets
//! the memory plan ([`crate::memory_plan`]) gives for the sizes being run.
//!
//! A plan is made for a *capacity* binding of the symbols and kept while the symbols run stay
//! within it. That is sound when every intermediate's size grows with every symbol (no
//! negative coefficient outside the constant term: checked, else a plan is made whenever the
//! symbols change), since a placement for larger sizes then holds the smaller ones. A symbol
//! that outgrows the capacity at least doubles it (up to its maximum), so a decode loop whose
//! cache grows by one position per step plans log₂(steps) times.

use crate::manifest::{BufferKind, ProgramDesc};
use crate::memory_plan::{plan, Lifetime, ALIGN};

pub struct Arena {
    /// `(buffer, first step, last step)` of every intermediate.
    intermediates: Vec<(usize, usize, usize)>,
    grows_with_symbols: bool,
    capacity: Option<Vec<i64>>,
    /// Byte offset of each intermediate, indexed by buffer (0 for other buffers).
    offsets: Vec<usize>,
    storage: Vec<u64>,
}

impl Arena {
    pub fn new(desc: &ProgramDesc) -> Arena {
        let intermediates: Vec<(usize, usize, usize)> = desc
            .buffers
            .iter()
            .enumerate()
            .filter_map(|(b, d)| match d.kind {
                BufferKind::Intermediate { first, last } => Some((b, first, last)),
                _ => None,
            })
            .collect();
        let grows_with_symbols = intermediates.iter().all(|&(b, _, _)| {
            desc.buffers[b]
                .numel
                .terms
                .iter()
                .all(|t| t.symbols.is_empty() || t.coeff >= 0)
        });
        Arena {
            intermediates,
            grows_with_symbols,
            capacity: None,
            offsets: vec![0; desc.buffers.len()],
            storage: Vec::new(),
        }
    }

    /// Plans and allocates for `symbols` unless the current plan already holds them.
    pub fn fit(&mut self, desc: &ProgramDesc, symbols: &[i64]) {
        let capacity = match &self.capacity {
            Some(cap) if cap == symbols => return,
            Some(cap) if self.grows_with_symbols => {
                if symbols.iter().zip(cap).all(|(s, c)| s <= c) {
                    return;
                }
                let maxima = desc.symbols.iter().map(|s| s.max as i64);
                symbols
                    .iter()
                    .zip(cap)
                    .zip(maxima)
                    .map(|((&s, &c), max)| if s > c { s.max(2 * c).min(max) } else { c })
                    .collect()
            }
            _ => symbols.to_vec(),
        };
        let lifetimes: Vec<Lifetime> = self
            .intermediates
            .iter()
            .map(|&(b, first, last)| {
                let desc = &desc.buffers[b];
                let numel = desc.numel.eval(&capacity).max(0) as usize;
                Lifetime {
                    first,
                    last,
                    bytes: numel * desc.dtype.size(),
                }
            })
            .collect();
        let p = plan(&lifetimes);
        for (&(b, _, _), offset) in self.intermediates.iter().zip(p.offsets) {
            self.offsets[b] = offset;
        }
        // One more cache line, so the base can be aligned inside the allocation.
        self.storage = vec![0; (p.bytes + ALIGN).div_ceil(8)];
        self.capacity = Some(capacity);
    }

    /// The address of intermediate `buffer` under the current plan.
    pub fn address(&mut self, buffer: usize) -> usize {
        let start = self.storage.as_mut_ptr() as usize;
        start.next_multiple_of(ALIGN) + self.offsets[buffer]
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        self.storage.len() * 8
    }
}
