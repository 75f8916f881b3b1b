//! PTX for each kind of [`Kernel`] the shared lowering produces: one `.entry` per kernel with
//! the launch ABI of `kiln_runtime::manifest` (buffer table and symbol values), and the
//! [`Launch`] that runs it.
//!
//! Every kernel walks its work by grid stride and checks every bound, so any grid size and any
//! value of the symbols up to their maxima is correct; the launch's grid is the size that gives
//! each block one piece of work.

mod attention;
mod attention_grad;
mod attention_grad_mma;
mod attention_mma;
mod attention_rows;
mod context;
pub(crate) mod dtype;
mod expr;
mod gather;
mod library_gemm;
mod map;
mod matmul;
mod matmul_gemv;
mod matmul_gemv_mma;
mod matmul_mma;
mod reduce;
mod reduce_columns;
mod reduce_map;
mod scatter;
#[cfg(test)]
mod tests;

use crate::error::Result;
use crate::ptx::KernelBuilder;
use context::Ctx;
use kiln_backend_cpu::kernel::{AttentionOutput, Kernel, DECODE_ROWS};
use kiln_runtime::manifest::Launch;

pub use library_gemm::offer as library_gemm;

/// Threads per block of the element-wise, reduction and matmul kernels.
pub const THREADS: u32 = 256;

/// The launch of a kernel that gives each of `items` one thread, in blocks of [`THREADS`].
pub fn one_thread_each(items: kiln_runtime::Poly) -> Launch {
    Launch {
        blocks: vec![kiln_runtime::manifest::WorkFactor {
            extent: items,
            tile: THREADS as u64,
        }],
        threads: THREADS,
        shared_bytes: 0,
        buffers: Vec::new(),
    }
}

/// Whether attention `kernel` may also write its log-sum-exp beside its values: the
/// tensor-core form does (`attention_mma`).
pub fn attention_with_lse(kernel: &kiln_backend_cpu::kernel::AttentionKernel) -> bool {
    attention_mma::applies(kernel)
}

/// Whether attention gradient `kernel` by the keys may also write the values' gradient: the
/// tensor-core form does (`attention_grad_mma`).
pub fn attention_key_value_grads(kernel: &kiln_backend_cpu::kernel::AttentionGradKernel) -> bool {
    attention_grad_mma::applies(kernel)
}

/// What one step of a program runs: one kernel of the lowering, or several run as one.
pub enum Group<'a> {
    One(&'a Kernel),
    /// A reduction and the map reading it back (`reduce_map.rs`).
    ReduceMap(reduce_map::ReduceMap<'a>),
    /// Independent maps in bundles of one shape (`map::emit_together`): a pair that
    /// `map::together` allows, or one map.
    Maps(Vec<Vec<map::Parts<'a>>>),
    /// Decode matmuls on tensor cores, independent of each other
    /// (`matmul_gemv_mma::together`).
    Gemvs(Vec<&'a Kernel>),
    /// A decode matmul and the next, whose epilogue reads the first's output
    /// (`matmul_gemv_mma::chained`).
    GemvChain([&'a Kernel; 2]),
}

impl Group<'_> {
    /// The lowered kernels it runs.
    pub fn kernels(&self) -> usize {
        match self {
            Group::One(_) => 1,
            Group::ReduceMap(_) => 2,
            Group::Maps(bundles) => bundles.iter().map(Vec::len).sum(),
            Group::Gemvs(kernels) => kernels.len(),
            Group::GemvChain(_) => 2,
        }
    }

    /// The kind of its entry, named `KIND_N` so profiles and summaries show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Group::One(kernel) => kind(kernel),
            Group::ReduceMap(_) => "reduce_map",
            Group::Maps(..) => "maps",
            Group::Gemvs(_) => "matmul_gemvs_mma",
            Group::GemvChain(_) => "matmul_gemv_chain_mma",
        }
    }
}

/// Decode matmuls one launch takes at most ([`Group::Gemvs`]).
const GEMVS_MAX: usize = 4;
/// Bundles of maps one launch takes at most ([`Group::Maps`]).
const BUNDLES_MAX: usize = 4;
/// How far ahead [`order`] looks for a matmul to run beside another.
const LOOKAHEAD: usize = 16;

/// Whether two kernels may run in either order, or at once: neither writes a buffer the other
/// reads or writes.
fn independent(first: &Kernel, second: &Kernel) -> bool {
    let writes =
        |k: &Kernel| -> Vec<Option<usize>> { k.written().iter().map(|v| v.buffer()).collect() };
    let reads = |k: &Kernel, buffer: Option<usize>| {
        buffer.is_some() && k.operands().iter().any(|v| v.buffer() == buffer)
    };
    let (a, b) = (writes(first), writes(second));
    a.iter().all(|w| !b.contains(w) && !reads(second, *w)) && b.iter().all(|w| !reads(first, *w))
}

/// Reorders the program's kernels so that decode matmuls which may run as one launch
/// ([`Group::Gemvs`]) are consecutive: a matmul up to [`LOOKAHEAD`] kernels later moves up
/// beside the first of its group when it is independent of every kernel it passes. Every
/// kernel still runs after those it depends on and before those that depend on it, so the
/// program computes the same values; the memory plan follows the new order.
pub fn order<T>(kernels: &mut Vec<(Kernel, T)>) {
    let mut i = 0;
    while i < kernels.len() {
        let mut members = 1;
        let mut j = i + 1;
        while j < kernels.len().min(i + LOOKAHEAD) && members < GEMVS_MAX {
            let candidate = &kernels[j].0;
            let joins =
                (i..i + members).all(|m| matmul_gemv_mma::together(&kernels[m].0, candidate));
            let passes = (i + members..j).all(|m| independent(&kernels[m].0, candidate));
            if joins && passes {
                let moved = kernels.remove(j);
                kernels.insert(i + members, moved);
                members += 1;
            }
            j += 1;
        }
        i += members;
    }
}

/// The program's kernels in steps: each reduction and the map right after it that reads it
/// back together, consecutive independent maps together (two of one shape in a bundle),
/// consecutive decode matmuls that may run as one launch together ([`order`] brings them next
/// to each other), a decode matmul and the next reading its output in its epilogue together,
/// every other kernel alone.
pub fn group<T>(kernels: &[(Kernel, T)]) -> Vec<Group<'_>> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < kernels.len() {
        let kernel = &kernels[i].0;
        let mut gemvs = vec![kernel];
        while let Some((next, _)) = kernels.get(i + gemvs.len()) {
            if gemvs.len() == GEMVS_MAX || !gemvs.iter().all(|k| matmul_gemv_mma::together(k, next))
            {
                break;
            }
            gemvs.push(next);
        }
        let chain = kernels
            .get(i + 1)
            .filter(|(next, _)| matmul_gemv_mma::chained(kernel, next));
        let step = if let Some((next, _)) = chain {
            Group::GemvChain([kernel, next])
        } else if gemvs.len() > 1 {
            Group::Gemvs(gemvs)
        } else {
            let maps = bundles(&kernels[i..]);
            if maps.iter().map(Vec::len).sum::<usize>() > 1 {
                Group::Maps(maps)
            } else {
                kernels
                    .get(i + 1)
                    .and_then(|(next, _)| reduce_map::pair(kernel, next))
                    .map_or(Group::One(kernel), Group::ReduceMap)
            }
        };
        i += step.kernels();
        groups.push(step);
    }
    groups
}

/// The maps at the start of `kernels` that may run as one launch, in bundles: each bundle a
/// pair that `map::together` allows or one map, every map independent of those of the other
/// bundles and taking runs of elements as the first does (`map::takes_runs`); up to
/// [`BUNDLES_MAX`] bundles.
fn bundles<T>(kernels: &[(Kernel, T)]) -> Vec<Vec<map::Parts<'_>>> {
    let mut bundles: Vec<Vec<map::Parts>> = Vec::new();
    let mut taken: Vec<&Kernel> = Vec::new();
    let mut i = 0;
    while bundles.len() < BUNDLES_MAX {
        let Some((kernel, _)) = kernels.get(i) else {
            break;
        };
        let joins = |k: &Kernel| taken.iter().all(|t| independent(t, k));
        let runs_alike = |p: &map::Parts| match bundles.first() {
            Some(b) => map::takes_runs(b[0]) == map::takes_runs(*p),
            None => true,
        };
        let Some(first) = map::parts(kernel).filter(|p| joins(kernel) && runs_alike(p)) else {
            break;
        };
        let second = kernels.get(i + 1).and_then(|(next, _)| {
            map::together(kernel, next)
                .filter(|_| joins(next))
                .map(|[_, second]| (next, second))
        });
        taken.push(kernel);
        match second {
            Some((next, second)) => {
                taken.push(next);
                bundles.push(vec![first, second]);
            }
            None => bundles.push(vec![first]),
        }
        i = taken.len();
    }
    bundles
}

/// The kind of a kernel.
fn kind(kernel: &Kernel) -> &'static str {
    match kernel {
        Kernel::Map { .. } => "map",
        Kernel::Reduce { leaves, axes, .. } if reduce_columns::applies(leaves, axes) => {
            "reduce_columns"
        }
        Kernel::Reduce { .. } => "reduce",
        Kernel::MatMul { a, b, out, .. } => match out.dims[out.rank() - 2].as_constant() {
            Some(m) if m <= DECODE_ROWS && matmul_gemv_mma::applies(a, b) => "matmul_gemv_mma",
            Some(m) if m <= DECODE_ROWS && matmul_gemv::applies(a, b) => "matmul_gemv",
            Some(m) if m <= DECODE_ROWS => "matmul_warp",
            _ if matmul_mma::applies(a, b) => "matmul_mma",
            _ => "matmul_tiled",
        },
        Kernel::Gather { .. } => "gather",
        Kernel::Scatter { .. } => "scatter",
        Kernel::Attention(a) => match a.output {
            AttentionOutput::Values if attention_mma::applies(a) => "attention_mma",
            AttentionOutput::LogSumExp if attention_mma::applies(a) => "attention_lse_mma",
            AttentionOutput::Values => "attention",
            AttentionOutput::LogSumExp => "attention_lse",
        },
        Kernel::AttentionGrad(a) if attention_grad_mma::applies(a) => "attention_grad_mma",
        Kernel::AttentionGrad(_) => "attention_grad",
    }
}

/// The entry computing `group` (named by its kind until the module numbers it), and its
/// launch (with the buffers of its table).
pub fn emit(group: &Group) -> Result<(KernelBuilder, Launch)> {
    let mut c = Ctx::new(group.kind());
    let kernel = match group {
        Group::One(kernel) => kernel,
        Group::ReduceMap(pair) => {
            let launch = reduce_map::emit(&mut c, pair)?;
            return Ok(finish(c, launch));
        }
        Group::Maps(bundles) => {
            let launch = map::emit_together(&mut c, bundles)?;
            return Ok(finish(c, launch));
        }
        Group::Gemvs(kernels) => {
            let launch = matmul_gemv_mma::emit_together(&mut c, kernels)?;
            return Ok(finish(c, launch));
        }
        Group::GemvChain([first, second]) => {
            let launch = matmul_gemv_mma::emit_chained(&mut c, first, second)?;
            return Ok(finish(c, launch));
        }
    };
    let launch = match kernel {
        Kernel::Map { out, leaves, expr } => map::emit(&mut c, out, leaves, expr)?,
        Kernel::Reduce {
            op,
            leaves,
            expr,
            axes,
            out,
        } => reduce::emit(&mut c, *op, leaves, expr, axes, out)?,
        Kernel::MatMul {
            a,
            b,
            out,
            epilogue,
            ..
        } => matmul::emit(&mut c, a, b, out, epilogue.as_ref())?,
        Kernel::Gather {
            data,
            indices,
            axis,
            out,
        } => gather::emit(&mut c, data, indices, *axis, out)?,
        Kernel::Attention(a) => attention::emit(&mut c, a)?,
        Kernel::Scatter {
            indices,
            updates,
            axis,
            mode,
            out,
        } => scatter::emit(&mut c, indices, updates, *axis, *mode, out)?,
        Kernel::AttentionGrad(a) if attention_grad_mma::applies(a) => {
            attention_grad_mma::emit(&mut c, a)?
        }
        Kernel::AttentionGrad(a) => attention_grad::emit_grad(&mut c, a)?,
    };
    Ok(finish(c, launch))
}

/// The entry's closing `ret`, and the launch with the buffers of its table.
fn finish(mut c: Ctx, mut launch: Launch) -> (KernelBuilder, Launch) {
    c.b.ret();
    launch.buffers = c.slots().to_vec();
    (c.b, launch)
}
