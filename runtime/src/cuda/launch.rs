//! How a runner's steps reach the GPU: the grid of each step, and, with CUDA graphs on, the
//! launches captured once per distinct list of grids and replayed after that.
//!
//! Invariants. A step's grid is zero exactly when its work is empty for the bound symbols (the
//! launch is skipped); otherwise it is at least one block and at most [`MAX_BLOCKS`]. Kernels
//! walk their work by grid stride and read every size from the symbol table, so any grid of at
//! least one block computes the same result. With graphs on, grids are sized for the symbols
//! rounded up to powers of two: a decode step whose context grows by one position per token
//! replays one graph for every doubling of the context instead of capturing one per token.
//! Every launch takes two fixed addresses, its step's part of the runner's buffer table and the
//! symbol values, whose contents the runner rewrites on the stream before each launch or replay;
//! a captured graph therefore stays valid when inputs, outputs, the arena or the symbols change.
//! When profiling, steps are launched one by one with an event after each, and the time between
//! consecutive events is added to the step's total. Every launch allows programmatic dependent
//! launch (see [`launch_step`]).
//!
//! A step given a library [`Call`] enqueues it instead of launching its kernel (`library.rs`).
//! Calls hold the exact sizes and addresses they were made for, so a graph is keyed by its
//! calls as well as its grids: it is replayed only for the same calls.

use super::gemm_call::Call;
use super::library::Library;
use crate::manifest::Launch;
use cudarc::driver::sys::{
    self, CUevent_flags, CUgraphInstantiate_flags, CUresult, CUstreamCaptureMode,
};
use cudarc::driver::{CudaFunction, CudaGraph, CudaStream, DriverError};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

/// The largest grid launched.
pub const MAX_BLOCKS: i64 = 1 << 20;

/// Graphs kept per runner; past this the cache starts over (each doubling of a symbol adds one).
const MAX_GRAPHS: usize = 32;

/// `n` rounded up to a power of two (0 stays 0).
fn bucket(n: i64) -> i64 {
    if n <= 0 {
        n
    } else {
        (n as u64).next_power_of_two() as i64
    }
}

/// The grid of each of `launches` for `symbols`; with `bucketed`, sized for the symbols rounded
/// up to powers of two (see the module doc).
pub fn grids(launches: &[Launch], symbols: &[i64], bucketed: bool) -> Vec<u32> {
    let rounded: Vec<i64> = symbols.iter().map(|&s| bucket(s)).collect();
    let blocks = |launch: &Launch, syms: &[i64]| -> i64 {
        launch.blocks.iter().map(|f| f.count(syms)).product()
    };
    launches
        .iter()
        .map(|launch| {
            let exact = blocks(launch, symbols);
            let grid = if exact <= 0 {
                0
            } else if bucketed {
                blocks(launch, &rounded).max(1)
            } else {
                exact
            };
            grid.min(MAX_BLOCKS) as u32
        })
        .collect()
}

/// A program's kernels in step order, with their launches.
pub struct Kernels {
    pub functions: Vec<CudaFunction>,
    pub launches: Vec<Launch>,
    /// Where each step's part of the buffer table starts, in entries.
    pub table_offsets: Vec<usize>,
}

impl Kernels {
    pub fn new(functions: Vec<CudaFunction>, launches: Vec<Launch>) -> Kernels {
        let mut table_offsets = Vec::new();
        let mut next = 0;
        for l in &launches {
            table_offsets.push(next);
            next += l.buffers.len();
        }
        Kernels {
            functions,
            launches,
            table_offsets,
        }
    }

    /// The buffer table: each step's buffers, in order, as `address` gives them.
    pub fn table(&self, address: impl Fn(usize) -> u64) -> Vec<u64> {
        let table: Vec<u64> = self
            .launches
            .iter()
            .flat_map(|l| l.buffers.iter().map(|&b| address(b)))
            .collect();
        if table.is_empty() {
            vec![0]
        } else {
            table
        }
    }
}

/// What one run launches: each step's grid (0: skipped) and library call, if it has one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Work {
    pub grids: Vec<u32>,
    pub calls: Vec<Option<Call>>,
}

/// A failed launch: the step (or the step count, for a graph as a whole) and why.
pub type LaunchError = (usize, String);

/// Launches a program's steps: directly, through a cache of captured graphs, or timed.
pub struct Launcher {
    graphs: Option<HashMap<Work, CudaGraph>>,
    /// Each step's GPU time summed over runs, when profiling.
    profile: Option<Vec<Duration>>,
}

impl Launcher {
    pub fn new(graphs: bool) -> Launcher {
        Launcher {
            graphs: graphs.then(HashMap::new),
            profile: None,
        }
    }

    /// Launches one by one, timing each of `steps` steps.
    pub fn profiling(steps: usize) -> Launcher {
        Launcher {
            graphs: None,
            profile: Some(vec![Duration::ZERO; steps]),
        }
    }

    pub fn graphs(&self) -> bool {
        self.graphs.is_some()
    }

    /// Each step's GPU time over the runs since profiling started.
    pub fn profile(&self) -> Option<&[Duration]> {
        self.profile.as_deref()
    }

    /// Runs `work` on `stream`: each step with a library call enqueues it on `library`, each
    /// other step with a nonzero grid launches its kernel, given its part of the buffer table
    /// (`tables[0]`, the table's address) and the symbol values (`tables[1]`).
    pub fn launch(
        &mut self,
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
        library: Option<&Library>,
        work: &Work,
        tables: [u64; 2],
    ) -> Result<(), LaunchError> {
        let steps = Steps {
            stream,
            kernels,
            library,
            work,
            tables,
        };
        if let Some(profile) = &mut self.profile {
            return steps.launch_timed(profile);
        }
        let Some(graphs) = &mut self.graphs else {
            return steps.launch();
        };
        if !graphs.contains_key(work) {
            if graphs.len() >= MAX_GRAPHS {
                graphs.clear();
            }
            let graph = steps.capture()?;
            graphs.insert(work.clone(), graph);
        }
        let whole = work.grids.len();
        graphs[work].launch().map_err(|e| (whole, e.to_string()))
    }
}

/// One run's steps with everything launching them takes.
struct Steps<'a> {
    stream: &'a Arc<CudaStream>,
    kernels: &'a Kernels,
    library: Option<&'a Library>,
    work: &'a Work,
    tables: [u64; 2],
}

impl Steps<'_> {
    /// The launches of [`Steps::launch`] captured into a graph; on failure the capture is
    /// ended so the stream stays usable.
    fn capture(&self) -> Result<CudaGraph, LaunchError> {
        let whole = self.work.grids.len();
        let failed = |e: DriverError| (whole, e.to_string());
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(failed)?;
        let launched = self.launch();
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        match ended {
            Ok(Some(graph)) => Ok(graph),
            Ok(None) => Err(failed(DriverError(
                CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
            ))),
            Err(e) => Err(failed(e)),
        }
    }

    /// Launches step `i` if it does anything; whether it did.
    fn step(&self, i: usize) -> Result<bool, LaunchError> {
        if let Some(call) = &self.work.calls[i] {
            let library = self.library.expect("calls are made only with the library");
            library
                .enqueue(self.stream, call)
                .map_err(|e| (i, format!("cuBLASLt: {e}")))?;
            return Ok(true);
        }
        let grid = self.work.grids[i];
        if grid > 0 {
            launch_step(self.stream, self.kernels, i, grid, self.tables)
                .map_err(|(i, e)| (i, e.to_string()))?;
        }
        Ok(grid > 0)
    }

    fn launch(&self) -> Result<(), LaunchError> {
        for i in 0..self.work.grids.len() {
            self.step(i)?;
        }
        Ok(())
    }

    /// [`Steps::launch`] with an event recorded before the first launch and after each, the
    /// time between them added to `profile` (this waits for the GPU).
    fn launch_timed(&self, profile: &mut [Duration]) -> Result<(), LaunchError> {
        let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let event = |i: usize| {
            self.stream
                .record_event(timed)
                .map_err(|e| (i, e.to_string()))
        };
        let mut events = vec![event(0)?];
        let mut steps = Vec::new();
        for i in 0..self.work.grids.len() {
            if self.step(i)? {
                events.push(event(i)?);
                steps.push(i);
            }
        }
        for (pair, i) in events.windows(2).zip(steps) {
            let ms = pair[0]
                .elapsed_ms(&pair[1])
                .map_err(|e| (i, e.to_string()))?;
            profile[i] += Duration::from_secs_f64(ms.max(0.0) as f64 / 1e3);
        }
        Ok(())
    }
}

/// Launches step `i` with programmatic stream serialization: the GPU may process its launch
/// while the step before it is still running, and the kernel's first instruction
/// (`griddepcontrol.wait`, which every entry starts with) holds its blocks until that step has
/// finished and its writes are visible, so the launch latency between steps overlaps the previous
/// step instead of following it.
fn launch_step(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    i: usize,
    grid: u32,
    tables: [u64; 2],
) -> Result<(), (usize, DriverError)> {
    let mut bufs = tables[0] + 8 * kernels.table_offsets[i] as u64;
    let mut symbols = tables[1];
    let mut params = [
        (&mut bufs as *mut u64).cast::<c_void>(),
        (&mut symbols as *mut u64).cast::<c_void>(),
    ];
    let mut value = sys::CUlaunchAttributeValue { pad: [0; 64] };
    value.programmaticStreamSerializationAllowed = 1;
    let mut attribute = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let config = sys::CUlaunchConfig {
        gridDimX: grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: kernels.launches[i].threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: stream.cu_stream(),
        attrs: &mut attribute,
        numAttrs: 1,
    };
    stream.context().bind_to_thread().map_err(|e| (i, e))?;
    // SAFETY: every entry takes the two table addresses of the manifest's ABI (`params` points
    // at both, alive for the call); the runner keeps both tables alive and filled with live
    // buffers sized for the bound symbols, each step's part of the buffer table holds its
    // launch's buffers, and the function belongs to a module loaded in the stream's context.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            kernels.functions[i].cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(|e| (i, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::WorkFactor;
    use crate::Poly;

    /// One launch over `past + 1` positions in tiles of 4, and one over a fixed 10 items.
    fn launches() -> Vec<Launch> {
        let factor = |extent: Poly, tile| WorkFactor { extent, tile };
        let launch = |blocks| Launch {
            blocks,
            threads: 128,
            shared_bytes: 0,
            buffers: Vec::new(),
        };
        let past_plus_one = Poly::symbol(0).add(&Poly::constant(1));
        vec![
            launch(vec![factor(past_plus_one, 4)]),
            launch(vec![factor(Poly::constant(10), 1)]),
        ]
    }

    #[test]
    fn exact_grids_cover_the_work_and_bucketed_ones_repeat_within_a_doubling() {
        let l = launches();
        assert_eq!(grids(&l, &[6], false), vec![2, 10]);
        // Symbol 5..=8 round up to 8: one list of grids, so one graph, for all four.
        let bucketed: Vec<Vec<u32>> = (5..=8).map(|p| grids(&l, &[p], true)).collect();
        assert!(bucketed.iter().all(|g| *g == vec![3, 10]), "{bucketed:?}");
        for p in 0..40 {
            let (exact, sized) = (grids(&l, &[p], false), grids(&l, &[p], true));
            assert!(exact.iter().zip(&sized).all(|(e, s)| s >= e && *s >= 1));
        }
    }

    #[test]
    fn empty_work_is_skipped_and_grids_are_capped() {
        let empty = vec![Launch {
            blocks: vec![WorkFactor {
                extent: Poly::symbol(0),
                tile: 1,
            }],
            threads: 32,
            shared_bytes: 0,
            buffers: Vec::new(),
        }];
        assert_eq!(grids(&empty, &[0], true), vec![0]);
        assert_eq!(grids(&empty, &[1 << 30], false), vec![MAX_BLOCKS as u32]);
    }
}
