//! Running compiled programs: a [`Model`] is a loaded artifact with its weights; a [`Runner`]
//! executes one of its programs, owning that program's inputs and intermediate buffers.
//!
//! A run binds the size symbols from the inputs' shapes (each symbol must appear alone as some
//! input axis), sizes every intermediate from its element-count polynomial (storage is reused
//! across runs and only grows), builds the buffer table and calls the steps in order, each split
//! across the pool's threads when it has enough work.
//!
//! An input stored with a capacity (see [`crate::manifest`]) is copied into storage allocated at
//! its capacity when set; an output sharing its buffer (an in-place cache) is read back as a
//! dense tensor of its logical shape, and [`Runner::feed_back`] makes it the next run's input
//! by growing the input's logical length, with no copy.

use crate::arena::Arena;
use crate::artifact::Artifact;
use crate::capacity;
use crate::error::{Result, RuntimeError};
use crate::functions;
use crate::loader::Code;
use crate::manifest::{
    BufferKind, Capacity, ElemType, IoDesc, Manifest, ProgramDesc, ZERO_DEFAULT_INPUTS,
};
use crate::packed::PackedWeights;
use crate::pool::Pool;
use crate::tensor::Tensor;
use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64, *const usize);

/// Steps touching fewer bytes than this run on the calling thread alone.
const PARALLEL_MIN_BYTES: i64 = 48 * 1024;
/// Chunks per thread that a larger step's items are handed out in: few, so that each thread
/// streams long runs of consecutive weight rows (`bench/results/cpu-chunks-2026-11-30/`).
const CHUNKS_PER_THREAD: i64 = 2;

pub struct Model {
    manifest: Manifest,
    file: String,
    code: Code,
    functions: Vec<usize>,
    /// `None` once moved out ([`Model::take_weights`]).
    weights: Option<PackedWeights>,
    constants: Vec<Tensor>,
    pool: Mutex<Pool>,
}

fn host_has(feature: &str) -> bool {
    match feature {
        "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
        "avx" => std::arch::is_x86_feature_detected!("avx"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "fma" => std::arch::is_x86_feature_detected!("fma"),
        "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
        "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
        "popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
        "lzcnt" => std::arch::is_x86_feature_detected!("lzcnt"),
        _ => false,
    }
}

/// A tensor's element type and shape, wherever its data lives.
pub(crate) trait TypedShape {
    fn dtype(&self) -> ElemType;
    fn shape(&self) -> &[usize];
}

impl TypedShape for Tensor {
    fn dtype(&self) -> ElemType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// Checks `weights` against the manifest: one per entry, in order, of its dtype and shape.
pub(crate) fn check_weights(
    manifest: &Manifest,
    file: &str,
    weights: &[impl TypedShape],
) -> Result<()> {
    if weights.len() != manifest.weights.len() {
        return Err(RuntimeError::new(
            file,
            Some("weights"),
            format!(
                "{} weights given, the artifact expects {}",
                weights.len(),
                manifest.weights.len()
            ),
        ));
    }
    for (w, desc) in weights.iter().zip(&manifest.weights) {
        if w.dtype() != desc.dtype || w.shape() != desc.shape.as_slice() {
            return Err(RuntimeError::tensor(
                file,
                &desc.name,
                format!(
                    "expected {}{:?}, got {}{:?}",
                    desc.dtype.name(),
                    desc.shape,
                    w.dtype().name(),
                    w.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// Threads to use by default: the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Model {
    /// Loads the artifact's code and checks `weights` against the manifest (one per entry of
    /// `manifest.weights`, same order, dtype and shape). `file` names the artifact in errors.
    pub fn new(
        artifact: Artifact,
        file: &str,
        weights: Vec<Tensor>,
        threads: usize,
    ) -> Result<Model> {
        let constants = artifact
            .manifest
            .constants
            .iter()
            .zip(artifact.constant_bytes(file)?)
            .map(|(c, bytes)| Tensor::from_bytes(c.dtype, &c.shape, bytes))
            .collect();
        let manifest = artifact.manifest;
        if manifest.target.arch != std::env::consts::ARCH {
            let message = if manifest.target.arch.starts_with("sm_") {
                format!(
                    "compiled for CUDA GPUs ({}): this runtime runs CPU artifacts only (there is \
                     no CUDA executor yet); compile with `--target cpu`",
                    manifest.target.arch
                )
            } else {
                format!(
                    "compiled for {}, this machine is {}",
                    manifest.target.arch,
                    std::env::consts::ARCH
                )
            };
            return Err(RuntimeError::new(file, Some("target"), message));
        }
        if let Some(missing) = manifest.target.features.iter().find(|f| !host_has(f)) {
            return Err(RuntimeError::new(
                file,
                Some("target"),
                format!("compiled for CPUs with `{missing}`, which this CPU lacks"),
            ));
        }
        check_weights(&manifest, file, &weights)?;
        let code = Code::load(&artifact.object, file)?;
        for program in &manifest.programs {
            for step in &program.steps {
                if code.symbol(&step.kernel).is_none() {
                    return Err(RuntimeError::new(
                        file,
                        Some("object"),
                        format!(
                            "kernel `{}` of program `{}` is missing",
                            step.kernel, program.name
                        ),
                    ));
                }
            }
        }
        let weights = PackedWeights::pack(weights).map_err(|e| {
            RuntimeError::new(
                file,
                Some("weights"),
                format!("mapping memory for them: {e}"),
            )
        })?;
        Ok(Model {
            manifest,
            file: file.to_string(),
            code,
            functions: functions::table(),
            weights: Some(weights),
            constants,
            pool: Mutex::new(Pool::new(threads)),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Moves the weights out, for a caller that updates them (a trainer) and hands them to every
    /// run ([`Runner::run_with_weights`]); [`Runner::run`] then refuses to run.
    pub fn take_weights(&mut self) -> Vec<Tensor> {
        self.weights
            .take()
            .map_or_else(Vec::new, |packed| packed.unpack())
    }

    /// Checks `weights` against the manifest: one per entry, in order, of its dtype and shape.
    fn check_weights(&self, weights: &[Tensor]) -> Result<()> {
        check_weights(&self.manifest, &self.file, weights)
    }

    /// A runner for the program `name`.
    pub fn runner(&self, name: &str) -> Result<Runner<'_>> {
        let desc = self.manifest.program(name).ok_or_else(|| {
            let known: Vec<&str> = self
                .manifest
                .programs
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            RuntimeError::new(
                &self.file,
                Some("programs"),
                format!("no program `{name}` (has {})", known.join(", ")),
            )
        })?;
        if let Some(o) = desc.outputs.iter().find(|o| desc.replaced(o).is_some()) {
            let message = format!(
                "program `{name}` writes output `{}` over the value it replaces, which only the \
                 GPU runner does: this artifact is not for the CPU",
                o.name
            );
            return Err(RuntimeError::new(&self.file, Some("programs"), message));
        }
        let kernels = desc
            .steps
            .iter()
            .map(|s| {
                let address = self.code.symbol(&s.kernel).expect("checked at load");
                // SAFETY: the symbol is a kernel compiled with the manifest's ABI.
                unsafe { std::mem::transmute::<usize, KernelFn>(address) }
            })
            .collect();
        let temps = desc
            .buffers
            .iter()
            .map(|b| Tensor::zeros(b.dtype, &[0]))
            .collect();
        Ok(Runner {
            model: self,
            desc,
            kernels,
            temps,
            arena: Arena::new(desc),
            inputs: desc.inputs.iter().map(|_| None).collect(),
            symbols: vec![0; desc.symbols.len()],
            ran: false,
            profile: None,
        })
    }
}

/// An input as a runner holds it: the storage kernels read (at capacity along the input's
/// capacity axis, if it has one) and the logical shape.
struct Held {
    storage: Tensor,
    shape: Vec<usize>,
}

pub struct Runner<'m> {
    model: &'m Model,
    desc: &'m ProgramDesc,
    kernels: Vec<KernelFn>,
    /// Storage of `Temp` buffers (outputs), indexed by buffer (other entries stay empty).
    temps: Vec<Tensor>,
    /// Storage of the intermediates.
    arena: Arena,
    inputs: Vec<Option<Held>>,
    /// The symbols of the last run.
    symbols: Vec<i64>,
    /// Whether the outputs that share an input's buffer hold a run's result (setting that input
    /// again replaces it).
    ran: bool,
    /// Time spent in each step over all runs, when profiling.
    profile: Option<Vec<Duration>>,
}

impl<'m> Runner<'m> {
    pub fn desc(&self) -> &ProgramDesc {
        self.desc
    }

    /// Starts (or stops) timing every step of every run.
    /// Bytes of the arena holding the intermediates, as planned for the largest symbols run.
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![Duration::ZERO; self.desc.steps.len()]);
    }

    /// Time spent in each step (indexed as the program's steps) since profiling started.
    pub fn profile(&self) -> Option<&[Duration]> {
        self.profile.as_deref()
    }

    fn err(&self, field: &str, message: String) -> RuntimeError {
        program_error(self.desc, field, message)
    }

    /// Sets input `name`; its dtype and rank must match the program's. An input with a capacity
    /// is copied into storage at its capacity (the runner's previous storage, when it has one).
    pub fn set_input(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let vocab = self.model.manifest.model.vocab_size;
        let index = host_input_slot(self.desc, vocab, name, &tensor)?;
        let held = match self.desc.inputs[index].capacity {
            None => Held {
                shape: tensor.shape.clone(),
                storage: tensor,
            },
            Some(capacity) => {
                capacity.check(self.desc, name, &tensor.shape)?;
                let shape = capacity.storage_shape(&tensor.shape);
                // Fresh storage is zeroed lazily, page by page as the cache reaches it.
                let mut storage = match self.inputs[index].take() {
                    Some(held) if held.storage.numel() >= shape.iter().product() => held.storage,
                    _ => Tensor::zeros(tensor.dtype, &shape),
                };
                storage.resize(&shape);
                let blocks = capacity.blocks(&tensor.shape, tensor.dtype.size());
                capacity::store(tensor.bytes(), blocks, storage.bytes_mut());
                self.ran = false;
                Held {
                    storage,
                    shape: tensor.shape,
                }
            }
        };
        self.inputs[index] = Some(held);
        Ok(())
    }

    /// The shape of each input set (`None`: not set), in the program's order.
    fn input_shapes(&self) -> Vec<Option<&[usize]>> {
        self.inputs
            .iter()
            .map(|h| h.as_ref().map(|h| h.shape.as_slice()))
            .collect()
    }

    fn bind_symbols(&mut self) -> Result<()> {
        self.symbols = bind_symbols(self.desc, &self.input_shapes())?;
        Ok(())
    }

    /// Runs the program on the inputs set, with the model's weights.
    pub fn run(&mut self) -> Result<()> {
        let Some(weights) = &self.model.weights else {
            return Err(self.err(
                "weights",
                "the model's weights were moved out: pass them to `run_with_weights`".into(),
            ));
        };
        self.run_on(weights.addresses())
    }

    /// Runs the program on the inputs set, with `weights` in place of the model's (one per
    /// manifest entry, each of its dtype and shape).
    pub fn run_with_weights(&mut self, weights: &[Tensor]) -> Result<()> {
        self.model.check_weights(weights)?;
        let addresses: Vec<usize> = weights.iter().map(|w| w.as_ptr() as usize).collect();
        self.run_on(&addresses)
    }

    /// Runs the program with the weights at `weights` (one address per manifest entry).
    fn run_on(&mut self, weights: &[usize]) -> Result<()> {
        self.ran = false;
        for (name, zeros) in unset_defaults(self.desc, &self.input_shapes())? {
            self.set_input(&name, zeros)?;
        }
        self.bind_symbols()?;
        let syms = self.symbols.clone();
        self.arena.fit(self.desc, &syms);
        let dense = self.desc.outputs.iter().filter(|o| o.capacity.is_none());
        for io in dense {
            let shape: Vec<usize> = io.shape.iter().map(|d| d.eval(&syms) as usize).collect();
            self.temps[io.buffer].resize(&shape);
        }
        let model = self.model;
        let table: Vec<usize> = self
            .desc
            .buffers
            .iter()
            .enumerate()
            .map(|(b, desc)| match desc.kind {
                BufferKind::Input(i) => {
                    let held = self.inputs[i].as_mut().expect("bound inputs are set");
                    held.storage.as_mut_ptr() as usize
                }
                BufferKind::Weight(i) => weights[i],
                BufferKind::Constant(i) => model.constants[i].as_ptr() as usize,
                BufferKind::Temp => self.temps[b].as_mut_ptr() as usize,
                BufferKind::Intermediate { .. } => self.arena.address(b),
            })
            .collect();
        let fns = model.functions.as_ptr() as usize;
        let mut pool = model.pool.lock().unwrap_or_else(|p| p.into_inner());
        let threads = pool.threads() as i64;
        for (i, (step, &kernel)) in self.desc.steps.iter().zip(&self.kernels).enumerate() {
            let started = self.profile.is_some().then(Instant::now);
            let count: i64 = step.work.iter().map(|f| f.count(&syms)).product();
            if count <= 0 {
                continue;
            }
            let bytes = count.saturating_mul(step.item_bytes.eval(&syms));
            let chunk = if bytes < PARALLEL_MIN_BYTES {
                count
            } else {
                (count / (threads * CHUNKS_PER_THREAD)).max(1)
            };
            let (bufs, syms_ptr) = (table.as_ptr() as usize, syms.as_ptr() as usize);
            pool.run(count, chunk, &|start, end| {
                // SAFETY: the table holds live buffers sized for these symbols; items of one
                // step write disjoint elements.
                unsafe {
                    kernel(
                        bufs as *const *mut u8,
                        syms_ptr as *const i64,
                        start,
                        end,
                        fns as *const usize,
                    )
                }
            });
            if let (Some(profile), Some(started)) = (&mut self.profile, started) {
                profile[i] += started.elapsed();
            }
        }
        self.ran = true;
        Ok(())
    }

    fn output_desc(&self, name: &str) -> Result<&'m IoDesc> {
        let desc: &'m ProgramDesc = self.desc;
        desc.outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| self.err(name, "no such output".into()))
    }

    /// Output `name` of the last run, dense: borrowed, or copied out of the buffer it shares
    /// with an input (valid until that input is set again).
    pub fn output(&self, name: &str) -> Result<Cow<'_, Tensor>> {
        let io = self.output_desc(name)?;
        let Some((input, capacity)) = aliased(self.desc, io)? else {
            return Ok(Cow::Borrowed(&self.temps[io.buffer]));
        };
        let held = self.inputs[input].as_ref().filter(|_| self.ran);
        let held = held.ok_or_else(|| self.err(name, "the program has not run".into()))?;
        let shape: Vec<usize> = io
            .shape
            .iter()
            .map(|d| d.eval(&self.symbols) as usize)
            .collect();
        let blocks = capacity.blocks(&shape, io.dtype.size());
        let bytes = capacity::load(held.storage.bytes(), blocks);
        Ok(Cow::Owned(Tensor::from_bytes(io.dtype, &shape, &bytes)))
    }

    /// Moves output `name` out (the next run allocates it afresh); an output sharing an input's
    /// buffer is copied out instead.
    pub fn take_output(&mut self, name: &str) -> Result<Tensor> {
        let io = self.output_desc(name)?;
        if aliased(self.desc, io)?.is_some() {
            return self.output(name).map(Cow::into_owned);
        }
        self.swap_output(name, Tensor::zeros(io.dtype, &[0]))
    }

    /// Makes output `output` of the last run the next run's input `input`: an output sharing
    /// the input's buffer (an in-place cache) only grows the input's logical length; any other
    /// moves, and the input's old storage holds the next run's output ([`Runner::swap_output`]).
    pub fn feed_back(&mut self, input: &str, output: &str) -> Result<()> {
        let io = self.output_desc(output)?;
        let Some((index, _)) = aliased(self.desc, io)? else {
            let spent = self.take_input(input)?;
            let grown = self.swap_output(output, spent)?;
            return self.set_input(input, grown);
        };
        if self.desc.inputs[index].name != input {
            let shared = &self.desc.inputs[index].name;
            let message = format!("shares its buffer with input `{shared}`, not `{input}`");
            return Err(self.err(output, message));
        }
        let shape: Vec<usize> = io
            .shape
            .iter()
            .map(|d| d.eval(&self.symbols) as usize)
            .collect();
        let held = self.inputs[index].as_mut().filter(|_| self.ran);
        let held =
            held.ok_or_else(|| program_error(self.desc, output, "the program has not run".into()))?;
        held.shape = shape;
        Ok(())
    }

    /// Moves output `name` out and keeps `storage` to hold it next run: a decode loop hands back
    /// the cache it no longer needs, so two allocations alternate and grow in place instead of
    /// a fresh one (zeroed, page by page) every step.
    pub fn swap_output(&mut self, name: &str, storage: Tensor) -> Result<Tensor> {
        let io = self.output_desc(name)?;
        if aliased(self.desc, io)?.is_some() {
            return Err(self.err(
                name,
                "is appended in place to the buffer of an input: it has no storage to swap".into(),
            ));
        }
        if storage.dtype != io.dtype {
            return Err(self.err(
                name,
                format!(
                    "storage of {} for an output of {}",
                    storage.dtype.name(),
                    io.dtype.name()
                ),
            ));
        }
        Ok(std::mem::replace(&mut self.temps[io.buffer], storage))
    }

    /// Moves input `name` out, dense; it must be set again before the next run.
    pub fn take_input(&mut self, name: &str) -> Result<Tensor> {
        let index = self.desc.inputs.iter().position(|i| i.name == name);
        let (index, held) = index
            .and_then(|i| Some((i, self.inputs[i].take()?)))
            .ok_or_else(|| self.err(name, "no such input is set".into()))?;
        Ok(match self.desc.inputs[index].capacity {
            None => held.storage,
            Some(capacity) => {
                let dtype = held.storage.dtype;
                let blocks = capacity.blocks(&held.shape, dtype.size());
                let bytes = capacity::load(held.storage.bytes(), blocks);
                Tensor::from_bytes(dtype, &held.shape, &bytes)
            }
        })
    }
}

/// The input whose buffer output `io` of `desc` shares, and their capacity; `None` for an
/// output of its own. A shared buffer without a capacity, with another one than the input's, or
/// with an axis the output lacks, is an error of the artifact.
pub(crate) fn aliased(desc: &ProgramDesc, io: &IoDesc) -> Result<Option<(usize, Capacity)>> {
    let Some(input) = desc.aliased_input(io) else {
        return Ok(None);
    };
    match (io.capacity, desc.inputs.get(input).and_then(|i| i.capacity)) {
        (Some(c), Some(d)) if c == d && c.axis < io.shape.len() => Ok(Some((input, c))),
        _ => Err(program_error(
            desc,
            &io.name,
            "shares an input's buffer without the input's capacity: the artifact is invalid".into(),
        )),
    }
}

/// The slot of input `name` of `desc` for a value of `dtype` and `shape` (dtype and rank must
/// match the input's).
pub(crate) fn input_slot(
    desc: &ProgramDesc,
    name: &str,
    dtype: ElemType,
    shape: &[usize],
) -> Result<usize> {
    let err = |field: &str, message: String| program_error(desc, field, message);
    let index = desc
        .inputs
        .iter()
        .position(|i| i.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = desc.inputs.iter().map(|i| i.name.as_str()).collect();
            err(
                name,
                format!("no such input (inputs: {})", known.join(", ")),
            )
        })?;
    let io = &desc.inputs[index];
    if dtype != io.dtype || shape.len() != io.shape.len() {
        return Err(err(
            name,
            format!(
                "expected {} of rank {}, got {}{shape:?}",
                io.dtype.name(),
                io.shape.len(),
                dtype.name(),
            ),
        ));
    }
    Ok(index)
}

/// The slot of host input `name` for `tensor` ([`input_slot`]); token ids must also lie in
/// the vocabulary.
pub(crate) fn host_input_slot(
    desc: &ProgramDesc,
    vocab: usize,
    name: &str,
    tensor: &Tensor,
) -> Result<usize> {
    let index = input_slot(desc, name, tensor.dtype, &tensor.shape)?;
    if name == "input_ids" {
        let vocab = vocab as i64;
        if let Some(bad) = tensor.as_i64().iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(program_error(
                desc,
                name,
                format!("token id {bad} is outside the vocabulary (0..{vocab})"),
            ));
        }
    }
    Ok(index)
}

/// Zeros for each input of [`ZERO_DEFAULT_INPUTS`] not set (`None` in `shapes`), shaped by the
/// symbols the inputs set bind: what a runner sets before it runs.
pub(crate) fn unset_defaults(
    desc: &ProgramDesc,
    shapes: &[Option<&[usize]>],
) -> Result<Vec<(String, Tensor)>> {
    let unset: Vec<&IoDesc> = desc
        .inputs
        .iter()
        .zip(shapes)
        .filter(|(io, shape)| shape.is_none() && ZERO_DEFAULT_INPUTS.contains(&io.name.as_str()))
        .map(|(io, _)| io)
        .collect();
    if unset.is_empty() {
        return Ok(Vec::new());
    }
    let symbols = bind_symbols(desc, shapes)?;
    Ok(unset
        .into_iter()
        .map(|io| {
            let shape: Vec<usize> = io.shape.iter().map(|d| d.eval(&symbols) as usize).collect();
            (io.name.clone(), Tensor::zeros(io.dtype, &shape))
        })
        .collect())
}

/// The symbols' values, from the shapes of the inputs set (`None`: not set; every input must be
/// set but those of [`ZERO_DEFAULT_INPUTS`], each symbol must appear alone as some input axis,
/// consistently, within its maximum), and every input's shape checked against them.
pub(crate) fn bind_symbols(desc: &ProgramDesc, shapes: &[Option<&[usize]>]) -> Result<Vec<i64>> {
    let err = |field: &str, message: String| program_error(desc, field, message);
    let mut symbols = vec![0i64; desc.symbols.len()];
    let mut bound: Vec<Option<i64>> = vec![None; desc.symbols.len()];
    for (io, shape) in desc.inputs.iter().zip(shapes) {
        let Some(shape) = *shape else {
            if ZERO_DEFAULT_INPUTS.contains(&io.name.as_str()) {
                continue;
            }
            return Err(err(&io.name, "input not set".into()));
        };
        for (dim, &actual) in io.shape.iter().zip(shape) {
            if let [t] = dim.terms.as_slice() {
                if t.coeff == 1 && t.symbols.len() == 1 {
                    let s = t.symbols[0] as usize;
                    match bound[s] {
                        Some(v) if v != actual as i64 => {
                            return Err(err(
                                &io.name,
                                format!(
                                    "`{}` is {v} elsewhere but {actual} here",
                                    desc.symbols[s].name
                                ),
                            ))
                        }
                        _ => bound[s] = Some(actual as i64),
                    }
                }
            }
        }
    }
    for (i, sym) in desc.symbols.iter().enumerate() {
        symbols[i] =
            bound[i].ok_or_else(|| err(&sym.name, "no input shape determines this size".into()))?;
    }
    // A full cache is named by its input and capacity before the symbol it overflows.
    for (io, shape) in desc.inputs.iter().zip(shapes) {
        if let (Some(capacity), Some(shape)) = (io.capacity, shape) {
            capacity.check(desc, &io.name, shape)?;
        }
    }
    for io in &desc.outputs {
        let Some((input, capacity)) = aliased(desc, io)? else {
            continue;
        };
        let entries = io.shape[capacity.axis].eval(&symbols);
        if entries > capacity.entries as i64 {
            return Err(err(
                &desc.inputs[input].name,
                format!(
                    "the cache is full: this run would grow it to {entries} entries along axis \
                     {} (output `{}`), beyond its capacity of {}, the most the program was \
                     compiled for",
                    capacity.axis, io.name, capacity.entries
                ),
            ));
        }
    }
    for (i, sym) in desc.symbols.iter().enumerate() {
        let v = symbols[i];
        if v as usize > sym.max {
            return Err(err(
                &sym.name,
                format!(
                    "is {v}, but the program was compiled for at most {}",
                    sym.max
                ),
            ));
        }
    }
    for (io, shape) in desc.inputs.iter().zip(shapes) {
        let Some(shape) = *shape else {
            continue; // an input with a default, checked above
        };
        let expected: Vec<usize> = io.shape.iter().map(|d| d.eval(&symbols) as usize).collect();
        if shape != expected {
            return Err(err(
                &io.name,
                format!("shape {shape:?} does not match {expected:?}"),
            ));
        }
    }
    Ok(symbols)
}

/// An error about `field` of program `desc`.
pub(crate) fn program_error(desc: &ProgramDesc, field: &str, message: String) -> RuntimeError {
    RuntimeError::new(format!("program `{}`", desc.name), Some(field), message)
}
