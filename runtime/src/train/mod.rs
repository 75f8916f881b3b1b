//! The training driver: runs a model's compiled `train_step` (and `accumulate`) programs step by
//! step over token data, with the learning-rate schedule, the batch-size ramp, loss-spike and
//! non-finite handling, and checkpoints.
//!
//! The trainer drives any [`TrainProgram`]: the CPU's runner, or the GPU's, where the state stays
//! on the device. It owns the weights and the AdamW moments (f32) and hands them to every run. The
//! step itself decides whether it is applied (its `accepted` output: a finite loss and gradient
//! norm, and a loss at most the `max_loss` the [`SpikeDetector`] sets), and returns the state as
//! it was when it is not, so a rejected step (non-finite, or a loss spike) is never applied: it
//! is skipped, or the last checkpoint is restored and the data moves on past the offending
//! batch. State a program writes in place stays where it is; other new state is swapped in.
//! One step runs `accumulate` on all micro-batches but the last and `train_step` on the last,
//! so the loss and the gradients are means over every token of the step (see the compiler's
//! docs/training.md for the programs). Runs are deterministic: the same start, options and
//! data give the same bits, and resuming from a checkpoint continues the uninterrupted run
//! exactly.

mod checkpoint;
mod data;
mod program;
mod schedule;
mod spike;

pub use checkpoint::{write_weights, Checkpoint};
pub use data::{Batch, DataPosition, TokenData};
pub use program::TrainProgram;
pub use schedule::{BatchRamp, LrSchedule};
pub use spike::{SpikeDetector, SpikeOptions, SpikePolicy};

use crate::error::{Result, RuntimeError};
use crate::executor::{Model, Runner};
use crate::manifest::{ElemType, ProgramDesc, TensorDesc};
use crate::tensor::Tensor;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything about a run but the model and the data.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Sequences per micro-batch.
    pub batch: usize,
    pub lr: LrSchedule,
    pub ramp: BatchRamp,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; `None`: no clipping.
    pub max_grad_norm: Option<f64>,
    pub spike: SpikeOptions,
}

impl TrainOptions {
    /// AdamW's usual settings (betas 0.9 / 0.95, eps 1e-8, weight decay 0.1), clipping at 1.0,
    /// a constant rate and one micro-batch of `batch` sequences per step.
    pub fn new(batch: usize, lr: f64) -> TrainOptions {
        TrainOptions {
            batch,
            lr: LrSchedule::constant(lr),
            ramp: BatchRamp::constant(1),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: Some(1.0),
            spike: SpikeOptions::default(),
        }
    }
}

/// What became of a step.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Applied,
    /// Rejected (the reason) and skipped.
    Skipped(String),
    /// Rejected (the reason); the last checkpoint was restored.
    RolledBack(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Optimizer steps applied so far (after this one).
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    /// Before clipping.
    pub grad_norm: f64,
    pub micro_batches: usize,
    /// Tokens predicted in this step.
    pub tokens: usize,
    pub outcome: Outcome,
}

pub struct Trainer<P: TrainProgram> {
    train: P,
    accumulate: Option<P>,
    weights: Vec<TensorDesc>,
    params: Vec<P::State>,
    adam_m: Vec<P::State>,
    adam_v: Vec<P::State>,
    /// Optimizer steps applied.
    step: u64,
    options: TrainOptions,
    spike: SpikeDetector,
    last_checkpoint: Option<PathBuf>,
}

const HYPERPARAMETERS: [&str; 7] = [
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "max_grad_norm",
    "step",
];

fn scalar(v: f64) -> Tensor {
    Tensor::f32(&[], &[v as f32])
}

impl<'m> Trainer<Runner<'m>> {
    /// A trainer of `model`'s weights `params` (those [`Model::take_weights`] returned), with
    /// fresh moments.
    pub fn new(
        model: &'m Model,
        params: Vec<Tensor>,
        options: TrainOptions,
    ) -> Result<Trainer<Runner<'m>>> {
        let train = model.runner("train_step")?;
        let accumulate = model.runner("accumulate").ok();
        Trainer::from_runners(
            train,
            accumulate,
            &model.manifest().weights,
            params,
            options,
        )
    }
}

impl<P: TrainProgram> Trainer<P> {
    /// Starts timing every step of the training programs.
    pub fn set_profiling(&mut self, on: bool) {
        self.train.set_profiling(on);
        if let Some(a) = &mut self.accumulate {
            a.set_profiling(on);
        }
    }

    /// The training programs, with each step's time when profiling.
    pub fn profiles(&self) -> Vec<(&ProgramDesc, Option<&[Duration]>)> {
        std::iter::once(&self.train)
            .chain(&self.accumulate)
            .map(|p| (p.desc(), p.profile()))
            .collect()
    }

    /// A trainer running `train` (and `accumulate`, for steps of several micro-batches) on the
    /// model `weights` describes, from `params` (one per weight), with fresh moments.
    pub fn from_runners(
        train: P,
        accumulate: Option<P>,
        weights: &[TensorDesc],
        params: Vec<P::State>,
        options: TrainOptions,
    ) -> Result<Trainer<P>> {
        options.lr.check()?;
        let zeros = || -> Result<Vec<P::State>> {
            weights
                .iter()
                .map(|w| train.to_state(Tensor::zeros(ElemType::F32, &w.shape)))
                .collect()
        };
        let (adam_m, adam_v) = (zeros()?, zeros()?);
        Ok(Trainer {
            train,
            accumulate,
            weights: weights.to_vec(),
            params,
            adam_m,
            adam_v,
            step: 0,
            options,
            spike: SpikeDetector::default(),
            last_checkpoint: None,
        })
    }

    /// Optimizer steps applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The current weights, in the manifest's order (host tensors or device buffers).
    pub fn params(&self) -> &[P::State] {
        &self.params
    }

    /// The current weights on the host.
    pub fn host_params(&self) -> Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| Ok(self.train.to_host(p)?.into_owned()))
            .collect()
    }

    /// Bytes of the arenas holding the programs' intermediates, as planned for the largest
    /// shapes run so far.
    pub fn arena_bytes(&self) -> usize {
        self.train.arena_bytes() + self.accumulate.as_ref().map_or(0, |a| a.arena_bytes())
    }

    /// Writes the current weights as a safetensors file under their own names (atomically).
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        checkpoint::write_weights(path, &self.weights, &self.host(&self.params)?)
    }

    /// `states` on the host.
    fn host<'s>(&self, states: &'s [P::State]) -> Result<Vec<Cow<'s, Tensor>>> {
        states.iter().map(|s| self.train.to_host(s)).collect()
    }

    pub fn weight_names(&self) -> impl Iterator<Item = &str> {
        self.weights.iter().map(|w| w.name.as_str())
    }

    /// Runs one optimizer step on the next micro-batches of `data` (as many as the ramp says).
    pub fn step(&mut self, data: &mut TokenData) -> Result<StepReport> {
        let count = self.options.ramp.at(self.step + 1);
        let batches = (0..count)
            .map(|_| data.next_batch(self.options.batch))
            .collect();
        self.step_on(batches)
    }

    /// Runs one optimizer step on the given micro-batches (at least one).
    pub fn step_on(&mut self, batches: Vec<Batch>) -> Result<StepReport> {
        let t = self.step + 1;
        let lr = self.options.lr.at(t);
        let micro_batches = batches.len();
        let tokens = batches.iter().map(|b| b.targets.numel()).sum();
        let mut batches = batches.into_iter();
        let last = batches.next_back().ok_or_else(|| {
            RuntimeError::new("<training data>", None, "a step needs at least one batch")
        })?;
        let sum_names = self.sum_names();
        // The sums so far: none (zeros) before the first micro-batch.
        let mut sums: Option<Vec<P::State>> = None;
        for batch in batches {
            let runner = self.accumulate.as_mut().ok_or_else(|| {
                RuntimeError::new(
                    "<artifact>",
                    Some("programs"),
                    "a step of several micro-batches needs the `accumulate` program",
                )
            })?;
            set_batch(runner, batch)?;
            set_sums(runner, &sum_names, &self.weights, sums.take())?;
            runner.run_with_weights(&mut self.params)?;
            sums = Some(take_each(&sum_names, |name| {
                runner.take_state_output(name)
            })?);
        }
        set_batch(&mut self.train, last)?;
        let accumulated = sums.is_some();
        set_sums(&mut self.train, &sum_names, &self.weights, sums)?;
        let o = &self.options;
        let values = [
            lr,
            o.beta1,
            o.beta2,
            o.eps,
            o.weight_decay,
            o.max_grad_norm.unwrap_or(f64::INFINITY),
            t as f64,
        ];
        for (name, value) in HYPERPARAMETERS.iter().zip(values) {
            self.train.set_input(name, scalar(value))?;
        }
        let moments = std::mem::take(&mut self.adam_m)
            .into_iter()
            .zip(std::mem::take(&mut self.adam_v));
        let max_loss = self.spike.max_loss(&self.options.spike);
        self.train.set_input("max_loss", scalar(max_loss))?;
        for (w, (m, v)) in self.weights.iter().zip(moments) {
            self.train.set_state(&format!("adam_m.{}", w.name), m)?;
            self.train.set_state(&format!("adam_v.{}", w.name), v)?;
        }
        let ran = self.train.run_with_weights(&mut self.params);
        for w in &self.weights {
            let m = self.train.take_state_input(&format!("adam_m.{}", w.name))?;
            let v = self.train.take_state_input(&format!("adam_v.{}", w.name))?;
            self.adam_m.push(m);
            self.adam_v.push(v);
        }
        ran?;
        if accumulated {
            // The sums are spent: free them now rather than at the next step's.
            take_each(&sum_names, |name| self.train.take_state_input(name))?;
        }
        let loss = self.train.scalar_output("loss")?;
        let grad_norm = self.train.scalar_output("grad_norm")?;
        let accepted = self.train.scalar_output("accepted")? == 1.0;
        let outcome = match accepted {
            true => {
                self.apply()?;
                self.step = t;
                self.spike.accept(&self.options.spike, loss);
                Outcome::Applied
            }
            false => match self.options.spike.policy {
                SpikePolicy::Skip => Outcome::Skipped(self.rejection(loss, grad_norm, max_loss)),
                SpikePolicy::Rollback => {
                    self.rollback()?;
                    Outcome::RolledBack(self.rejection(loss, grad_norm, max_loss))
                }
            },
        };
        Ok(StepReport {
            step: self.step,
            lr,
            loss,
            grad_norm,
            micro_batches,
            tokens,
            outcome,
        })
    }

    /// Why the step rejected itself: the detector's words, or (a loss at the limit, which
    /// the step tests in f32) the limit.
    fn rejection(&self, loss: f64, grad_norm: f64, max_loss: f64) -> String {
        let reason = self.spike.judge(&self.options.spike, loss, grad_norm);
        reason.unwrap_or_else(|| format!("the loss {loss:.4} is above the limit {max_loss:.4}"))
    }

    /// Swaps the step's new weights and moments in, where the step did not write them in
    /// place; the old storage holds the next step's.
    fn apply(&mut self) -> Result<()> {
        for (prefix, state) in [
            ("param.", &mut self.params),
            ("adam_m.", &mut self.adam_m),
            ("adam_v.", &mut self.adam_v),
        ] {
            let spent = std::mem::take(state);
            for (w, old) in self.weights.iter().zip(spent) {
                let name = format!("{prefix}{}", w.name);
                state.push(match self.train.replaces_in_place(&name) {
                    true => old,
                    false => self.train.swap_state_output(&name, old)?,
                });
            }
        }
        Ok(())
    }

    fn sum_names(&self) -> Vec<String> {
        ["loss_sum".to_string(), "token_count".to_string()]
            .into_iter()
            .chain(self.weights.iter().map(|w| format!("grad_sum.{}", w.name)))
            .collect()
    }

    /// Writes a checkpoint of the current state and the data position.
    pub fn save_checkpoint(&mut self, path: &Path, data: DataPosition) -> Result<()> {
        let state = Checkpoint {
            params: self.host(&self.params)?,
            adam_m: self.host(&self.adam_m)?,
            adam_v: self.host(&self.adam_v)?,
            step: self.step,
            data,
            recent_losses: self.spike.losses().collect(),
        };
        checkpoint::write(path, &self.weights, &state)?;
        self.last_checkpoint = Some(path.to_path_buf());
        Ok(())
    }

    /// Restores the state of checkpoint `path`; returns its data position.
    pub fn resume(&mut self, path: &Path) -> Result<DataPosition> {
        let state = checkpoint::read(path, &self.weights)?;
        let on_device = |tensors: Vec<Tensor>| -> Result<Vec<P::State>> {
            tensors
                .into_iter()
                .map(|t| self.train.to_state(t))
                .collect()
        };
        let (params, adam_m, adam_v) = (
            on_device(state.params)?,
            on_device(state.adam_m)?,
            on_device(state.adam_v)?,
        );
        self.params = params;
        self.adam_m = adam_m;
        self.adam_v = adam_v;
        self.step = state.step;
        self.spike = SpikeDetector::from_losses(state.recent_losses);
        self.last_checkpoint = Some(path.to_path_buf());
        Ok(state.data)
    }

    fn rollback(&mut self) -> Result<()> {
        let path = self.last_checkpoint.clone().ok_or_else(|| {
            RuntimeError::new(
                "<training options>",
                Some("spike-policy"),
                "a step was rejected, and rolling back needs a checkpoint written before it",
            )
        })?;
        self.resume(&path)?;
        Ok(())
    }
}

/// `take(name)` for each of `names`, in order.
fn take_each<S>(names: &[String], mut take: impl FnMut(&str) -> Result<S>) -> Result<Vec<S>> {
    names.iter().map(|name| take(name)).collect()
}

/// Sets the sums `names` a run adds to: `sums`, or zeros (of the scalar loss and token count,
/// then of each of `weights`) before the first micro-batch.
fn set_sums<P: TrainProgram>(
    runner: &mut P,
    names: &[String],
    weights: &[TensorDesc],
    sums: Option<Vec<P::State>>,
) -> Result<()> {
    let Some(sums) = sums else {
        let shapes = [&[][..], &[]]
            .into_iter()
            .chain(weights.iter().map(|w| &w.shape[..]));
        return names
            .iter()
            .zip(shapes)
            .try_for_each(|(name, shape)| runner.set_zeros(name, shape));
    };
    names
        .iter()
        .zip(sums)
        .try_for_each(|(name, value)| runner.set_state(name, value))
}

fn set_batch(runner: &mut impl TrainProgram, batch: Batch) -> Result<()> {
    runner.set_input("input_ids", batch.input_ids)?;
    runner.set_input("position_ids", batch.position_ids)?;
    runner.set_input("targets", batch.targets)
}
