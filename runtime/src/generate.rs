//! Decoding: prefill the prompts, then run the decode program token by token, feeding each
//! step's key/value caches back as the next step's `past_*` inputs (never copied), until every
//! sequence hits an end-of-sequence id or the token budget.
//!
//! The cache is `[batch, kv_heads, positions, head_dim]` per layer. Where the compiler made the
//! decode program append in place (the cache input and output share one buffer at capacity, see
//! [`crate::manifest`]), feeding back only grows the cache's logical length; prefill's dense
//! cache is copied into that buffer once per generation. Otherwise each output moves to the
//! input and the spent input holds the next output.
//!
//! Prompts of different lengths share one batch, left-padded to the longest: row `b` starts
//! with `left_padding[b]` filler tokens (id 0, at position 0) that no query sees, its own tokens
//! sit at positions `0..len`, and every row's last prompt token is the batch's last, so prefill's
//! last-position logits and decode's shared append index serve every row. Batches hold at most
//! the programs' `batch` maximum, prompts taken in the order given.
//!
//! The loop runs on any [`DecodeProgram`]: the CPU's [`Runner`], or the GPU's runner, whose
//! caches stay on the device (only token ids go in, and logits come out; greedy decoding reads
//! back only the programs' own choice, `next_tokens`).

use crate::error::{Result, RuntimeError};
use crate::executor::{Model, Runner};
use crate::manifest::ProgramDesc;
use crate::profile::Profiled;
use crate::sampling::{Sampler, Sampling};
use crate::tensor::Tensor;
use std::borrow::Cow;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop a sequence at any of these ids (the id itself is kept in the output).
    pub eos: Vec<u32>,
}

/// The result of one `generate` call.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// New tokens of each prompt, in the order the prompts were given.
    pub tokens: Vec<Vec<u32>>,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode throughput: tokens produced by decode steps (the first new token of each sequence
    /// comes from the prefill) per second of decoding.
    pub fn decode_tokens_per_second(&self) -> f64 {
        let decoded = self.new_tokens.saturating_sub(self.tokens.len());
        decoded as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// What the decoding loop needs of a program's runner.
pub trait DecodeProgram: Profiled {
    /// A cache between runs (a host tensor, or a device buffer).
    type Cache;
    fn input_names(&self) -> Vec<String>;
    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()>;
    fn run(&mut self) -> Result<()>;
    /// Output `name` of the last run, on the host (borrowed where it already is there).
    fn host_output(&self, name: &str) -> Result<Cow<'_, Tensor>>;
    /// Moves output `name` of the last run out.
    fn take_cache(&mut self, name: &str) -> Result<Self::Cache>;
    fn set_cache(&mut self, name: &str, cache: Self::Cache) -> Result<()>;
    /// Makes output `output` of the last run the next run's input `input`.
    fn feed_back(&mut self, input: &str, output: &str) -> Result<()>;
}

impl DecodeProgram for Runner<'_> {
    type Cache = Tensor;

    fn input_names(&self) -> Vec<String> {
        self.desc().inputs.iter().map(|i| i.name.clone()).collect()
    }

    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        Runner::set_input(self, name, tensor)
    }

    fn run(&mut self) -> Result<()> {
        Runner::run(self)
    }

    fn host_output(&self, name: &str) -> Result<Cow<'_, Tensor>> {
        Runner::output(self, name)
    }

    fn take_cache(&mut self, name: &str) -> Result<Tensor> {
        self.take_output(name)
    }

    fn set_cache(&mut self, name: &str, cache: Tensor) -> Result<()> {
        Runner::set_input(self, name, cache)
    }

    fn feed_back(&mut self, input: &str, output: &str) -> Result<()> {
        Runner::feed_back(self, input, output)
    }
}

pub struct Generator<P: DecodeProgram> {
    prefill: P,
    decode: P,
    /// `(past_X, X)`: each decode cache input and the output that feeds it.
    caches: Vec<(String, String)>,
}

/// A batch of prompts left-padded to the longest: token ids, position ids and the padding.
struct Padded {
    ids: Tensor,
    positions: Tensor,
    padding: Tensor,
}

impl Padded {
    fn new(prompts: &[&[u32]]) -> Padded {
        let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let (mut ids, mut positions, mut padding) = (Vec::new(), Vec::new(), Vec::new());
        for prompt in prompts {
            let pad = len - prompt.len();
            ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().map(|&t| t as i64)));
            positions.extend(std::iter::repeat_n(0, pad).chain(0..prompt.len() as i64));
            padding.push(pad as i64);
        }
        let batch = prompts.len();
        Padded {
            ids: Tensor::i64(&[batch, len], &ids),
            positions: Tensor::i64(&[batch, len], &positions),
            padding: Tensor::i64(&[batch], &padding),
        }
    }
}

/// The logits of the last position of each sequence: rows of a `[batch, seq, vocab]` output.
fn last_logits(logits: &Tensor) -> Vec<&[f32]> {
    let (seq, vocab) = (logits.shape[1], logits.shape[2]);
    logits
        .as_f32()
        .chunks(seq * vocab)
        .map(|row| &row[(seq - 1) * vocab..])
        .collect()
}

/// Each row's next token after a run of `program`: the program's own greedy choice
/// (`next_tokens`, a few bytes to read back) when decoding is greedy and the program computes
/// it, else drawn by the host samplers from the last position's logits.
fn next_tokens<P: DecodeProgram>(
    program: &P,
    sampling: &Sampling,
    samplers: &mut [Sampler],
) -> Result<Vec<u32>> {
    let computed = program
        .desc()
        .outputs
        .iter()
        .any(|o| o.name == "next_tokens");
    if !(computed && matches!(sampling, Sampling::Greedy)) {
        let logits = program.host_output("logits")?;
        return Ok(sample_rows(&last_logits(&logits), samplers));
    }
    let tokens = program.host_output("next_tokens")?;
    tokens
        .as_i64()
        .iter()
        .map(|&t| {
            u32::try_from(t).map_err(|_| {
                let name = &program.desc().name;
                let what = format!("`next_tokens` holds {t}, not a token id");
                RuntimeError::new(name, Some("next_tokens"), what)
            })
        })
        .collect()
}

/// Logits a batch must have for its rows to be sampled on threads of their own: below it,
/// starting threads costs more than it saves.
const PARALLEL_LOGITS: usize = 1 << 20;

/// Each row's next token from its own sampler, the rows of a large batch spread over the
/// machine's threads (a decode step at batch 16 of a 128K vocabulary samples two million
/// logits). Each sampler sees only its own row, so the tokens do not depend on the split.
fn sample_rows(rows: &[&[f32]], samplers: &mut [Sampler]) -> Vec<u32> {
    let sample = |rows: &[&[f32]], samplers: &mut [Sampler]| -> Vec<u32> {
        rows.iter().zip(samplers).map(|(l, s)| s.next(l)).collect()
    };
    let logits: usize = rows.iter().map(|r| r.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.min(rows.len());
    if threads <= 1 || logits < PARALLEL_LOGITS {
        return sample(rows, samplers);
    }
    let per_thread = rows.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(per_thread)
            .zip(samplers.chunks_mut(per_thread))
            .map(|(rows, samplers)| scope.spawn(move || sample(rows, samplers)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sampling never panics on a row"))
            .collect()
    })
}

impl<'m> Generator<Runner<'m>> {
    pub fn new(model: &'m Model) -> Result<Generator<Runner<'m>>> {
        Ok(Generator::from_runners(
            model.runner("prefill")?,
            model.runner("decode")?,
        ))
    }
}

impl<P: DecodeProgram> Generator<P> {
    /// Starts timing every step of both programs.
    pub fn set_profiling(&mut self, on: bool) {
        self.prefill.set_profiling(on);
        self.decode.set_profiling(on);
    }

    /// The two programs, with each step's time when profiling.
    pub fn profiles(&self) -> [(&ProgramDesc, Option<&[Duration]>); 2] {
        [&self.prefill, &self.decode].map(|p| (p.desc(), p.profile()))
    }

    /// A generator over a model's `prefill` and `decode` runners.
    pub fn from_runners(prefill: P, decode: P) -> Generator<P> {
        let caches = decode
            .input_names()
            .into_iter()
            .filter_map(|name| {
                let output = name.strip_prefix("past_")?.to_string();
                Some((name, output))
            })
            .collect();
        Generator {
            prefill,
            decode,
            caches,
        }
    }

    /// Generates for every prompt; `on_token(prompt_index, token)` sees each new token as it
    /// is chosen.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Generation> {
        opts.sampling.validate()?;
        let mut result = Generation {
            tokens: vec![Vec::new(); prompts.len()],
            ..Generation::default()
        };
        let most = self
            .prefill
            .desc()
            .symbols
            .iter()
            .find(|s| s.name == "batch")
            .map_or(prompts.len(), |s| s.max)
            .max(1);
        let order: Vec<usize> = (0..prompts.len()).collect();
        for members in order.chunks(most) {
            self.generate_batch(prompts, members, opts, &mut result, &mut on_token)?;
        }
        Ok(result)
    }

    fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        members: &[usize],
        opts: &GenerateOptions,
        result: &mut Generation,
        on_token: &mut impl FnMut(usize, u32),
    ) -> Result<()> {
        let batch = members.len();
        let rows: Vec<&[u32]> = members.iter().map(|&i| prompts[i].as_slice()).collect();
        if rows.iter().any(|p| p.is_empty()) {
            return Err(RuntimeError::new(
                "<prompt>",
                None,
                "a prompt has no tokens",
            ));
        }
        let lens: Vec<usize> = rows.iter().map(|p| p.len()).collect();
        let padded = Padded::new(&rows);
        let mut samplers: Vec<Sampler> = members
            .iter()
            .map(|&i| Sampler::new(seeded(&opts.sampling, i as u64)))
            .collect::<Result<_>>()?;
        let started = Instant::now();
        self.prefill.set_input("input_ids", padded.ids)?;
        self.prefill.set_input("position_ids", padded.positions)?;
        self.prefill
            .set_input("left_padding", padded.padding.clone())?;
        self.prefill.run()?;
        let mut next = next_tokens(&self.prefill, &opts.sampling, &mut samplers)?;
        result.prefill_time += started.elapsed();
        result.prompt_tokens += lens.iter().sum::<usize>();
        let mut done = vec![false; batch];
        let mut from_prefill = true;
        let started = Instant::now();
        for step in 0..opts.max_new_tokens {
            for (b, &i) in members.iter().enumerate() {
                if !done[b] {
                    result.tokens[i].push(next[b]);
                    result.new_tokens += 1;
                    on_token(i, next[b]);
                    done[b] = opts.eos.contains(&next[b]);
                }
            }
            if done.iter().all(|&d| d) || step + 1 == opts.max_new_tokens {
                break;
            }
            for (input, output) in &self.caches {
                if from_prefill {
                    let cache = self.prefill.take_cache(output)?;
                    self.decode.set_cache(input, cache)?;
                } else {
                    self.decode.feed_back(input, output)?;
                }
            }
            if from_prefill {
                // The padding holds for every step of the batch; inputs stay set between runs.
                self.decode
                    .set_input("left_padding", padded.padding.clone())?;
            }
            from_prefill = false;
            let last: Vec<i64> = next.iter().map(|&t| t as i64).collect();
            self.decode
                .set_input("input_ids", Tensor::i64(&[batch, 1], &last))?;
            let positions: Vec<i64> = lens.iter().map(|&len| (len + step) as i64).collect();
            self.decode
                .set_input("position_ids", Tensor::i64(&[batch, 1], &positions))?;
            self.decode.run()?;
            next = next_tokens(&self.decode, &opts.sampling, &mut samplers)?;
        }
        result.decode_time += started.elapsed();
        Ok(())
    }
}

/// Each sequence samples from its own stream: the seed plus its prompt index.
fn seeded(sampling: &Sampling, index: u64) -> Sampling {
    match sampling {
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            seed,
        } => Sampling::Sample {
            temperature: *temperature,
            top_k: *top_k,
            top_p: *top_p,
            seed: seed.wrapping_add(index),
        },
        Sampling::Greedy => Sampling::Greedy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch large enough to be sampled on several threads gives each row the token its
    /// sampler gives it alone, greedy and seeded alike.
    #[test]
    fn rows_sampled_on_threads_match_one_at_a_time() {
        let (rows, vocab) = (16, PARALLEL_LOGITS / 8);
        let logits: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                (0..vocab)
                    .map(|i| ((i * 7919 + r * 104729) % 100_003) as f32)
                    .collect()
            })
            .collect();
        let views: Vec<&[f32]> = logits.iter().map(Vec::as_slice).collect();
        for sampling in [
            Sampling::Greedy,
            Sampling::Sample {
                temperature: 2000.0,
                top_k: None,
                top_p: None,
                seed: 5,
            },
        ] {
            let samplers = || -> Vec<Sampler> {
                (0..rows)
                    .map(|r| Sampler::new(seeded(&sampling, r as u64)).unwrap())
                    .collect()
            };
            let alone: Vec<u32> = views
                .iter()
                .zip(samplers())
                .map(|(row, mut s)| s.next(row))
                .collect();
            assert_eq!(sample_rows(&views, &mut samplers()), alone, "{sampling:?}");
        }
    }
}
