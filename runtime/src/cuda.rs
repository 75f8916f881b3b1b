//! The CUDA executor (feature `cuda`): runs an artifact compiled for `sm_90` on the first GPU,
//! through cudarc with the driver loaded at run time.
//!
//! [`CudaModel::new`] checks that a driver and a device exist (a clear error otherwise, never a
//! panic), loads the artifact's PTX module, finds every step's entry and uploads the weights and
//! constants once. A [`CudaRunner`] runs one program: it binds the symbols from its inputs'
//! shapes (the CPU runner's rules), places the intermediates in one device arena at the offsets
//! the memory plan gives for those sizes (grown only when a larger plan needs more), uploads the
//! inputs, writes the buffer table and the symbol values to device memory — the two parameters of
//! every entry — and launches the steps in order on one stream, each with its manifest `Launch`
//! (a grid of zero blocks is an empty tensor and is skipped). Outputs stay on the device until
//! read, and an output can become an input without leaving it ([`DeviceTensor`]): the
//! decoding loop keeps the KV cache on the GPU this way.

use crate::artifact::Artifact;
use crate::error::{Result, RuntimeError};
use crate::executor::{bind_symbols, check_weights, host_input_slot, input_slot, program_error};
use crate::manifest::{BufferKind, Manifest, ProgramDesc};
use crate::memory_plan::{plan, Lifetime};
use crate::tensor::Tensor;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;

/// The largest grid launched; kernels walk their work by grid stride, so any grid computes it all.
const MAX_BLOCKS: i64 = 1 << 20;

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only probes whether the library can be opened.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn device_error(file: &str, what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::new(file, None, format!("{what}: {e}"))
}

pub struct CudaModel {
    manifest: Manifest,
    file: String,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    weights: Vec<CudaSlice<u8>>,
    constants: Vec<CudaSlice<u8>>,
}

/// A device copy of `bytes` (at least one byte: the driver refuses empty allocations).
fn upload(stream: &Arc<CudaStream>, bytes: &[u8], file: &str) -> Result<CudaSlice<u8>> {
    let copy = if bytes.is_empty() { &[0u8][..] } else { bytes };
    stream
        .clone_htod(copy)
        .map_err(|e| device_error(file, "copying to the GPU", e))
}

impl CudaModel {
    /// Loads a CUDA artifact on GPU 0 with `weights` (one per manifest entry, in order).
    pub fn new(artifact: Artifact, file: &str, weights: Vec<Tensor>) -> Result<CudaModel> {
        let constants: Vec<Vec<u8>> = artifact
            .constant_bytes(file)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let manifest = artifact.manifest;
        if !manifest.target.arch.starts_with("sm_") {
            return Err(RuntimeError::new(
                file,
                Some("target"),
                format!(
                    "compiled for {}, not for a GPU: compile with --target cuda",
                    manifest.target.arch
                ),
            ));
        }
        if !driver_present() {
            return Err(RuntimeError::new(
                file,
                None,
                "no CUDA driver found (libcuda.so): this machine cannot run a CUDA artifact",
            ));
        }
        check_weights(&manifest, file, &weights)?;
        let ctx = CudaContext::new(0).map_err(|e| device_error(file, "no usable GPU", e))?;
        let stream = ctx.default_stream();
        let ptx = String::from_utf8(artifact.object).map_err(|_| {
            RuntimeError::new(file, Some("object"), "the PTX module is not UTF-8 text")
        })?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| device_error(file, "loading the PTX module", e))?;
        let mut functions = HashMap::new();
        for step in manifest.programs.iter().flat_map(|p| &p.steps) {
            let f = module
                .load_function(&step.kernel)
                .map_err(|e| device_error(file, &format!("kernel `{}`", step.kernel), e))?;
            functions.insert(step.kernel.clone(), f);
        }
        let weights = weights
            .iter()
            .map(|w| upload(&stream, w.bytes(), file))
            .collect::<Result<_>>()?;
        let constants = constants
            .into_iter()
            .map(|bytes| upload(&stream, &bytes, file))
            .collect::<Result<_>>()?;
        Ok(CudaModel {
            manifest,
            file: file.to_string(),
            stream,
            functions,
            weights,
            constants,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Uploads new weights (a training step's results), checked against the manifest.
    pub fn set_weights(&mut self, weights: &[Tensor]) -> Result<()> {
        check_weights(&self.manifest, &self.file, weights)?;
        self.weights = weights
            .iter()
            .map(|w| upload(&self.stream, w.bytes(), &self.file))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// A runner for the program `name`.
    pub fn runner(&self, name: &str) -> Result<CudaRunner<'_>> {
        let desc = self.manifest.program(name).ok_or_else(|| {
            RuntimeError::new(&self.file, Some("programs"), format!("no program `{name}`"))
        })?;
        Ok(CudaRunner {
            model: self,
            desc,
            inputs: desc.inputs.iter().map(|_| None).collect(),
            arena: None,
            offsets: vec![0; desc.buffers.len()],
            planned: None,
            outputs: HashMap::new(),
            symbols: Vec::new(),
        })
    }
}

/// A tensor in device memory: an output of one run, to be an input of another.
pub struct DeviceTensor {
    slice: CudaSlice<u8>,
    dtype: crate::manifest::ElemType,
    shape: Vec<usize>,
}

/// An input of a runner: host data, uploaded at every run, or a device tensor read in place.
enum Input {
    Host(Tensor),
    Device(DeviceTensor),
}

impl Input {
    fn shape(&self) -> &[usize] {
        match self {
            Input::Host(t) => &t.shape,
            Input::Device(d) => &d.shape,
        }
    }
}

pub struct CudaRunner<'m> {
    model: &'m CudaModel,
    desc: &'m ProgramDesc,
    inputs: Vec<Option<Input>>,
    arena: Option<CudaSlice<u8>>,
    /// Byte offset of each intermediate in the arena, indexed by buffer.
    offsets: Vec<usize>,
    /// The symbols the offsets were planned for.
    planned: Option<Vec<i64>>,
    /// Each output buffer after a run, with its shape.
    outputs: HashMap<usize, (CudaSlice<u8>, Vec<usize>)>,
    symbols: Vec<i64>,
}

impl CudaRunner<'_> {
    /// Sets input `name` (checked as the CPU runner checks it).
    pub fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let vocab = self.model.manifest.model.vocab_size;
        let slot = host_input_slot(self.desc, vocab, name, &tensor)?;
        self.inputs[slot] = Some(Input::Host(tensor));
        Ok(())
    }

    /// Sets input `name` to a tensor already on the device (of the input's type and rank).
    pub fn set_device_input(&mut self, name: &str, tensor: DeviceTensor) -> Result<()> {
        let slot = input_slot(self.desc, name, tensor.dtype, &tensor.shape)?;
        self.inputs[slot] = Some(Input::Device(tensor));
        Ok(())
    }

    fn output_desc(&self, name: &str) -> Result<&'_ crate::manifest::IoDesc> {
        self.desc
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| self.fail(name, "no such output"))
    }

    /// Moves output `name` of the last run out, leaving it on the device.
    pub fn take_device_output(&mut self, name: &str) -> Result<DeviceTensor> {
        let io = self.output_desc(name)?.clone();
        let (slice, shape) = self
            .outputs
            .remove(&io.buffer)
            .ok_or_else(|| self.fail(name, "the program has not run, or the output was taken"))?;
        Ok(DeviceTensor {
            slice,
            dtype: io.dtype,
            shape,
        })
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> RuntimeError {
        program_error(self.desc, what, e.to_string())
    }

    /// Places the intermediates for `symbols` (a new plan, and a larger arena if it needs one).
    fn fit(&mut self, symbols: &[i64]) -> Result<()> {
        if self.planned.as_deref() == Some(symbols) {
            return Ok(());
        }
        let mut buffers = Vec::new();
        let mut lifetimes = Vec::new();
        for (b, d) in self.desc.buffers.iter().enumerate() {
            if let BufferKind::Intermediate { first, last } = d.kind {
                buffers.push(b);
                let numel = d.numel.eval(symbols).max(0) as usize;
                lifetimes.push(Lifetime {
                    first,
                    last,
                    bytes: numel * d.dtype.size(),
                });
            }
        }
        let p = plan(&lifetimes);
        for (&b, offset) in buffers.iter().zip(p.offsets) {
            self.offsets[b] = offset;
        }
        let have = self.arena.as_ref().map_or(0, |a| a.len());
        if p.bytes > have {
            let stream = &self.model.stream;
            let arena = stream
                .alloc_zeros::<u8>(p.bytes.max(1))
                .map_err(|e| self.fail("arena", e))?;
            self.arena = Some(arena);
        }
        self.planned = Some(symbols.to_vec());
        Ok(())
    }

    /// Runs the program on the inputs set; waits for the GPU to finish.
    pub fn run(&mut self) -> Result<()> {
        let shapes: Vec<Option<&[usize]>> = self
            .inputs
            .iter()
            .map(|i| i.as_ref().map(Input::shape))
            .collect();
        let symbols = bind_symbols(self.desc, &shapes)?;
        self.fit(&symbols)?;
        let model = self.model;
        let stream = &model.stream;
        let file = &model.file;
        let uploaded: Vec<Option<CudaSlice<u8>>> = self
            .inputs
            .iter()
            .map(|i| match i {
                Some(Input::Host(t)) => upload(stream, t.bytes(), file).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let inputs: Vec<&CudaSlice<u8>> = self
            .inputs
            .iter()
            .zip(&uploaded)
            .map(|(i, up)| match (i, up) {
                (Some(Input::Device(d)), _) => &d.slice,
                (_, Some(slice)) => slice,
                _ => unreachable!("every input is bound"),
            })
            .collect();
        let mut outputs = HashMap::new();
        for io in &self.desc.outputs {
            let shape: Vec<usize> = io.shape.iter().map(|d| d.eval(&symbols) as usize).collect();
            let bytes = shape.iter().product::<usize>() * io.dtype.size();
            let slice = stream
                .alloc_zeros::<u8>(bytes.max(1))
                .map_err(|e| self.fail(&io.name, e))?;
            outputs.insert(io.buffer, (slice, shape));
        }
        let address = |slice: &CudaSlice<u8>| slice.device_ptr(stream).0;
        let arena = self.arena.as_ref().map_or(0, address);
        let table: Vec<u64> = self
            .desc
            .buffers
            .iter()
            .enumerate()
            .map(|(b, d)| match d.kind {
                BufferKind::Input(i) => address(inputs[i]),
                BufferKind::Weight(i) => address(&model.weights[i]),
                BufferKind::Constant(i) => address(&model.constants[i]),
                BufferKind::Temp => address(&outputs[&b].0),
                BufferKind::Intermediate { .. } => arena + self.offsets[b] as u64,
            })
            .collect();
        let table = stream
            .clone_htod(&table)
            .map_err(|e| self.fail("buffers", e))?;
        let values: &[i64] = if symbols.is_empty() { &[0] } else { &symbols };
        let values = stream
            .clone_htod(values)
            .map_err(|e| self.fail("symbols", e))?;
        for step in &self.desc.steps {
            let launch = step.launch.as_ref().ok_or_else(|| {
                self.fail(
                    &step.kernel,
                    "the step has no GPU launch: not a CUDA artifact",
                )
            })?;
            let blocks: i64 = launch.blocks.iter().map(|f| f.count(&symbols)).product();
            if blocks <= 0 {
                continue;
            }
            let config = LaunchConfig {
                grid_dim: (blocks.min(MAX_BLOCKS) as u32, 1, 1),
                block_dim: (launch.threads, 1, 1),
                shared_mem_bytes: 0,
            };
            let function = &model.functions[&step.kernel];
            let mut builder = stream.launch_builder(function);
            builder.arg(&table).arg(&values);
            // SAFETY: the entry takes the two table pointers of the manifest's ABI; the tables
            // hold live device buffers sized for these symbols.
            unsafe { builder.launch(config) }.map_err(|e| self.fail(&step.kernel, e))?;
        }
        stream.synchronize().map_err(|e| self.fail("run", e))?;
        self.outputs = outputs;
        self.symbols = symbols;
        Ok(())
    }

    /// The names of the program's outputs.
    pub fn output_names(&self) -> Vec<String> {
        self.desc.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// Output `name` of the last run, copied to the host.
    pub fn output(&self, name: &str) -> Result<Tensor> {
        let io = self.output_desc(name)?;
        let (slice, shape) = self
            .outputs
            .get(&io.buffer)
            .ok_or_else(|| self.fail(name, "the program has not run"))?;
        let bytes = self
            .model
            .stream
            .clone_dtoh(slice)
            .map_err(|e| self.fail(name, e))?;
        let len = shape.iter().product::<usize>() * io.dtype.size();
        Ok(Tensor::from_bytes(io.dtype, shape, &bytes[..len]))
    }
}

impl crate::generate::DecodeProgram for CudaRunner<'_> {
    type Cache = DeviceTensor;

    fn input_names(&self) -> Vec<String> {
        self.desc.inputs.iter().map(|i| i.name.clone()).collect()
    }

    fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        CudaRunner::set_input(self, name, tensor)
    }

    fn run(&mut self) -> Result<()> {
        CudaRunner::run(self)
    }

    fn host_output(&self, name: &str) -> Result<std::borrow::Cow<'_, Tensor>> {
        self.output(name).map(std::borrow::Cow::Owned)
    }

    fn take_cache(&mut self, name: &str) -> Result<DeviceTensor> {
        self.take_device_output(name)
    }

    fn set_cache(&mut self, name: &str, cache: DeviceTensor) -> Result<()> {
        self.set_device_input(name, cache)
    }

    fn feed_back(&mut self, input: &str, output: &str) -> Result<()> {
        let grown = self.take_device_output(output)?;
        self.set_device_input(input, grown)
    }
}

impl<'m> crate::generate::Generator<CudaRunner<'m>> {
    /// Decoding on the GPU: the caches stay on the device between steps.
    pub fn on_gpu(model: &'m CudaModel) -> Result<Self> {
        Ok(crate::generate::Generator::from_runners(
            model.runner("prefill")?,
            model.runner("decode")?,
        ))
    }
}
