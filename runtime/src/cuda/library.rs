//! The GEMM library (cuBLASLt, loaded at run time): one handle and workspace per model, and a
//! plan per [`Shape`] (descriptors and the algorithm its heuristic picks), made once and
//! reused, so a run only enqueues `cublasLtMatmul` calls.
//!
//! The library is used where it loads, unless `KILN_CUDA_GEMM=kernels` asks for kiln's own
//! kernels everywhere. Calls go to the model's stream and may be captured into CUDA graphs (the
//! workspace is ours, allocated once). Plans are made before any capture
//! ([`Library::prepare`]), so capturing enqueues only.
//!
//! Invariants: every plan's descriptors live as long as the plan, and are destroyed with it;
//! [`Library::enqueue`] runs only calls whose shape was prepared.

use super::gemm_call::{Call, Matrix, Shape};
use crate::manifest::ElemType;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// Bytes of the library's workspace (NVIDIA's recommendation for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// The environment variable that turns the library off (`kernels`).
pub const SWITCH: &str = "KILN_CUDA_GEMM";

pub struct Library {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<Shape, Plan>,
}

/// The descriptors of one shape and the algorithm chosen for it.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the descriptors were created for this plan and are destroyed once, here.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for &l in self.layouts.iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle was created by `load` and every plan made with it is gone.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

fn data_type(t: ElemType) -> Option<sys::cudaDataType> {
    match t {
        ElemType::F32 => Some(sys::cudaDataType::CUDA_R_32F),
        ElemType::F16 => Some(sys::cudaDataType::CUDA_R_16F),
        ElemType::Bf16 => Some(sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

impl Library {
    /// The library on `stream`'s GPU; `None` where it does not load or is switched off.
    pub fn load(stream: &Arc<CudaStream>) -> Result<Option<Library>, String> {
        if std::env::var(SWITCH).is_ok_and(|v| v == "kernels") {
            return Ok(None);
        }
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Ok(None);
        }
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| e.to_string())?;
        let handle = lt::create_handle().map_err(|e| format!("cuBLASLt: {e}"))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| format!("allocating the GEMM library's workspace: {e}"))?;
        Ok(Some(Library {
            handle,
            workspace,
            plans: HashMap::new(),
        }))
    }

    /// Makes the plan of `shape` unless it exists; an error where the library has no algorithm
    /// for it (the caller then runs the kernel).
    pub fn prepare(&mut self, shape: &Shape) -> Result<(), CublasError> {
        if !self.plans.contains_key(shape) {
            let plan = self.plan(shape)?;
            self.plans.insert(shape.clone(), plan);
        }
        Ok(())
    }

    fn plan(&self, shape: &Shape) -> Result<Plan, CublasError> {
        let unsupported = CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED);
        let layout = |m: &Matrix| -> Result<sys::cublasLtMatrixLayout_t, CublasError> {
            let t = data_type(m.dtype).ok_or(unsupported)?;
            let l = lt::create_matrix_layout(t, m.rows, m.cols, m.ld)?;
            if shape.batch > 1 {
                set_layout(
                    l,
                    LayoutAttr::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &shape.batch,
                )?;
                let offset = LayoutAttr::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET;
                set_layout(l, offset, &m.batch_stride)?;
            }
            Ok(l)
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )?;
        // The plan owns what exists so far: dropped on an early return, it destroys it.
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            // SAFETY: a plain C struct of integers; replaced by the heuristic's choice below.
            algo: unsafe { std::mem::zeroed() },
        };
        let transposes = [shape.a.transposed as i32, shape.b.transposed as i32];
        for (attr, t) in [
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
        ]
        .into_iter()
        .zip(&transposes)
        {
            // SAFETY: the descriptor is live; the attribute is an `int32`.
            unsafe { lt::set_matmul_desc_attribute(desc, attr, ptr(t), 4) }?;
        }
        for (slot, m) in [&shape.a, &shape.b, &shape.d].into_iter().enumerate() {
            plan.layouts[slot] = layout(m)?;
        }
        let pref = Preference(lt::create_matmul_pref()?);
        let workspace = WORKSPACE_BYTES as u64;
        pref.set(
            PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &workspace,
        )?;
        // `C` is `D` (β = 0), so it has `D`'s alignment.
        let [a_align, b_align, d_align] = shape.align;
        for (attr, bytes) in [
            (
                PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                a_align,
            ),
            (
                PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                b_align,
            ),
            (
                PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                d_align,
            ),
            (
                PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                d_align,
            ),
        ] {
            pref.set(attr, &bytes)?;
        }
        let [a, b, d] = plan.layouts;
        // SAFETY: every descriptor is live.
        let found =
            unsafe { lt::get_matmul_algo_heuristic(self.handle, desc, a, b, d, d, pref.0) }?;
        plan.algo = found.algo;
        Ok(plan)
    }

    /// Enqueues `call` on `stream`: `D = A·B` (β = 0) for each address triple.
    pub fn enqueue(&self, stream: &Arc<CudaStream>, call: &Call) -> Result<(), CublasError> {
        let plan = &self.plans[&call.shape];
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (workspace, _guard) = self.workspace.device_ptr(stream);
        let [a, b, d] = plan.layouts;
        for p in &call.pointers {
            // SAFETY: the plan's descriptors are live; the runner passes addresses of live
            // buffers that hold every element the layouts reach (the compiler's views of them),
            // aligned as the shape states; the workspace is ours and as large as the plan
            // allows; everything is enqueued on the model's one stream.
            unsafe {
                lt::matmul(
                    self.handle,
                    plan.desc,
                    ptr(&alpha),
                    ptr(&beta),
                    p[0] as *const c_void,
                    a,
                    p[1] as *const c_void,
                    b,
                    p[2] as *const c_void,
                    d,
                    p[2] as *mut c_void,
                    d,
                    &plan.algo,
                    workspace as *mut c_void,
                    WORKSPACE_BYTES,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }?;
        }
        Ok(())
    }
}

type LayoutAttr = sys::cublasLtMatrixLayoutAttribute_t;
type PrefAttr = sys::cublasLtMatmulPreferenceAttributes_t;

fn ptr<T>(value: &T) -> *const c_void {
    (value as *const T).cast()
}

fn set_layout<T>(
    l: sys::cublasLtMatrixLayout_t,
    attr: LayoutAttr,
    value: &T,
) -> Result<(), CublasError> {
    // SAFETY: the layout is live and `value` has the attribute's C type.
    unsafe { lt::set_matrix_layout_attribute(l, attr, ptr(value), size_of::<T>()) }
}

/// A preference descriptor, destroyed when dropped.
struct Preference(sys::cublasLtMatmulPreference_t);

impl Preference {
    fn set<T>(&self, attr: PrefAttr, value: &T) -> Result<(), CublasError> {
        // SAFETY: the descriptor is live and `value` has the attribute's C type.
        unsafe { lt::set_matmul_pref_attribute(self.0, attr, ptr(value), size_of::<T>()) }
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref` and destroyed once, here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}
