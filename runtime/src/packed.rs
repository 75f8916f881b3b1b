//! A CPU model's weights packed back to back in one anonymous mapping advised for transparent
//! huge pages.
//!
//! A decode step streams every weight once, each thread through long runs of consecutive rows.
//! On 4 KiB pages the hardware prefetchers stop at every page boundary; on 2 MiB pages they do
//! not (on the development VM one sequential stream per core reads ~33 GB/s on huge pages
//! against ~23 on 4 KiB pages, `bench/peers/bandwidth.c`). The advice is a hint: where the
//! kernel declines it the weights stay on small pages, with the same values.
//!
//! Invariants: each weight starts at a multiple of [`ALIGN`] bytes; the mapping lives as long
//! as the addresses handed out.

use crate::manifest::ElemType;
use crate::tensor::Tensor;
use memmap2::{Advice, MmapMut, MmapOptions};

/// Alignment of each weight in the mapping (a cache line, and the widest vector load).
const ALIGN: usize = 64;

pub struct PackedWeights {
    map: MmapMut,
    /// Each weight's offset, element type and shape, in order.
    entries: Vec<(usize, ElemType, Vec<usize>)>,
    /// Each weight's address in `map`, in order (computed once: every run reads them).
    addresses: Vec<usize>,
}

impl PackedWeights {
    /// Packs `weights`, freeing each tensor as soon as it is copied (so the process holds
    /// about one copy of the weights at any time).
    pub fn pack(weights: Vec<Tensor>) -> std::io::Result<PackedWeights> {
        let mut entries = Vec::with_capacity(weights.len());
        let mut total = 0;
        for w in &weights {
            entries.push((total, w.dtype, w.shape.clone()));
            total += w.byte_len().next_multiple_of(ALIGN);
        }
        let mut map = MmapOptions::new().len(total.max(1)).map_anon()?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(Advice::HugePage);
        for (w, &(offset, _, _)) in weights.into_iter().zip(&entries) {
            map[offset..offset + w.byte_len()].copy_from_slice(w.bytes());
            drop(w);
            release_free_memory();
        }
        let base = map.as_ptr() as usize;
        let addresses = entries
            .iter()
            .map(|&(offset, _, _)| base + offset)
            .collect();
        Ok(PackedWeights {
            map,
            entries,
            addresses,
        })
    }

    /// The address of each weight, in order.
    pub fn addresses(&self) -> &[usize] {
        &self.addresses
    }

    /// The weights as tensors again.
    pub fn unpack(&self) -> Vec<Tensor> {
        self.entries
            .iter()
            .map(|(offset, dtype, shape)| {
                let len = shape.iter().product::<usize>() * dtype.size();
                Tensor::from_bytes(*dtype, shape, &self.map[*offset..offset + len])
            })
            .collect()
    }
}

/// Hands the allocator's free memory back to the system: a tensor just copied was freed, but
/// the allocator keeps heap memory, and the process would hold the weights twice while packing.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: only returns free memory of the allocator to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights of every size come back as they went in, each at an aligned address.
    #[test]
    fn packed_weights_keep_their_values_at_aligned_addresses() {
        let weights = vec![
            Tensor::f32(&[3], &[1.0, -2.0, 3.5]),
            Tensor::i64(&[0], &[]),
            Tensor::f32(&[2, 70], &(0..140).map(|i| i as f32).collect::<Vec<_>>()),
            Tensor::from_bytes(ElemType::Bf16, &[5], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        ];
        let packed = PackedWeights::pack(weights.clone()).unwrap();
        assert!(packed.addresses().iter().all(|a| a % ALIGN == 0));
        assert_eq!(packed.unpack(), weights);
    }
}
