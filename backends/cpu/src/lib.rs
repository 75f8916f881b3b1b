//! `kiln-backend-cpu`: compiles graphs into an artifact of x86-64 object code (Cranelift).
//!
//! [`compile`] lowers each program to buffers, views and kernels (`lower`), places its
//! intermediates in one arena (`memory`), emits every kernel as one function of a single object
//! module (`codegen`), and packs the object, the manifest
//! and the constants into a `kiln_runtime::Artifact`. The runtime runs it; this crate never
//! executes code.

pub mod codegen;
pub mod error;
pub mod isa;
pub mod kernel;
pub mod lower;
pub mod memory;
pub mod narrow;
pub mod view;

pub use error::{CompileError, Result};

use cranelift_object::{ObjectBuilder, ObjectModule};
use kiln_ir::Graph;
use kiln_runtime::manifest::{Manifest, ModelInfo, Step, Target};
use kiln_runtime::Artifact;
use lower::SharedTables;

/// Code-generation choices.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuOptions {
    /// Matmul tiles with at least this many rows call the GEMM library (the `gemm` crate);
    /// smaller ones run kiln's own loops. `None`: never call it. The default, 8, comes from
    /// `backends/cpu/examples/matmul_choice.rs` (see docs/backend-cpu.md).
    pub gemm_min_rows: Option<i64>,
}

impl Default for CpuOptions {
    fn default() -> CpuOptions {
        CpuOptions {
            gemm_min_rows: Some(8),
        }
    }
}

/// Compiles `programs` (e.g. `prefill` and `decode` of one model) into one artifact.
pub fn compile(programs: &[Graph], model: ModelInfo) -> Result<Artifact> {
    compile_with(programs, model, &CpuOptions::default())
}

/// [`compile`] with explicit code-generation choices.
pub fn compile_with(
    programs: &[Graph],
    model: ModelInfo,
    options: &CpuOptions,
) -> Result<Artifact> {
    let builder = ObjectBuilder::new(
        isa::target_isa()?,
        "kiln",
        cranelift_module::default_libcall_names(),
    )?;
    let mut module = ObjectModule::new(builder);
    let mut shared = SharedTables::default();
    let mut descs = Vec::new();
    let lower_options = lower::LowerOptions {
        gemm_min_rows: options.gemm_min_rows,
        narrow: narrow::NarrowValues::Storage,
        library_matmuls: false,
        attention_with_lse: None,
        attention_key_value_grads: None,
        state_in_place: false,
    };
    for g in programs {
        let mut lowered = lower::lower(g, &mut shared, &lower_options)?;
        let memory = memory::plan_intermediates(&mut lowered);
        let mut steps = Vec::new();
        for (i, (kernel, label)) in lowered.kernels.iter().enumerate() {
            let name = format!("{}_{i}", lowered.name);
            codegen::define(&mut module, &name, kernel)?;
            let (work, item_bytes) = kernel.work();
            steps.push(Step {
                kernel: name,
                work,
                item_bytes,
                label: label.clone(),
                launch: None,
                gemm: None,
            });
        }
        descs.push(lowered.into_desc(steps, memory));
    }
    let object = module
        .finish()
        .emit()
        .map_err(|e| CompileError(format!("cannot write the object file: {e}")))?;
    Ok(Artifact {
        manifest: Manifest {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            target: Target {
                arch: "x86_64".into(),
                features: isa::FEATURES.iter().map(|s| s.to_string()).collect(),
            },
            model,
            weights: shared.weights,
            constants: shared.constants,
            programs: descs,
        },
        object,
        data: shared.data,
    })
}
