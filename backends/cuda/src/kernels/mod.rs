//! PTX for each kind of [`Kernel`] the shared lowering produces: one `.entry` per kernel with
//! the launch ABI of `kiln_runtime::manifest` (buffer table and symbol values), and the
//! [`Launch`] that runs it.
//!
//! Every kernel walks its work by grid stride and checks every bound, so any grid size and any
//! value of the symbols up to their maxima is correct; the launch's grid is the size that gives
//! each block one piece of work.

mod attention;
mod attention_grad;
mod attention_mma;
mod attention_rows;
mod context;
pub(crate) mod dtype;
mod expr;
mod gather;
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
use kiln_backend_cpu::kernel::Kernel;
use kiln_runtime::manifest::Launch;

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

/// What one step of a program runs: one kernel of the lowering, or a reduction and the map
/// reading it back as one (`reduce_map.rs`).
pub enum Group<'a> {
    One(&'a Kernel),
    ReduceMap(reduce_map::ReduceMap<'a>),
    /// Two maps of one shape, independent of each other (`map::together`).
    Maps([map::Parts<'a>; 2]),
}

impl Group<'_> {
    /// The lowered kernels it runs.
    pub fn kernels(&self) -> usize {
        match self {
            Group::One(_) => 1,
            Group::ReduceMap(_) | Group::Maps(..) => 2,
        }
    }

    /// The kind of its entry, named `KIND_N` so profiles and summaries show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Group::One(kernel) => kind(kernel),
            Group::ReduceMap(_) => "reduce_map",
            Group::Maps(..) => "maps",
        }
    }
}

/// The program's kernels in steps: each reduction and the map right after it that reads it
/// back together, two consecutive independent maps of one shape together, every other kernel
/// alone.
pub fn group<T>(kernels: &[(Kernel, T)]) -> Vec<Group<'_>> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < kernels.len() {
        let kernel = &kernels[i].0;
        let pair = kernels.get(i + 1).and_then(|(next, _)| {
            if let Some(pair) = reduce_map::pair(kernel, next) {
                Some(Group::ReduceMap(pair))
            } else {
                map::together(kernel, next).map(Group::Maps)
            }
        });
        match pair {
            Some(pair) => {
                groups.push(pair);
                i += 2;
            }
            None => {
                groups.push(Group::One(kernel));
                i += 1;
            }
        }
    }
    groups
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
            Some(m) if m <= 4 && matmul_gemv_mma::applies(a, b) => "matmul_gemv_mma",
            Some(m) if m <= 4 && matmul_gemv::applies(a, b) => "matmul_gemv",
            Some(m) if m <= 4 => "matmul_warp",
            _ if matmul_mma::applies(a, b) => "matmul_mma",
            _ => "matmul_tiled",
        },
        Kernel::Gather { .. } => "gather",
        Kernel::Scatter { .. } => "scatter",
        Kernel::Attention(a) => match a.output {
            kiln_backend_cpu::kernel::AttentionOutput::Values if attention_mma::applies(a) => {
                "attention_mma"
            }
            kiln_backend_cpu::kernel::AttentionOutput::Values => "attention",
            kiln_backend_cpu::kernel::AttentionOutput::LogSumExp => "attention_lse",
        },
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
        Group::Maps(parts) => {
            let launch = map::emit_together(&mut c, parts)?;
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
