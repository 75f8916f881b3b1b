//! Memory planning: a program's intermediates share one arena.
//!
//! The compiler records each intermediate buffer's lifetime — the first and the last step that
//! touch it ([`crate::manifest::BufferKind::Intermediate`]). Sizes are polynomials in the
//! program's symbols, so offsets are computed for concrete sizes by one function, [`plan`]: the
//! compiler runs it at the symbols' maxima and records the peak in the manifest
//! ([`crate::manifest::MemoryDesc`]); the runtime runs it for the sizes it executes and
//! allocates exactly the arena it returns.
//!
//! Algorithm: greedy by size. Buffers are placed largest first, each at the lowest
//! [`ALIGN`]-aligned offset where it overlaps no placed buffer whose lifetime meets its own.
//! Invariant of the result: two buffers that are live at one step never share a byte, and every
//! buffer lies inside `0..bytes`.

/// Alignment of every offset, in bytes (a cache line).
pub const ALIGN: usize = 64;

/// One buffer to place: live from step `first` to step `last` (inclusive), `bytes` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
    pub bytes: usize,
}

/// Where each buffer lies (in the order given), and the arena's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub offsets: Vec<usize>,
    pub bytes: usize,
}

fn overlaps(a: &Lifetime, b: &Lifetime) -> bool {
    a.first <= b.last && b.first <= a.last
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

pub fn plan(buffers: &[Lifetime]) -> Plan {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].bytes), i));
    let mut offsets = vec![0; buffers.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    let mut bytes = 0;
    for i in order {
        let me = &buffers[i];
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| overlaps(me, &buffers[j]))
            .map(|&j| (offsets[j], offsets[j] + buffers[j].bytes))
            .collect();
        taken.sort_unstable();
        let mut at = 0;
        for (start, end) in taken {
            if at + me.bytes <= start {
                break;
            }
            at = at.max(align(end));
        }
        offsets[i] = at;
        bytes = bytes.max(at + me.bytes);
        placed.push(i);
    }
    Plan { offsets, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so failures reproduce.
    fn lcg(state: &mut u64) -> usize {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 33) as usize
    }

    #[test]
    fn live_buffers_never_share_a_byte_and_dead_ones_reuse_memory() {
        for seed in 0..200 {
            let mut s = seed;
            let n = 1 + lcg(&mut s) % 60;
            let buffers: Vec<Lifetime> = (0..n)
                .map(|_| {
                    let first = lcg(&mut s) % 40;
                    let len = lcg(&mut s) % 8;
                    let bytes = [0, 1, 63, 64, 100, 4096, 10_000][lcg(&mut s) % 7];
                    Lifetime {
                        first,
                        last: first + len,
                        bytes,
                    }
                })
                .collect();
            let p = plan(&buffers);
            let total: usize = buffers.iter().map(|b| align(b.bytes)).sum();
            assert!(p.bytes <= total, "seed {seed}: {} > {total}", p.bytes);
            for (i, a) in buffers.iter().enumerate() {
                assert_eq!(p.offsets[i] % ALIGN, 0);
                assert!(p.offsets[i] + a.bytes <= p.bytes);
                for (j, b) in buffers.iter().enumerate().skip(i + 1) {
                    let disjoint = p.offsets[i] + a.bytes <= p.offsets[j]
                        || p.offsets[j] + b.bytes <= p.offsets[i];
                    assert!(
                        !overlaps(a, b) || disjoint || a.bytes == 0 || b.bytes == 0,
                        "seed {seed}: buffers {i} and {j} collide"
                    );
                }
            }
        }
    }

    #[test]
    fn a_chain_of_steps_needs_two_buffers() {
        // Each step reads the previous buffer and writes the next.
        let chain: Vec<Lifetime> = (0..10)
            .map(|i| Lifetime {
                first: i,
                last: i + 1,
                bytes: 1000,
            })
            .collect();
        assert_eq!(plan(&chain).bytes, align(1000) + 1000);
    }
}
