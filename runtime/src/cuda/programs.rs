//! The GPU runner as the decoding loop's [`DecodeProgram`] and the trainer's [`TrainProgram`]:
//! caches and training state stay on the device, and the buffers a loop hands back are reused
//! for the next run's outputs.

use super::{CudaModel, CudaRunner, DeviceTensor};
use crate::error::Result;
use crate::generate::{DecodeProgram, Generator};
use crate::manifest::ProgramDesc;
use crate::profile::Profiled;
use crate::tensor::Tensor;
use crate::train::{TrainOptions, TrainProgram, Trainer};
use std::borrow::Cow;
use std::time::Duration;

impl Profiled for CudaRunner<'_> {
    fn desc(&self) -> &ProgramDesc {
        CudaRunner::desc(self)
    }

    fn set_profiling(&mut self, on: bool) {
        CudaRunner::set_profiling(self, on)
    }

    fn profile(&self) -> Option<&[Duration]> {
        CudaRunner::profile(self)
    }
}

impl DecodeProgram for CudaRunner<'_> {
    type Cache = DeviceTensor;

    fn input_names(&self) -> Vec<String> {
        self.desc().inputs.iter().map(|i| i.name.clone()).collect()
    }

    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        CudaRunner::set_input(self, name, tensor)
    }

    fn run(&mut self) -> Result<()> {
        CudaRunner::run(self)
    }

    fn host_output(&self, name: &str) -> Result<Cow<'_, Tensor>> {
        self.output(name).map(Cow::Owned)
    }

    fn take_cache(&mut self, name: &str) -> Result<DeviceTensor> {
        self.take_device_output(name)
    }

    fn set_cache(&mut self, name: &str, cache: DeviceTensor) -> Result<()> {
        self.set_device_input(name, cache)
    }

    /// See [`CudaRunner::feed_back`]: a cache appended in place only grows; another becomes
    /// the input, and the cache the run read the storage of the next run's output.
    fn feed_back(&mut self, input: &str, output: &str) -> Result<()> {
        CudaRunner::feed_back(self, input, output)
    }
}

impl<'m> Generator<CudaRunner<'m>> {
    /// Decoding on the GPU: the caches stay on the device between steps; with `graphs`, each
    /// decode step replays a captured CUDA graph.
    pub fn on_gpu(model: &'m CudaModel, graphs: bool) -> Result<Self> {
        let mut decode = model.runner("decode")?;
        decode.use_graphs(graphs);
        Ok(Generator::from_runners(model.runner("prefill")?, decode))
    }
}

impl TrainProgram for CudaRunner<'_> {
    type State = DeviceTensor;

    fn to_state(&self, tensor: Tensor) -> Result<DeviceTensor> {
        self.model().upload(tensor)
    }

    fn to_host<'s>(&self, state: &'s DeviceTensor) -> Result<Cow<'s, Tensor>> {
        self.model().download(state).map(Cow::Owned)
    }

    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        CudaRunner::set_input(self, name, tensor)
    }

    fn set_state(&mut self, name: &str, state: DeviceTensor) -> Result<()> {
        self.set_device_input(name, state)
    }

    fn set_zeros(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        CudaRunner::set_zeros(self, name, shape)
    }

    fn take_state_input(&mut self, name: &str) -> Result<DeviceTensor> {
        self.take_device_input(name)
    }

    fn take_state_output(&mut self, name: &str) -> Result<DeviceTensor> {
        self.take_device_output(name)
    }

    fn swap_state_output(&mut self, name: &str, spent: DeviceTensor) -> Result<DeviceTensor> {
        let out = self.take_device_output(name)?;
        self.recycle_output(name, spent)?;
        Ok(out)
    }

    fn run_with_weights(&mut self, weights: &mut [DeviceTensor]) -> Result<()> {
        CudaRunner::run_with_weights(self, weights)
    }

    fn scalar_output(&self, name: &str) -> Result<f64> {
        Ok(self.output(name)?.as_f32()[0] as f64)
    }

    fn arena_bytes(&self) -> usize {
        CudaRunner::arena_bytes(self)
    }

    fn replaces_in_place(&self, output: &str) -> bool {
        self.desc().replaces_in_place(output)
    }
}

impl<'m> Trainer<CudaRunner<'m>> {
    /// A trainer on the GPU of `model`'s programs, starting from `params` (those
    /// [`CudaModel::take_weights`] returned); the state stays on the device, and each step
    /// replays CUDA graphs.
    pub fn on_gpu(
        model: &'m CudaModel,
        params: Vec<DeviceTensor>,
        options: TrainOptions,
    ) -> Result<Self> {
        let mut train = model.runner("train_step")?;
        train.use_graphs(true);
        let accumulate = match model.runner("accumulate") {
            Ok(mut runner) => {
                runner.use_graphs(true);
                Some(runner)
            }
            Err(_) => None,
        };
        Trainer::from_runners(
            train,
            accumulate,
            &model.manifest().weights,
            params,
            options,
        )
    }
}
