//! The artifact manifest: everything the runtime needs to run compiled code, as plain serde data.
//!
//! The compiler fills it; the runtime reads it and never needs a compiler crate to do so.
//!
//! **Kernel ABI.** Every step of a program names one function in the artifact's object code with
//! the C signature
//! `fn(bufs: *const *mut u8, syms: *const i64, start: i64, end: i64, fns: *const *const u8)`:
//! `bufs` is the program's buffer table (indexed as [`ProgramDesc::buffers`]), `syms` the bound
//! values of [`ProgramDesc::symbols`], `[start, end)` the slice of the step's work items this call
//! must do (the runtime splits [`Step::work`] across threads; items are independent), and `fns`
//! the runtime function table ([`RUNTIME_FUNCTIONS`], in that order).
//!
//! **CUDA targets** (`target.arch` = `sm_90`): the artifact's object section holds one PTX module
//! instead of an ELF object, and every step carries a [`Launch`]. Each kernel is an `.entry`
//! named as the step's `kernel` (steps that compute the same thing on different buffers, such as
//! the layers of a model, share one entry), with two `.param .u64` parameters: a device pointer
//! to the step's buffer table (one 64-bit device address per entry of [`Launch::buffers`], the
//! program buffers the kernel reads and writes, in the kernel's order) and a device pointer to the
//! bound symbol values (`i64`, as [`ProgramDesc::symbols`]). Kernels loop
//! over their work by grid stride, so any grid of at least one block computes the whole step;
//! [`Launch::blocks`] is the grid that gives each block one piece of work.
//!
//! **Library GEMMs.** A CUDA step may also carry a [`LibraryGemm`]: the same matmul described
//! for the vendor's GEMM library (cuBLASLt). The runtime calls the library instead of launching
//! the kernel where the library loads and can take the views at the bound symbols; anywhere
//! else it launches the kernel, which computes the same product. An older runtime ignores the
//! field and launches the kernel.
//!
//! **Capacity and in-place caches.** An input or output may carry a [`Capacity`]: along that
//! one axis its buffer has room for `entries` entries, laid out row-major over the shape with
//! that axis replaced by `entries`; the logical shape is the [`IoDesc`] shape, whose axis holds
//! the first entries. A decode cache input `past_X` and its output `X` may name the same buffer
//! (the compiler does so when `X = concat(past_X, new, axis)` and nothing else reads `past_X`):
//! both carry the same capacity, a run writes the new entries after the input's and leaves the
//! input's own entries untouched, so feeding `X` back as the next `past_X` copies nothing — only
//! the logical length grows. The buffer's element count is the capacity's.
//!
//! **State written in place.** A training step's output may also name the buffer of the value
//! it replaces, without a capacity: `param.NAME` the buffer of weight `NAME`, `adam_m.NAME` and
//! `adam_v.NAME` the buffers of the inputs of the same names (the compiler does so where the
//! kernel computing the output is the last to read the old value, and reads it only at the
//! element it writes). A run then leaves the new value where the old one was: the caller hands
//! that storage to the run and owns the result there ([`ProgramDesc::replaced`]).
//!
//! **Inputs with a default.** An input named in [`ZERO_DEFAULT_INPUTS`] may be left unset: the
//! run then reads zeros of its shape (whose symbols the other inputs bind).
//!
//! Invariants: buffer indices in steps and I/O are in range; every input names a buffer of its
//! own kind, and every output a `Temp` buffer of its own, the buffer of an input with the same
//! capacity, or the buffer of the input or weight it replaces, of its dtype and shape; an
//! aliased output's logical shape at the bound symbols never exceeds its capacity (the runtime
//! refuses a run that would); steps run in order, each after the previous one has finished.

use crate::poly::Poly;
use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of the manifest, the artifact layout or what the programs
/// take (7: `train_step`'s `max_loss` and `accepted`, and its state written in place).
pub const FORMAT_VERSION: u32 = 7;

/// Functions the runtime hands to kernels, in table order. The names are part of the ABI.
///
/// - `gemm_f32(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, c_cs)`: `c = a·b`, strides in
///   elements, all `i64` but the three `*f32`.
/// - `sinf`, `cosf`, `logf`, `erff`, `tanhf`: `f32 → f32`; `powf`: `(f32, f32) → f32`.
/// - `gemm_bf16(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, c_cs, narrow)`: `gemm_f32` where
///   `a` (bit 0 of `narrow`) and/or `b` (bit 1) point to `bf16` elements.
pub const RUNTIME_FUNCTIONS: &[&str] = &[
    "gemm_f32",
    "sinf",
    "cosf",
    "logf",
    "erff",
    "tanhf",
    "powf",
    "gemm_bf16",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    F32,
    F16,
    Bf16,
    I32,
    I64,
    Bool,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F16 | ElemType::Bf16 => 2,
            ElemType::I64 => 8,
            ElemType::Bool => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F16 => "f16",
            ElemType::Bf16 => "bf16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::Bool => "bool",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The `kiln` version that wrote the artifact.
    pub kiln_version: String,
    pub target: Target,
    pub model: ModelInfo,
    /// The weights the programs read, in buffer order: names and shapes in Hugging Face's layout
    /// (row-major, `[out, in]` for linear layers).
    pub weights: Vec<TensorDesc>,
    /// Constants baked in by the compiler; their bytes live in the artifact's data section.
    pub constants: Vec<ConstantDesc>,
    pub programs: Vec<ProgramDesc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `x86_64`.
    pub arch: String,
    /// CPU features the code was compiled for (`avx`, `fma`, `sse4.1`…); the loader checks them.
    pub features: Vec<String>,
}

/// What the decoding loop and the weight loader need to know of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `llama`, `mistral`, `qwen2`, … as read from the config.
    pub family: String,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub tied_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The chat template from the config, if it carried one.
    pub chat_template: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorDesc {
    pub name: String,
    pub dtype: ElemType,
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstantDesc {
    pub dtype: ElemType,
    pub shape: Vec<usize>,
    /// Byte offset and length in the data section.
    pub offset: usize,
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolDesc {
    pub name: String,
    /// The largest value the program was compiled for.
    pub max: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BufferKind {
    /// Program input `inputs[i]`.
    Input(usize),
    /// Weight `weights[i]` of the manifest.
    Weight(usize),
    /// Constant `constants[i]` of the manifest.
    Constant(usize),
    /// A program output, written by the steps and handed to the caller.
    Temp,
    /// An intermediate value, live from step `first` to step `last` (inclusive); it lies in the
    /// runner's arena (see [`crate::memory_plan`]).
    Intermediate { first: usize, last: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferDesc {
    pub kind: BufferKind,
    pub dtype: ElemType,
    /// Element count.
    pub numel: Poly,
}

/// A named program input or output: a buffer and its (symbolic) shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoDesc {
    pub name: String,
    pub buffer: usize,
    pub dtype: ElemType,
    /// The logical shape.
    pub shape: Vec<Poly>,
    /// Room along one axis beyond the logical shape (see the module doc); absent: dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// Inputs a caller may leave unset, which then read as zeros: `left_padding` (`int[batch]`,
/// the filler tokens before each row's sequence; zeros for a batch of unpadded sequences).
pub const ZERO_DEFAULT_INPUTS: &[&str] = &["left_padding"];

/// A buffer with room for `entries` entries along `axis` (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub axis: usize,
    pub entries: usize,
}

/// The value an output is written over (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// Program input `inputs[i]`.
    Input(usize),
    /// Weight `weights[i]` of the manifest.
    Weight(usize),
}

impl ProgramDesc {
    /// The input whose buffer output `output` shares with a capacity (an in-place cache), if any.
    pub fn aliased_input(&self, output: &IoDesc) -> Option<usize> {
        match self.buffers.get(output.buffer)?.kind {
            BufferKind::Input(i) if output.capacity.is_some() => Some(i),
            _ => None,
        }
    }

    /// The input or weight output `output` is written over (state updated in place), if any.
    pub fn replaced(&self, output: &IoDesc) -> Option<Replaced> {
        match self.buffers.get(output.buffer)?.kind {
            BufferKind::Input(i) if output.capacity.is_none() => Some(Replaced::Input(i)),
            BufferKind::Weight(i) => Some(Replaced::Weight(i)),
            _ => None,
        }
    }

    /// Whether output `name` is written over the value it replaces.
    pub fn replaces_in_place(&self, name: &str) -> bool {
        let output = self.outputs.iter().find(|o| o.name == name);
        output.is_some_and(|o| self.replaced(o).is_some())
    }
}

/// `⌈extent / tile⌉` work items along one axis of a kernel's work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkFactor {
    pub extent: Poly,
    pub tile: u64,
}

impl WorkFactor {
    pub fn count(&self, symbols: &[i64]) -> i64 {
        let tile = self.tile as i64;
        (self.extent.eval(symbols) + tile - 1) / tile
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The kernel's symbol in the object code.
    pub kernel: String,
    /// The number of independent work items: the product of the factors.
    pub work: Vec<WorkFactor>,
    /// Bytes one work item touches, roughly, for the thread split.
    pub item_bytes: Poly,
    /// What the step computes, for profiles and error messages.
    pub label: String,
    /// How the step is launched on a GPU; absent for CPU steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    /// The step's matmul for the GEMM library, where the compiler prefers it to the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemm: Option<LibraryGemm>,
}

/// `out[.., m, n] = Σₖ a[.., m, k]·b[.., k, n]` over strided views of program buffers: the
/// product a step's kernel computes, for the GEMM library (see the module doc). The sums are
/// accumulated in f32 and rounded once to `out`'s type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryGemm {
    pub a: GemmOperand,
    pub b: GemmOperand,
    pub out: GemmOperand,
    /// Extents of the batch axes (the output's leading axes; the operands are broadcast to
    /// them, a broadcast axis having stride 0).
    pub batch: Vec<Poly>,
    pub m: Poly,
    pub n: Poly,
    pub k: Poly,
}

/// One matrix of a [`LibraryGemm`]: element `(b.., i, j)` lies at
/// `offset + Σ bₓ·strides[x] + i·strides[r−2] + j·strides[r−1]` elements into `buffer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmOperand {
    /// Index into [`ProgramDesc::buffers`].
    pub buffer: usize,
    pub dtype: ElemType,
    pub offset: Poly,
    /// The batch axes' strides, then the two matrix axes'.
    pub strides: Vec<Poly>,
}

/// The launch of one GPU kernel (see the module doc for its parameters). A grid of zero blocks
/// (an empty tensor) means the step does nothing and is skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// Blocks of the one-dimensional grid: the product of the factors' counts.
    pub blocks: Vec<WorkFactor>,
    /// Threads per block: exactly this many (kernels that share work through shared memory
    /// are written for it).
    pub threads: u32,
    /// Bytes of static shared memory the kernel declares (for occupancy; nothing to pass).
    pub shared_bytes: u32,
    /// The program buffers (indices into [`ProgramDesc::buffers`]) whose addresses make the
    /// step's buffer table, in the order the kernel reads them.
    pub buffers: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramDesc {
    /// `prefill`, `decode`, …
    pub name: String,
    pub symbols: Vec<SymbolDesc>,
    pub buffers: Vec<BufferDesc>,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    pub steps: Vec<Step>,
    pub memory: MemoryDesc,
}

/// The memory plan's result at the symbols' maxima: what one arena for every intermediate
/// needs, against what separate buffers would.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDesc {
    /// Bytes of the arena.
    pub peak_bytes: u64,
    /// Bytes of all intermediates together.
    pub intermediate_bytes: u64,
}

impl Manifest {
    pub fn program(&self, name: &str) -> Option<&ProgramDesc> {
        self.programs.iter().find(|p| p.name == name)
    }
}
