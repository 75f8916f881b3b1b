//! Training data: a token stream cut into windows of `seq + 1` tokens (inputs and their next
//! tokens), visited in a seeded random order that is reshuffled every epoch.
//!
//! The position in the data is `(epoch, index)` with the seed: the order of an epoch depends
//! only on the seed and the epoch, so a checkpoint that records the three resumes the exact
//! sequence of batches.

use crate::error::{Result, RuntimeError};
use crate::tensor::Tensor;

/// Where the next batch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPosition {
    pub seed: u64,
    pub epoch: u64,
    /// Windows of this epoch already used.
    pub index: usize,
}

/// One micro-batch: `input_ids`, `position_ids`, `targets` (`i64[batch, seq]`).
pub struct Batch {
    pub input_ids: Tensor,
    pub position_ids: Tensor,
    pub targets: Tensor,
}

pub struct TokenData {
    tokens: Vec<u32>,
    seq: usize,
    order: Vec<usize>,
    position: DataPosition,
}

impl TokenData {
    /// Windows of `seq` positions over `tokens`; `batch` windows are needed for one batch.
    /// `source` names the data in errors.
    pub fn new(
        tokens: Vec<u32>,
        seq: usize,
        batch: usize,
        seed: u64,
        source: &str,
    ) -> Result<TokenData> {
        let windows = tokens.len().saturating_sub(1) / seq.max(1);
        if seq == 0 || windows < batch {
            return Err(RuntimeError::new(
                source,
                None,
                format!(
                    "{} tokens make {windows} windows of {seq}+1, fewer than the {batch} \
                     sequences of one batch",
                    tokens.len()
                ),
            ));
        }
        let mut data = TokenData {
            tokens,
            seq,
            order: Vec::new(),
            position: DataPosition {
                seed,
                epoch: 0,
                index: 0,
            },
        };
        data.shuffle();
        Ok(data)
    }

    pub fn windows(&self) -> usize {
        (self.tokens.len() - 1) / self.seq
    }

    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Continues from `position` (a checkpoint's).
    pub fn seek(&mut self, position: DataPosition) -> Result<()> {
        if position.index > self.windows() {
            return Err(RuntimeError::new(
                "<checkpoint>",
                Some("data.index"),
                format!(
                    "window {} is past the {} windows of this data",
                    position.index,
                    self.windows()
                ),
            ));
        }
        self.position = position;
        self.shuffle();
        Ok(())
    }

    /// The next `batch` windows, starting a new epoch when this one has too few left.
    pub fn next_batch(&mut self, batch: usize) -> Batch {
        if self.position.index + batch > self.order.len() {
            self.position.epoch += 1;
            self.position.index = 0;
            self.shuffle();
        }
        let seq = self.seq;
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for &w in &self.order[self.position.index..self.position.index + batch] {
            let window = &self.tokens[w * seq..w * seq + seq + 1];
            ids.extend(window[..seq].iter().map(|&t| t as i64));
            targets.extend(window[1..].iter().map(|&t| t as i64));
        }
        self.position.index += batch;
        let positions: Vec<i64> = (0..batch).flat_map(|_| 0..seq as i64).collect();
        Batch {
            input_ids: Tensor::i64(&[batch, seq], &ids),
            position_ids: Tensor::i64(&[batch, seq], &positions),
            targets: Tensor::i64(&[batch, seq], &targets),
        }
    }

    /// The window order of the current epoch: a Fisher–Yates shuffle seeded by seed and epoch.
    fn shuffle(&mut self) {
        let mut rng = SplitMix(self.position.seed ^ self.position.epoch.wrapping_mul(0x9E37_79B9));
        self.order = (0..self.windows()).collect();
        for i in (1..self.order.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }
}

/// SplitMix64: small, fast, and the same on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pair_inputs_with_next_tokens_and_resume_exactly() {
        let tokens: Vec<u32> = (0..41).collect();
        let mut data = TokenData::new(tokens.clone(), 4, 3, 7, "t").unwrap();
        assert_eq!(data.windows(), 10);
        let first = data.next_batch(3);
        let ids = first.input_ids.as_i64();
        let targets = first.targets.as_i64();
        for (i, t) in ids.iter().zip(targets) {
            assert_eq!(i + 1, *t, "each target is the next token");
        }
        let saved = data.position();
        let later: Vec<Vec<i64>> = (0..7)
            .map(|_| data.next_batch(3).input_ids.as_i64().to_vec())
            .collect();
        let mut resumed = TokenData::new(tokens, 4, 3, 7, "t").unwrap();
        resumed.seek(saved).unwrap();
        let again: Vec<Vec<i64>> = (0..7)
            .map(|_| resumed.next_batch(3).input_ids.as_i64().to_vec())
            .collect();
        assert_eq!(later, again);
        assert!(data.position().epoch >= 2, "epochs roll over");
    }

    #[test]
    fn data_too_short_for_one_batch_is_refused() {
        let err = TokenData::new((0..8).collect(), 4, 2, 0, "tiny.txt")
            .err()
            .unwrap();
        assert!(err.to_string().contains("tiny.txt"), "{err}");
    }
}
