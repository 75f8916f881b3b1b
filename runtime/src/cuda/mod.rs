//! The CUDA executor (feature `cuda`): runs an artifact compiled for `sm_90` on the first GPU,
//! through cudarc with the driver loaded at run time.
//!
//! [`CudaModel::new`] checks that a driver and a device exist (a clear error otherwise, never a
//! panic), loads the artifact's PTX module, finds every step's entry and uploads the weights and
//! constants once. All work goes to one stream of the model's own (so that it can be captured
//! into CUDA graphs); with one stream, cudarc's cross-stream event tracking is switched off. A
//! [`CudaRunner`] runs one program (see `runner.rs`); its steps are launched directly or
//! replayed from captured graphs (`launch.rs`). Outputs stay on the device until read, and an
//! output can become an input without leaving it ([`DeviceTensor`]): the decoding loop keeps
//! the KV cache on the GPU this way, and the trainer the weights, moments and gradient sums
//! (`programs.rs`). Steps the compiler offers to the GEMM library run through cuBLASLt where it
//! loads (`library.rs`, `gemm_call.rs`), on the same stream, shared by the model's runners.

mod gemm_call;
mod launch;
mod library;
mod programs;
mod runner;
mod stored;

pub use library::SWITCH as GEMM_SWITCH;
pub use runner::CudaRunner;

use crate::artifact::Artifact;
use crate::error::{Result, RuntimeError};
use crate::executor::{check_weights, TypedShape};
use crate::manifest::{ElemType, Manifest};
use crate::tensor::Tensor;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, PinnedHostSlice};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    weights: Vec<DeviceTensor>,
    constants: Vec<CudaSlice<u8>>,
    /// The GEMM library, where a step offers it a matmul and it loads.
    library: Option<Mutex<library::Library>>,
    /// Page-locked host memory that downloads land in (the driver copies into it by DMA at
    /// full speed; a pageable destination is copied through a bounce buffer). It grows to the
    /// largest download and is reused, so a decoding loop allocates it once.
    staging: Mutex<Option<PinnedHostSlice<u8>>>,
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
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_error(file, "reading the GPU's compute capability", e))?;
        let arch = format!("sm_{major}{minor}");
        if arch != manifest.target.arch {
            return Err(RuntimeError::new(
                file,
                Some("target"),
                format!(
                    "compiled for {} GPUs (its PTX uses that architecture's own instructions), \
                     but GPU 0 is {arch}",
                    manifest.target.arch
                ),
            ));
        }
        // SAFETY: every allocation and launch of this model goes to its one stream, so no use
        // of a buffer needs ordering against another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| device_error(file, "creating a stream", e))?;
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
        let mut steps = manifest.programs.iter().flat_map(|p| &p.steps);
        let library = match steps.any(|s| s.gemm.is_some()) {
            true => library::Library::load(&stream).map_err(|e| device_error(file, "GEMM", e))?,
            false => None,
        };
        let weights = weights
            .into_iter()
            .map(|w| DeviceTensor::upload(&stream, w, file))
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
            library: library.map(Mutex::new),
            staging: Mutex::new(None),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether steps offered to the GEMM library run through it.
    pub fn uses_gemm_library(&self) -> bool {
        self.library.is_some()
    }

    /// What runs the matmuls the compiler offered to the GEMM library, for reports; `None`
    /// where no step offers one.
    pub fn gemm_report(&self) -> Option<String> {
        let steps = self.manifest.programs.iter().flat_map(|p| &p.steps);
        let offered = steps.filter(|s| s.gemm.is_some()).count();
        let runs_on = match (&self.library, std::env::var(GEMM_SWITCH)) {
            (Some(_), _) => "cuBLASLt".to_string(),
            (None, Ok(v)) if v == "kernels" => format!("kiln's kernels ({GEMM_SWITCH}={v})"),
            (None, _) => "kiln's kernels (cuBLASLt not found or set aside)".to_string(),
        };
        (offered > 0)
            .then(|| format!("{offered} matmul steps offered to the GEMM library run on {runs_on}"))
    }

    /// Runs every step on kiln's own kernels from now on, the GEMM library set aside.
    pub fn without_gemm_library(&mut self) {
        self.library = None;
    }

    /// Moves the weights out, for a caller that updates them (a trainer) and hands them to every
    /// run ([`CudaRunner::run_with_weights`]); [`CudaRunner::run`] then refuses to run.
    pub fn take_weights(&mut self) -> Vec<DeviceTensor> {
        std::mem::take(&mut self.weights)
    }

    /// A runner for the program `name`.
    pub fn runner(&self, name: &str) -> Result<CudaRunner<'_>> {
        let desc = self.manifest.program(name).ok_or_else(|| {
            RuntimeError::new(&self.file, Some("programs"), format!("no program `{name}`"))
        })?;
        CudaRunner::new(self, desc)
    }

    /// The GPU's name and the bytes of its memory in use (by every process), for reports.
    pub fn device_report(&self) -> Result<(String, usize)> {
        let ctx = self.stream.context();
        let fail = |e| device_error(&self.file, "querying the GPU", e);
        let name = ctx.name().map_err(fail)?;
        let (free, total) = ctx.mem_get_info().map_err(fail)?;
        Ok((name, total - free))
    }

    /// A copy of `tensor` on this model's GPU.
    pub fn upload(&self, tensor: Tensor) -> Result<DeviceTensor> {
        DeviceTensor::upload(&self.stream, tensor, &self.file)
    }

    /// A host copy of `tensor`, through the staging buffer.
    pub fn download(&self, tensor: &DeviceTensor) -> Result<Tensor> {
        let len = tensor.byte_len();
        if len == 0 {
            return Ok(Tensor::zeros(tensor.dtype, &tensor.shape));
        }
        let fail = |e| device_error(&self.file, "copying from the GPU", e);
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if staging.as_ref().is_none_or(|s| s.len() < len) {
            // Dropped first, so the old and the new buffer are never both page-locked.
            *staging = None;
            // SAFETY: the buffer is only read after the copies into it (below) are synchronized.
            // Flags 0: cached memory, as the host reads it (write-combined memory is slow to read).
            let pinned = unsafe { self.stream.context().alloc_pinned_with_flags(len, 0) };
            *staging = Some(pinned.map_err(fail)?);
        }
        let staging = staging.as_mut().expect("allocated above");
        // The copy is of exactly `len` bytes: cudarc copies the destination's length.
        let host = &mut staging.as_mut_slice().map_err(fail)?[..len];
        self.stream
            .memcpy_dtoh(&tensor.slice.slice(..len), host)
            .map_err(fail)?;
        // Into page-locked memory the copy is truly asynchronous.
        self.stream.synchronize().map_err(fail)?;
        Ok(Tensor::from_bytes(tensor.dtype, &tensor.shape, host))
    }
}

/// A tensor in device memory: an output of one run, to be an input of another. Its allocation
/// may be larger than its bytes (outputs are allocated with room to grow).
pub struct DeviceTensor {
    slice: CudaSlice<u8>,
    dtype: ElemType,
    shape: Vec<usize>,
}

impl DeviceTensor {
    fn upload(stream: &Arc<CudaStream>, tensor: Tensor, file: &str) -> Result<DeviceTensor> {
        Ok(DeviceTensor {
            slice: upload(stream, tensor.bytes(), file)?,
            dtype: tensor.dtype,
            shape: tensor.shape,
        })
    }

    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

impl TypedShape for DeviceTensor {
    fn dtype(&self) -> ElemType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}
