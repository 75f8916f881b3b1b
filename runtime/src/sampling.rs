//! Choosing the next token from the model's logits: [`Sampling`] says how (greedy, or a draw
//! shaped by temperature, top-k and top-p) and [`Sampler`] does it, with its own seeded random
//! number generator so that a seed always gives the same tokens.
//!
//! NaN logits count as −∞. When the top logit divided by the temperature is not finite (a logit
//! of +∞, every logit −∞, or a temperature so small that the division overflows), a draw has no
//! finite probabilities and the sampler takes the greedy choice among the top-k candidates.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, RuntimeError};

/// Names the sampling parameters in errors.
const SOURCE: &str = "<input>";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token; the lowest id on ties.
    Greedy,
    /// A random draw from `softmax(logits / temperature)`, restricted to the `top_k` most likely
    /// tokens, then to the fewest most likely whose probabilities sum to at least `top_p`.
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
    },
}

impl Sampling {
    /// Checks the parameters: `temperature` finite and > 0, `top_k` ≥ 1, `top_p` in (0, 1].
    pub fn validate(&self) -> Result<()> {
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = *self
        else {
            return Ok(());
        };
        let error = |field, message: String| Err(RuntimeError::new(SOURCE, Some(field), message));
        if !(temperature.is_finite() && temperature > 0.0) {
            return error(
                "temperature",
                format!("must be a finite number above 0, found {temperature}"),
            );
        }
        if top_k == Some(0) {
            return error("top_k", "must be at least 1, found 0".to_string());
        }
        if let Some(p) = top_p {
            if !(p > 0.0 && p <= 1.0) {
                return error("top_p", format!("must be in (0, 1], found {p}"));
            }
        }
        Ok(())
    }
}

/// Picks tokens as its [`Sampling`] says.
#[derive(Clone, Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose draws are seeded with the sampling's seed; fails on invalid parameters.
    pub fn new(sampling: Sampling) -> Result<Sampler> {
        sampling.validate()?;
        let seed = match sampling {
            Sampling::Greedy => 0,
            Sampling::Sample { seed, .. } => seed,
        };
        Ok(Sampler {
            sampling,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next token id, from one logit per vocabulary entry.
    ///
    /// Panics when `logits` is empty: the runtime checks at load time that the model's
    /// vocabulary is not.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "Sampler::next needs at least one logit");
        match self.sampling {
            Sampling::Greedy => greedy(logits),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => self.draw(logits, temperature, top_k, top_p),
        }
    }

    fn draw(
        &mut self,
        logits: &[f32],
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
    ) -> u32 {
        let mut candidates: Vec<(usize, f32)> = logits
            .iter()
            .map(|&l| {
                if l.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    l / temperature
                }
            })
            .enumerate()
            .collect();
        if let Some(k) = top_k.filter(|&k| k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, most_likely_first);
            candidates.truncate(k);
        }
        if top_p.is_some() {
            candidates.sort_unstable_by(most_likely_first);
        }
        let max = candidates
            .iter()
            .map(|&(_, l)| l)
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(candidates.iter().map(|&(index, _)| (index, logits[index])));
        }
        let mut weights: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| f64::from(l - max).exp())
            .collect();
        if let Some(p) = top_p {
            // Candidates are sorted: keep the shortest prefix holding `p` of the mass.
            let target = f64::from(p) * weights.iter().sum::<f64>();
            let mut mass = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    mass += w;
                    mass >= target
                })
                .map_or(weights.len(), |i| i + 1);
            weights.truncate(keep);
        }
        let mut r = self.rng.random::<f64>() * weights.iter().sum::<f64>();
        for (&(index, _), w) in candidates.iter().zip(&weights) {
            if r < *w {
                return index as u32;
            }
            r -= w;
        }
        // Rounding left `r` at or past the last weight: the draw falls on the last candidate.
        candidates[weights.len() - 1].0 as u32
    }
}

/// Orders candidates by logit, highest first, then by index.
fn most_likely_first(a: &(usize, f32), b: &(usize, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// [`argmax`] of all of `logits`, in two passes that the compiler vectorizes: the maximum kept
/// in 8 independent lanes (`f32::max` passes over NaN), then the first index holding it. A
/// decode step at batch 16 of a 128K vocabulary takes two million logits.
fn greedy(logits: &[f32]) -> u32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    let best = lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    let rank = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    logits.iter().position(|&x| rank(x) == best).unwrap_or(0) as u32
}

/// The index of the highest logit, the lowest index on ties; NaN loses to everything.
fn argmax(candidates: impl Iterator<Item = (usize, f32)>) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (index, logit) in candidates {
        let logit = if logit.is_nan() {
            f32::NEG_INFINITY
        } else {
            logit
        };
        let better = best.is_none_or(|(best_index, best_logit)| {
            logit > best_logit || (logit == best_logit && index < best_index)
        });
        if better {
            best = Some((index, logit));
        }
    }
    best.map_or(0, |(index, _)| index as u32)
}
