//! Buffers at capacity (see [`crate::manifest`]'s module doc): the layout of a tensor stored
//! with room for more entries along one axis, and the copies between it and a dense tensor.
//!
//! Along the capacity axis, a tensor of shape `[o…, n, i…]` is `outer = Πo` blocks of `n·Πi`
//! contiguous elements; stored at capacity `c`, block `b` starts at `b·c·Πi`. Both runners copy
//! block by block (the GPU's device-to-device copy is one strided 2-D copy of these blocks).

use crate::error::Result;
use crate::executor::program_error;
use crate::manifest::{Capacity, ProgramDesc};

/// The blocks of one tensor along its capacity axis, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// How many blocks (the product of the axes before the capacity axis).
    pub count: usize,
    /// Bytes of a block of the dense tensor (its entries along the axis).
    pub dense: usize,
    /// Bytes between consecutive blocks at capacity.
    pub pitch: usize,
}

impl Capacity {
    /// `shape` with the capacity axis at its capacity: the shape of the storage.
    pub fn storage_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut storage = shape.to_vec();
        storage[self.axis] = self.entries;
        storage
    }

    /// The blocks of a tensor of `shape` with elements of `elem_bytes`.
    pub fn blocks(&self, shape: &[usize], elem_bytes: usize) -> Blocks {
        let inner: usize = shape[self.axis + 1..].iter().product::<usize>() * elem_bytes;
        Blocks {
            count: shape[..self.axis].iter().product(),
            dense: shape[self.axis] * inner,
            pitch: self.entries * inner,
        }
    }

    /// Checks that a tensor of `shape` fits in input or output `io` of `desc`.
    pub fn check(&self, desc: &ProgramDesc, io: &str, shape: &[usize]) -> Result<()> {
        let have = shape.get(self.axis).copied().unwrap_or(0);
        if shape.len() <= self.axis || have > self.entries {
            return Err(program_error(
                desc,
                io,
                format!(
                    "{have} entries along axis {} exceed its capacity of {}, the most the \
                     program was compiled for: the cache is full",
                    self.axis, self.entries
                ),
            ));
        }
        Ok(())
    }
}

/// Copies the dense bytes of a tensor (`blocks` its layout) into `stored`, a buffer at
/// capacity; the room after each block is left as it was.
pub fn store(dense: &[u8], blocks: Blocks, stored: &mut [u8]) {
    if blocks.dense == 0 {
        return;
    }
    for (b, block) in dense.chunks_exact(blocks.dense).enumerate() {
        let at = b * blocks.pitch;
        stored[at..at + blocks.dense].copy_from_slice(block);
    }
}

/// The dense bytes of a tensor (`blocks` its layout) stored at capacity in `stored`.
pub fn load(stored: &[u8], blocks: Blocks) -> Vec<u8> {
    let mut dense = Vec::with_capacity(blocks.count * blocks.dense);
    for b in 0..blocks.count {
        let at = b * blocks.pitch;
        dense.extend_from_slice(&stored[at..at + blocks.dense]);
    }
    dense
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_round_trips_through_a_buffer_at_capacity() {
        let cap = Capacity {
            axis: 1,
            entries: 4,
        };
        let shape = [2, 3, 2];
        let dense: Vec<u8> = (0..12).collect();
        let blocks = cap.blocks(&shape, 1);
        assert_eq!(
            blocks,
            Blocks {
                count: 2,
                dense: 6,
                pitch: 8
            }
        );
        let mut stored = vec![255u8; 16];
        store(&dense, blocks, &mut stored);
        assert_eq!(
            stored,
            [0, 1, 2, 3, 4, 5, 255, 255, 6, 7, 8, 9, 10, 11, 255, 255]
        );
        assert_eq!(load(&stored, blocks), dense);
        assert_eq!(cap.storage_shape(&shape), [2, 4, 2]);
    }

    #[test]
    fn more_entries_than_the_capacity_are_refused_by_name() {
        let cap = Capacity {
            axis: 2,
            entries: 8,
        };
        let desc = ProgramDesc {
            name: "decode".into(),
            symbols: vec![],
            buffers: vec![],
            inputs: vec![],
            outputs: vec![],
            steps: vec![],
            memory: Default::default(),
        };
        assert!(cap.check(&desc, "past_key_0", &[1, 2, 8, 4]).is_ok());
        let e = cap
            .check(&desc, "past_key_0", &[1, 2, 9, 4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("past_key_0") && e.contains("capacity of 8"),
            "{e}"
        );
    }
}
