//! Memory planning for one lowered program: every temporary buffer that is not a program
//! output becomes an intermediate of the runner's arena, with its lifetime — the first and the
//! last step whose kernel touches it — and the plan at the symbols' maxima is recorded.
//!
//! Lowering's invariants make the lifetimes exact: a temporary is written by the kernels of
//! one node before any kernel reads it, and kernels run in order, so no step outside
//! `first..=last` touches the buffer. Outputs stay separate buffers: the caller takes them
//! (an appended cache is its input's buffer, which the caller owns too).

use crate::kernel::Kernel;
use crate::lower::LoweredProgram;
use kiln_runtime::manifest::{BufferKind, MemoryDesc};
use kiln_runtime::memory_plan::{plan, Lifetime};

/// Turns `program`'s non-output temporaries into intermediates and returns the plan's peak at
/// the symbols' maxima, one step per kernel.
pub fn plan_intermediates(program: &mut LoweredProgram) -> MemoryDesc {
    let steps: Vec<usize> = (0..program.kernels.len()).collect();
    plan_steps(program, &steps)
}

/// [`plan_intermediates`] where kernel `i` runs in step `step_of[i]` (non-decreasing): kernels
/// a backend runs as one step share it, so no buffer one of them touches shares memory with a
/// buffer another touches.
pub fn plan_steps(program: &mut LoweredProgram, step_of: &[usize]) -> MemoryDesc {
    let mut span: Vec<Option<(usize, usize)>> = vec![None; program.buffers.len()];
    for (&step, (kernel, _)) in step_of.iter().zip(&program.kernels) {
        for buffer in touched(kernel) {
            let (first, _) = span[buffer].unwrap_or((step, step));
            span[buffer] = Some((first, step));
        }
    }
    let maxima: Vec<i64> = program.symbols.iter().map(|s| s.max as i64).collect();
    let mut lifetimes = Vec::new();
    for (b, desc) in program.buffers.iter_mut().enumerate() {
        let output = program.outputs.iter().any(|o| o.buffer == b);
        if desc.kind != BufferKind::Temp || output {
            continue;
        }
        let (first, last) = span[b].expect("lowering touches every temporary it creates");
        desc.kind = BufferKind::Intermediate { first, last };
        let numel = desc.numel.eval(&maxima).max(0) as usize;
        lifetimes.push(Lifetime {
            first,
            last,
            bytes: numel * desc.dtype.size(),
        });
    }
    MemoryDesc {
        peak_bytes: plan(&lifetimes).bytes as u64,
        intermediate_bytes: lifetimes.iter().map(|l| l.bytes as u64).sum(),
    }
}

/// Every buffer `kernel` reads or writes.
fn touched(kernel: &Kernel) -> Vec<usize> {
    kernel
        .operands()
        .into_iter()
        .chain(kernel.written())
        .filter_map(|v| v.buffer())
        .collect()
}
