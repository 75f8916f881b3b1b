//! `kiln-backend-cuda`: compiles graphs into an artifact of PTX for NVIDIA GPUs (sm_90).
//!
//! [`compile`] reuses the CPU backend's target-independent lowering (`kiln_backend_cpu::lower`:
//! buffers, views, kernel descriptions; `memory`: the arena plan of intermediates), writes
//! every kernel as a PTX entry with its own typed builder (`ptx`, `kernels`; steps whose code is
//! the same, such as the layers of a model, share one entry; `kernels::order` first brings
//! decode matmuls that can share a launch together, `kernels::group` makes the steps), and
//! packs the module text, the manifest (each step with its
//! [`Launch`](kiln_runtime::manifest::Launch)) and the constants into a `kiln_runtime::Artifact`
//! whose target is `sm_90`. kiln writes the PTX
//! itself: no CUDA toolkit is needed to compile, and this crate never runs code.

pub mod error;
pub mod kernels;
pub mod ptx;

pub use error::{CompileError, Result};

use kiln_backend_cpu::lower::{self, LowerOptions, SharedTables};
use kiln_backend_cpu::memory;
use kiln_backend_cpu::narrow::NarrowValues;
use kiln_ir::Graph;
use kiln_runtime::manifest::{Manifest, ModelInfo, Step, Target};
use kiln_runtime::Artifact;

/// The `arch` of a CUDA artifact's target.
pub const ARCH: &str = "sm_90";

/// Compiles `programs` (e.g. `prefill` and `decode` of one model) into one artifact.
pub fn compile(programs: &[Graph], model: ModelInfo) -> Result<Artifact> {
    let mut module = ptx::Module::default();
    let mut shared = SharedTables::default();
    // The lowering's work items and GEMM choice are the CPU's; kernels here choose their own.
    // Kernels widen bf16 as they read it and round to bf16 as they write it. Plain bf16
    // matmuls are offered to cuBLASLt (`kernels::library_gemm`), so their epilogues are maps.
    // The tensor-core attention writes a log-sum-exp beside its values, and its backward by
    // the keys the values' gradient beside the keys'. A training step's
    // weights and moments are updated in place (the GPU runner hands the old ones over).
    let options = LowerOptions {
        gemm_min_rows: None,
        narrow: NarrowValues::Bf16,
        library_matmuls: true,
        attention_with_lse: Some(kernels::attention_with_lse),
        attention_key_value_grads: Some(kernels::attention_key_value_grads),
        state_in_place: true,
    };
    let mut descs = Vec::new();
    for g in programs {
        let mut lowered = lower::lower(g, &mut shared, &options).map_err(|e| {
            CompileError(format!(
                "{e} (the CUDA backend shares the CPU backend's lowering and its limits)"
            ))
        })?;
        kernels::order(&mut lowered.kernels);
        let step_of: Vec<usize> = kernels::group(&lowered.kernels)
            .iter()
            .enumerate()
            .flat_map(|(step, group)| std::iter::repeat_n(step, group.kernels()))
            .collect();
        let memory = memory::plan_steps(&mut lowered, &step_of);
        let groups = kernels::group(&lowered.kernels);
        let mut steps = Vec::new();
        let mut first = 0;
        for (step, group) in groups.iter().enumerate() {
            let members = &lowered.kernels[first..first + group.kernels()];
            let kind = group.kind();
            let label = members
                .iter()
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join(" + ");
            let (entry, launch) = kernels::emit(group).map_err(|e| {
                CompileError(format!(
                    "program `{}`: cannot compile step {step}, a {kind} kernel ({label}): {e}",
                    g.name
                ))
            })?;
            let name = module.push_distinct(kind, entry);
            let (work, item_bytes) = members[0].0.work();
            steps.push(Step {
                kernel: name,
                work,
                item_bytes,
                label,
                launch: Some(launch),
                gemm: kernels::library_gemm(group),
            });
            first += group.kernels();
        }
        descs.push(lowered.into_desc(steps, memory));
    }
    Ok(Artifact {
        manifest: Manifest {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            target: Target {
                arch: ARCH.into(),
                features: vec![format!("ptx{}", ptx::PTX_VERSION)],
            },
            model,
            weights: shared.weights,
            constants: shared.constants,
            programs: descs,
        },
        object: module.text().into_bytes(),
        data: shared.data,
    })
}
