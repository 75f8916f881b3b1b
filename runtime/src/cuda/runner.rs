//! [`CudaRunner`]: runs one program of a [`CudaModel`] on the GPU.
//!
//! A run binds the symbols from the inputs' shapes (the CPU runner's rules), places the
//! intermediates in one device arena at the offsets the memory plan gives for those sizes (grown
//! only when a larger plan needs more), copies host inputs into device buffers kept per input,
//! writes the buffer table (each step's buffers in its kernel's order, `launch.rs`) and the
//! symbol values into two device tables kept for the runner's life — every entry's two
//! parameters point into them — and launches the steps on the model's stream
//! (`launch.rs`), then waits for them. Output buffers are allocated with room to grow and reused:
//! a run writes into the buffers of the previous run's outputs that were not taken, and into
//! those handed back (a fed-back cache, a swapped training state), so a steady decode or
//! training loop allocates nothing. Kernels write every element of an output, so reused buffers
//! need no clearing.
//!
//! An input with a capacity (see [`crate::manifest`]) lives in a device buffer at that capacity,
//! kept for the runner's life: host data is laid out on the host and uploaded, a dense device
//! tensor (prefill's cache) is copied in by one strided copy (`stored.rs`). An output sharing
//! that buffer is appended in place by the run; [`CudaRunner::feed_back`] only grows the input's
//! logical length, so the buffer's address — which the buffer table and any captured CUDA graph
//! hold — never changes during a generation, and reading such an output copies it out dense.
//!
//! An output written over the value it replaces (a training step's weights and moments, see
//! [`crate::manifest`]) takes no buffer of its own: the run leaves it in the replaced input's
//! buffer, where [`CudaRunner::take_device_input`] hands it back, or in the weight passed to
//! [`CudaRunner::run_with_weights`].

use super::gemm_call::{self, Call};
use super::launch::{grids, Kernels, Launcher, Work};
use super::{device_error, stored, CudaModel, DeviceTensor};
use crate::capacity::{self as layout, Blocks};
use crate::error::{Result, RuntimeError};
use crate::executor::{
    aliased, bind_symbols, check_weights, host_input_slot, input_slot, program_error,
    unset_defaults,
};
use crate::manifest::{BufferKind, IoDesc, ProgramDesc, Replaced};
use crate::memory_plan::{plan, Lifetime};
use crate::tensor::Tensor;
use cudarc::driver::{CudaSlice, DevicePtr};
use std::collections::HashMap;

/// An input of a runner: host data, copied in at every run, a device tensor read in place, a
/// buffer at the input's capacity holding `shape` (a cache appended in place), or zeros of
/// `shape` (read from the runner's zero buffer).
enum Input {
    Host(Tensor),
    Device(DeviceTensor),
    Stored {
        slice: CudaSlice<u8>,
        shape: Vec<usize>,
    },
    Zeros(Vec<usize>),
}

impl Input {
    fn shape(&self) -> &[usize] {
        match self {
            Input::Host(t) => &t.shape,
            Input::Device(d) => &d.shape,
            Input::Stored { shape, .. } | Input::Zeros(shape) => shape,
        }
    }
}

/// Bytes to allocate for a buffer of `bytes`: rounded up to an eighth of the next power of two,
/// so a tensor that grows a little per run (a KV cache) keeps its buffer for many runs.
fn capacity(bytes: usize) -> usize {
    let quantum = (bytes.next_power_of_two() / 8).max(256);
    bytes.div_ceil(quantum).max(1) * quantum
}

pub struct CudaRunner<'m> {
    model: &'m CudaModel,
    desc: &'m ProgramDesc,
    kernels: Kernels,
    launcher: Launcher,
    /// Whether steps replay from CUDA graphs when not profiled ([`CudaRunner::use_graphs`]).
    graphs: bool,
    inputs: Vec<Option<Input>>,
    /// The device buffer each host input is copied into.
    staged: Vec<Option<CudaSlice<u8>>>,
    arena: Option<CudaSlice<u8>>,
    /// Byte offset of each intermediate in the arena, indexed by buffer.
    offsets: Vec<usize>,
    /// The symbols the offsets were planned for.
    planned: Option<Vec<i64>>,
    /// Each output of the last run, by buffer.
    outputs: HashMap<usize, DeviceTensor>,
    /// Buffers free for the next run's outputs, by buffer.
    spare: HashMap<usize, CudaSlice<u8>>,
    /// Zeros for the inputs set to zeros, as long as the longest of them: they read it, and
    /// nothing writes it.
    zeros: Option<CudaSlice<u8>>,
    /// The buffer table and the symbol values the entries read.
    tables: Option<(CudaSlice<u64>, CudaSlice<i64>)>,
    /// The symbols of the last run, while the outputs appended to inputs' buffers hold its
    /// result (setting such an input again replaces it).
    appended: Option<Vec<i64>>,
    /// Steps of the last run that went to the GEMM library.
    library_steps: usize,
}

impl<'m> CudaRunner<'m> {
    pub(super) fn new(model: &'m CudaModel, desc: &'m ProgramDesc) -> Result<CudaRunner<'m>> {
        let mut functions = Vec::new();
        let mut launches = Vec::new();
        for step in &desc.steps {
            let launch = step.launch.clone().ok_or_else(|| {
                program_error(
                    desc,
                    &step.kernel,
                    "the step has no GPU launch: not a CUDA artifact".into(),
                )
            })?;
            functions.push(model.functions[&step.kernel].clone());
            launches.push(launch);
        }
        Ok(CudaRunner {
            model,
            desc,
            kernels: Kernels::new(functions, launches),
            launcher: Launcher::new(false),
            graphs: false,
            inputs: desc.inputs.iter().map(|_| None).collect(),
            staged: desc.inputs.iter().map(|_| None).collect(),
            arena: None,
            offsets: vec![0; desc.buffers.len()],
            planned: None,
            outputs: HashMap::new(),
            spare: HashMap::new(),
            zeros: None,
            tables: None,
            appended: None,
            library_steps: 0,
        })
    }

    /// Replays the steps from CUDA graphs, captured once per list of grids (see `launch.rs`),
    /// instead of launching every kernel from the host (once profiling is off, where it is on).
    pub fn use_graphs(&mut self, on: bool) {
        self.graphs = on;
        if self.launcher.profile().is_none() && on != self.launcher.graphs() {
            self.launcher = Launcher::new(on);
        }
    }

    /// Times every step while `on` (launched one by one, without graphs); off, steps launch
    /// as [`CudaRunner::use_graphs`] chose.
    pub fn set_profiling(&mut self, on: bool) {
        self.launcher = match on {
            true => Launcher::profiling(self.desc.steps.len()),
            false => Launcher::new(self.graphs),
        };
    }

    /// Whether the next run replays its steps from CUDA graphs.
    pub fn replays_graphs(&self) -> bool {
        self.launcher.graphs()
    }

    /// Each step's GPU time since profiling started.
    pub fn profile(&self) -> Option<&[std::time::Duration]> {
        self.launcher.profile()
    }

    /// Sets input `name` (checked as the CPU runner checks it); an input with a capacity is
    /// laid out at its capacity and uploaded into the runner's buffer for it.
    pub fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let vocab = self.model.manifest.model.vocab_size;
        let slot = host_input_slot(self.desc, vocab, name, &tensor)?;
        let Some(blocks) = self.blocks_of_input(slot, &tensor.shape)? else {
            self.inputs[slot] = Some(Input::Host(tensor));
            return Ok(());
        };
        let mut bytes = vec![0u8; blocks.count * blocks.pitch];
        layout::store(tensor.bytes(), blocks, &mut bytes);
        let mut slice = self.storage(slot, bytes.len())?;
        if !bytes.is_empty() {
            let copied = self.model.stream.memcpy_htod(&bytes, &mut slice);
            copied.map_err(|e| device_error(&self.model.file, "copying an input", e))?;
        }
        self.inputs[slot] = Some(Input::Stored {
            slice,
            shape: tensor.shape,
        });
        Ok(())
    }

    /// Sets input `name` to a tensor already on the device (of the input's type and rank); an
    /// input with a capacity is copied into the runner's buffer for it.
    pub fn set_device_input(&mut self, name: &str, tensor: DeviceTensor) -> Result<()> {
        let slot = input_slot(self.desc, name, tensor.dtype, &tensor.shape)?;
        let Some(blocks) = self.blocks_of_input(slot, &tensor.shape)? else {
            self.inputs[slot] = Some(Input::Device(tensor));
            return Ok(());
        };
        let mut slice = self.storage(slot, blocks.count * blocks.pitch)?;
        stored::store(&self.model.stream, &tensor.slice, &mut slice, blocks)
            .map_err(|e| self.fail(name, e))?;
        self.inputs[slot] = Some(Input::Stored {
            slice,
            shape: tensor.shape,
        });
        Ok(())
    }

    /// Sets input `name` to zeros of `shape` (a training step's gradient sums before its first
    /// micro-batch): every such input reads one zero buffer of the runner's, so they take the
    /// memory of the largest alone. An input that an output is written into cannot read zeros.
    pub fn set_zeros(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let io = self.desc.inputs.iter().find(|i| i.name == name);
        let dtype = io.map_or(crate::manifest::ElemType::F32, |i| i.dtype);
        let slot = input_slot(self.desc, name, dtype, shape)?;
        let written = self
            .desc
            .outputs
            .iter()
            .any(|o| o.buffer == self.desc.inputs[slot].buffer);
        if written {
            return Err(self.fail(
                name,
                "is written by the program: it cannot read shared zeros",
            ));
        }
        let bytes = (shape.iter().product::<usize>() * dtype.size()).max(1);
        if self.zeros.as_ref().is_none_or(|z| z.len() < bytes) {
            let fresh = self.model.stream.alloc_zeros::<u8>(bytes);
            let fresh = fresh.map_err(|e| device_error(&self.model.file, "allocating zeros", e))?;
            self.zeros = Some(fresh);
        }
        self.inputs[slot] = Some(Input::Zeros(shape.to_vec()));
        Ok(())
    }

    /// The blocks of a value of `shape` for input `slot` at its capacity (`None`: the input is
    /// dense), after checking that the value fits; the appended outputs lose their result.
    fn blocks_of_input(&mut self, slot: usize, shape: &[usize]) -> Result<Option<Blocks>> {
        let io = &self.desc.inputs[slot];
        let Some(capacity) = io.capacity else {
            return Ok(None);
        };
        capacity.check(self.desc, &io.name, shape)?;
        self.appended = None;
        Ok(Some(capacity.blocks(shape, io.dtype.size())))
    }

    /// The device buffer of input `slot` at its capacity, `bytes` long at least: the one it
    /// holds when large enough, else a new one.
    fn storage(&mut self, slot: usize, bytes: usize) -> Result<CudaSlice<u8>> {
        match self.inputs[slot].take() {
            Some(Input::Stored { slice, .. }) if slice.len() >= bytes.max(1) => Ok(slice),
            _ => self
                .model
                .stream
                .alloc_zeros::<u8>(bytes.max(1))
                .map_err(|e| device_error(&self.model.file, "allocating an input", e)),
        }
    }

    /// A dense device copy of the tensor of `shape` stored at `capacity` in `slice`.
    fn dense_copy(
        &self,
        name: &str,
        slice: &CudaSlice<u8>,
        io: &IoDesc,
        shape: Vec<usize>,
    ) -> Result<DeviceTensor> {
        let capacity = io
            .capacity
            .expect("only inputs and outputs at capacity are stored");
        let blocks = capacity.blocks(&shape, io.dtype.size());
        let stream = &self.model.stream;
        let mut dense = stream
            .alloc_zeros::<u8>((blocks.count * blocks.dense).max(1))
            .map_err(|e| self.fail(name, e))?;
        stored::load(stream, slice, &mut dense, blocks).map_err(|e| self.fail(name, e))?;
        Ok(DeviceTensor {
            slice: dense,
            dtype: io.dtype,
            shape,
        })
    }

    /// Moves input `name` out: a device input as it is, a host input copied to the device, an
    /// input at capacity copied out dense.
    pub fn take_device_input(&mut self, name: &str) -> Result<DeviceTensor> {
        let slot = self
            .desc
            .inputs
            .iter()
            .position(|i| i.name == name)
            .ok_or_else(|| self.fail(name, "no such input"))?;
        match self.inputs[slot].take() {
            Some(Input::Device(d)) => Ok(d),
            Some(Input::Host(t)) => self.model.upload(t),
            Some(Input::Stored { slice, shape }) => {
                self.dense_copy(name, &slice, &self.desc.inputs[slot], shape)
            }
            Some(Input::Zeros(_)) | None => {
                Err(self.fail(name, "the input is not set to a tensor"))
            }
        }
    }

    fn output_desc(&self, name: &str) -> Result<&'m IoDesc> {
        self.desc
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| self.fail(name, "no such output"))
    }

    /// Moves output `name` of the last run out, leaving it on the device; an output appended
    /// to an input's buffer is copied out dense; an output written over an input is that
    /// input's buffer, moved out (the input must be set again before the next run).
    pub fn take_device_output(&mut self, name: &str) -> Result<DeviceTensor> {
        let io = self.output_desc(name)?;
        match self.desc.replaced(io) {
            Some(Replaced::Input(i)) if self.appended.is_some() => {
                return match (self.inputs[i].take(), self.staged[i].take()) {
                    (Some(Input::Device(d)), _) => Ok(d),
                    (Some(Input::Host(t)), Some(slice)) => Ok(DeviceTensor {
                        slice,
                        dtype: io.dtype,
                        shape: t.shape,
                    }),
                    _ => Err(self.fail(name, self.not_held(io))),
                };
            }
            Some(_) => return Err(self.fail(name, self.not_held(io))),
            None => {}
        }
        if let Some((slice, shape)) = self.appended_output(io)? {
            return self.dense_copy(name, slice, io, shape);
        }
        self.outputs
            .remove(&io.buffer)
            .ok_or_else(|| self.fail(name, "the program has not run, or the output was taken"))
    }

    /// The buffer and logical shape of output `io` when it is appended to an input's buffer;
    /// `None` for an output of its own.
    fn appended_output(&self, io: &IoDesc) -> Result<Option<(&CudaSlice<u8>, Vec<usize>)>> {
        let Some((input, _)) = aliased(self.desc, io)? else {
            return Ok(None);
        };
        match (&self.inputs[input], &self.appended) {
            (Some(Input::Stored { slice, .. }), Some(symbols)) => {
                let shape = io.shape.iter().map(|d| d.eval(symbols) as usize).collect();
                Ok(Some((slice, shape)))
            }
            _ => Err(self.fail(&io.name, "the program has not run")),
        }
    }

    /// Why output `io`, written over an input or a weight, is not in the runner's hands.
    fn not_held(&self, io: &IoDesc) -> String {
        match self.desc.replaced(io) {
            Some(Replaced::Weight(w)) => format!(
                "is written in place over weight `{}`, passed to the run",
                self.model.manifest.weights[w].name
            ),
            _ => "the program has not run, or the output was taken".into(),
        }
    }

    /// Hands `storage` back as the buffer of output `name` for the next run.
    pub fn recycle_output(&mut self, name: &str, storage: DeviceTensor) -> Result<()> {
        let io = self.output_desc(name)?;
        if aliased(self.desc, io)?.is_some() || self.desc.replaced(io).is_some() {
            let message = "shares the buffer of an input or a weight: it takes no storage";
            return Err(self.fail(name, message));
        }
        self.spare.insert(io.buffer, storage.slice);
        Ok(())
    }

    /// Makes output `output` of the last run the next run's input `input`: an output appended
    /// to the input's buffer only grows the input's logical length (no copy, and the buffer's
    /// address stays); any other moves on the device, and the input's old buffer holds the
    /// next run's output.
    pub fn feed_back(&mut self, input: &str, output: &str) -> Result<()> {
        let io = self.output_desc(output)?;
        let Some((index, _)) = aliased(self.desc, io)? else {
            let spent = self.take_device_input(input)?;
            let grown = self.take_device_output(output)?;
            self.recycle_output(output, spent)?;
            return self.set_device_input(input, grown);
        };
        if self.desc.inputs[index].name != input {
            let shared = &self.desc.inputs[index].name;
            let message = format!("shares its buffer with input `{shared}`, not `{input}`");
            return Err(self.fail(output, message));
        }
        let (_, grown) = self.appended_output(io)?.expect("an aliased output");
        match &mut self.inputs[index] {
            Some(Input::Stored { shape, .. }) => *shape = grown,
            _ => unreachable!("appended_output found the input stored"),
        }
        Ok(())
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> RuntimeError {
        program_error(self.desc, what, e.to_string())
    }

    /// How many steps of the last run went to the GEMM library.
    pub fn library_steps(&self) -> usize {
        self.library_steps
    }

    /// Bytes of the arena holding the intermediates.
    pub fn arena_bytes(&self) -> usize {
        self.arena.as_ref().map_or(0, CudaSlice::len)
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
        if p.bytes > self.arena_bytes() {
            let arena = self
                .model
                .stream
                .alloc_zeros::<u8>(p.bytes.max(1))
                .map_err(|e| self.fail("arena", e))?;
            self.arena = Some(arena);
        }
        self.planned = Some(symbols.to_vec());
        Ok(())
    }

    /// Copies the host inputs into their device buffers (reused while large enough).
    fn stage_inputs(&mut self) -> Result<()> {
        let stream = &self.model.stream;
        for (input, staged) in self.inputs.iter().zip(&mut self.staged) {
            let Some(Input::Host(t)) = input else {
                continue;
            };
            let bytes = t.bytes();
            if staged.as_ref().is_none_or(|s| s.len() < bytes.len().max(1)) {
                let fresh = stream
                    .alloc_zeros::<u8>(capacity(bytes.len()))
                    .map_err(|e| device_error(&self.model.file, "allocating an input", e))?;
                *staged = Some(fresh);
            }
            if let Some(slice) = staged.as_mut().filter(|_| !bytes.is_empty()) {
                stream
                    .memcpy_htod(bytes, slice)
                    .map_err(|e| device_error(&self.model.file, "copying an input", e))?;
            }
        }
        Ok(())
    }

    /// Buffers for this run's outputs: the spare ones where large enough, else new.
    fn place_outputs(&mut self, symbols: &[i64]) -> Result<HashMap<usize, DeviceTensor>> {
        for (b, spent) in self.outputs.drain() {
            self.spare.insert(b, spent.slice);
        }
        let mut outputs = HashMap::new();
        for io in &self.desc.outputs {
            if aliased(self.desc, io)?.is_some() || self.desc.replaced(io).is_some() {
                continue;
            }
            let shape: Vec<usize> = io.shape.iter().map(|d| d.eval(symbols) as usize).collect();
            let bytes = shape.iter().product::<usize>() * io.dtype.size();
            let slice = match self.spare.remove(&io.buffer) {
                Some(s) if s.len() >= bytes.max(1) => s,
                _ => self
                    .model
                    .stream
                    .alloc_zeros::<u8>(capacity(bytes))
                    .map_err(|e| self.fail(&io.name, e))?,
            };
            let tensor = DeviceTensor {
                slice,
                dtype: io.dtype,
                shape,
            };
            outputs.insert(io.buffer, tensor);
        }
        Ok(outputs)
    }

    /// Runs the program on the inputs set, with the model's weights; waits for the GPU. A
    /// program that writes over its weights (a training step) runs only with weights of the
    /// caller's.
    pub fn run(&mut self) -> Result<()> {
        if self.model.weights.len() != self.model.manifest.weights.len() {
            return Err(self.fail(
                "weights",
                "the model's weights were moved out: pass them to `run_with_weights`",
            ));
        }
        let writes_weights = self
            .desc
            .outputs
            .iter()
            .find(|o| matches!(self.desc.replaced(o), Some(Replaced::Weight(_))));
        if let Some(o) = writes_weights {
            let message = "is written over its weight in place: run with `run_with_weights`";
            return Err(self.fail(&o.name, message));
        }
        self.run_on(None)
    }

    /// Runs the program with `weights` in place of the model's (one per manifest entry, each of
    /// its dtype and shape); waits for the GPU. Outputs that replace weights (a training step's
    /// `param.NAME`) are left in `weights`.
    pub fn run_with_weights(&mut self, weights: &mut [DeviceTensor]) -> Result<()> {
        check_weights(&self.model.manifest, &self.model.file, weights)?;
        self.run_on(Some(weights))
    }

    /// The shape of each input set (`None`: not set), in the program's order.
    fn input_shapes(&self) -> Vec<Option<&[usize]>> {
        self.inputs
            .iter()
            .map(|i| i.as_ref().map(Input::shape))
            .collect()
    }

    fn run_on(&mut self, weights: Option<&[DeviceTensor]>) -> Result<()> {
        self.appended = None;
        for (name, zeros) in unset_defaults(self.desc, &self.input_shapes())? {
            self.set_input(&name, zeros)?;
        }
        let symbols = bind_symbols(self.desc, &self.input_shapes())?;
        self.fit(&symbols)?;
        self.stage_inputs()?;
        let outputs = self.place_outputs(&symbols)?;
        let model = self.model;
        let stream = &model.stream;
        let address = |slice: &CudaSlice<u8>| slice.device_ptr(stream).0;
        let arena = self.arena.as_ref().map_or(0, address);
        let weights = weights.unwrap_or(&model.weights);
        let addresses: Vec<u64> = self
            .desc
            .buffers
            .iter()
            .enumerate()
            .map(|(b, d)| match d.kind {
                BufferKind::Input(i) => match (&self.inputs[i], &self.staged[i]) {
                    (Some(Input::Device(t)), _) => address(&t.slice),
                    (Some(Input::Stored { slice, .. }), _) => address(slice),
                    (Some(Input::Zeros(_)), _) => self.zeros.as_ref().map_or(0, address),
                    (_, Some(staged)) => address(staged),
                    _ => unreachable!("every input is bound and staged"),
                },
                BufferKind::Weight(i) => address(&weights[i].slice),
                BufferKind::Constant(i) => address(&model.constants[i]),
                BufferKind::Temp => address(&outputs[&b].slice),
                BufferKind::Intermediate { .. } => arena + self.offsets[b] as u64,
            })
            .collect();
        let table = self.kernels.table(|b| addresses[b]);
        let values: Vec<i64> = if symbols.is_empty() {
            vec![0]
        } else {
            symbols.clone()
        };
        let (table_slice, values_slice) = match &mut self.tables {
            Some(tables) => tables,
            none => {
                let t = stream.alloc_zeros::<u64>(table.len());
                let v = stream.alloc_zeros::<i64>(values.len());
                let (t, v) = (t.and_then(|t| v.map(|v| (t, v))))
                    .map_err(|e| device_error(&model.file, "allocating the tables", e))?;
                none.insert((t, v))
            }
        };
        let copied = stream
            .memcpy_htod(&table, table_slice)
            .and_then(|()| stream.memcpy_htod(&values, values_slice));
        copied.map_err(|e| device_error(&model.file, "writing the tables", e))?;
        let tables = [
            table_slice.device_ptr(stream).0,
            values_slice.device_ptr(stream).0,
        ];
        let grids = grids(&self.kernels.launches, &symbols, self.launcher.graphs());
        let mut library = model
            .library
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
        let calls: Vec<Option<Call>> = self
            .desc
            .steps
            .iter()
            .map(|step| {
                let library = library.as_deref_mut()?;
                let call = gemm_call::call(step.gemm.as_ref()?, &symbols, |b| addresses[b])?;
                // A shape the library has no algorithm for runs the step's kernel.
                library.prepare(&call.shape).ok().map(|()| call)
            })
            .collect();
        self.library_steps = calls.iter().flatten().count();
        let work = Work { grids, calls };
        let launched =
            self.launcher
                .launch(stream, &self.kernels, library.as_deref(), &work, tables);
        launched.map_err(|(step, e)| match self.desc.steps.get(step) {
            Some(s) => self.fail(&s.kernel, e),
            None => self.fail("CUDA graph", e),
        })?;
        stream.synchronize().map_err(|e| self.fail("run", e))?;
        self.outputs = outputs;
        self.appended = Some(symbols);
        Ok(())
    }

    /// The names of the program's outputs.
    pub fn output_names(&self) -> Vec<String> {
        self.desc.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// Output `name` of the last run, copied to the host (dense).
    pub fn output(&self, name: &str) -> Result<Tensor> {
        let io = self.output_desc(name)?;
        if let Some(replaced) = self.desc.replaced(io) {
            let held = match (replaced, &self.appended) {
                (Replaced::Input(i), Some(_)) => match (&self.inputs[i], &self.staged[i]) {
                    (Some(Input::Device(t)), _) => Some((&t.slice, &t.shape)),
                    (Some(Input::Host(t)), Some(staged)) => Some((staged, &t.shape)),
                    _ => None,
                },
                _ => None,
            };
            let (slice, shape) = held.ok_or_else(|| self.fail(name, self.not_held(io)))?;
            let len = shape.iter().product::<usize>() * io.dtype.size();
            let copied = self.model.stream.clone_dtoh(&slice.slice(..len.max(1)));
            let copied =
                copied.map_err(|e| device_error(&self.model.file, "copying from the GPU", e))?;
            return Ok(Tensor::from_bytes(io.dtype, shape, &copied[..len]));
        }
        if let Some((slice, shape)) = self.appended_output(io)? {
            let capacity = io.capacity.expect("an appended output has a capacity");
            let blocks = capacity.blocks(&shape, io.dtype.size());
            let stored = self
                .model
                .stream
                .clone_dtoh(&slice.slice(..(blocks.count * blocks.pitch).max(1)))
                .map_err(|e| device_error(&self.model.file, "copying from the GPU", e))?;
            let bytes = layout::load(&stored, blocks);
            return Ok(Tensor::from_bytes(io.dtype, &shape, &bytes));
        }
        let tensor = self
            .outputs
            .get(&io.buffer)
            .ok_or_else(|| self.fail(name, "the program has not run"))?;
        self.model.download(tensor)
    }

    pub fn desc(&self) -> &'m ProgramDesc {
        self.desc
    }

    pub(super) fn model(&self) -> &'m CudaModel {
        self.model
    }
}
