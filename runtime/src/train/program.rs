//! [`TrainProgram`]: what the trainer needs of a runner of `train_step` or `accumulate`, so one
//! trainer drives the CPU's [`Runner`] (state in host tensors) and the GPU's runner (state —
//! weights, AdamW moments, gradient sums — kept on the device between steps; only the batch and
//! the hyperparameters go in, and only the loss and the gradient norm come out).

use crate::error::Result;
use crate::executor::Runner;
use crate::manifest::ElemType;
use crate::profile::Profiled;
use crate::tensor::Tensor;
use std::borrow::Cow;

pub trait TrainProgram: Profiled {
    /// A tensor of the training state between runs: a host tensor or a device buffer.
    type State;
    /// `tensor` as state (on the runner's device).
    fn to_state(&self, tensor: Tensor) -> Result<Self::State>;
    /// `state` on the host (borrowed where it already is there).
    fn to_host<'s>(&self, state: &'s Self::State) -> Result<Cow<'s, Tensor>>;
    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()>;
    fn set_state(&mut self, name: &str, state: Self::State) -> Result<()>;
    /// Sets f32 input `name` to zeros of `shape` (kept on the runner's device, where it may
    /// share them among inputs).
    fn set_zeros(&mut self, name: &str, shape: &[usize]) -> Result<()>;
    /// Moves input `name` back out after a run.
    fn take_state_input(&mut self, name: &str) -> Result<Self::State>;
    /// Moves output `name` of the last run out.
    fn take_state_output(&mut self, name: &str) -> Result<Self::State>;
    /// Moves output `name` of the last run out; `spent` becomes its storage for the next run.
    fn swap_state_output(&mut self, name: &str, spent: Self::State) -> Result<Self::State>;
    /// Runs with `weights` (one per manifest entry) in place of the model's; outputs that
    /// replace weights in place ([`Self::replaces_in_place`]) are left in them.
    fn run_with_weights(&mut self, weights: &mut [Self::State]) -> Result<()>;
    /// The single value of f32 output `name` of the last run.
    fn scalar_output(&self, name: &str) -> Result<f64>;
    /// Bytes of the arena holding the intermediates.
    fn arena_bytes(&self) -> usize;
    /// Whether output `output` is written over the value it replaces (a weight, or the input
    /// of its name), so a run leaves it there (see [`crate::manifest`]).
    fn replaces_in_place(&self, output: &str) -> bool;
}

impl TrainProgram for Runner<'_> {
    type State = Tensor;

    fn to_state(&self, tensor: Tensor) -> Result<Tensor> {
        Ok(tensor)
    }

    fn to_host<'s>(&self, state: &'s Tensor) -> Result<Cow<'s, Tensor>> {
        Ok(Cow::Borrowed(state))
    }

    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        Runner::set_input(self, name, tensor)
    }

    fn set_state(&mut self, name: &str, state: Tensor) -> Result<()> {
        Runner::set_input(self, name, state)
    }

    /// The tensor the input held, cleared, where it fits (a steady run allocates nothing).
    fn set_zeros(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let zeros = match self.take_input(name) {
            Ok(mut held) if held.shape == shape && held.dtype == ElemType::F32 => {
                held.bytes_mut().fill(0);
                held
            }
            _ => Tensor::zeros(ElemType::F32, shape),
        };
        Runner::set_input(self, name, zeros)
    }

    fn take_state_input(&mut self, name: &str) -> Result<Tensor> {
        self.take_input(name)
    }

    fn take_state_output(&mut self, name: &str) -> Result<Tensor> {
        self.take_output(name)
    }

    fn swap_state_output(&mut self, name: &str, spent: Tensor) -> Result<Tensor> {
        self.swap_output(name, spent)
    }

    fn run_with_weights(&mut self, weights: &mut [Tensor]) -> Result<()> {
        Runner::run_with_weights(self, weights)
    }

    fn scalar_output(&self, name: &str) -> Result<f64> {
        Ok(self.output(name)?.as_f32()[0] as f64)
    }

    fn arena_bytes(&self) -> usize {
        Runner::arena_bytes(self)
    }

    /// Never: the CPU runner refuses such programs.
    fn replaces_in_place(&self, _output: &str) -> bool {
        false
    }
}
