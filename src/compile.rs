//! The compiler driver: spec → one graph per program → pass pipeline → backend (CPU or CUDA)
//! → artifact.

use kiln_frontend::{build, BuildOptions, ModelSpec, Program};
use kiln_ir::Graph;
use kiln_passes::{Pipeline, PipelineOptions, Precision};
use kiln_runtime::manifest::ModelInfo;
use kiln_runtime::Artifact;

/// The programs generation needs.
pub const DECODING_PROGRAMS: [Program; 2] = [Program::Prefill, Program::Decode];

/// What the runtime needs to know of the model, from its spec.
pub fn model_info(spec: &ModelSpec) -> ModelInfo {
    ModelInfo {
        family: spec.family.clone(),
        vocab_size: spec.vocab_size,
        num_layers: spec.num_layers,
        heads: spec.attention.heads,
        kv_heads: spec.attention.kv_heads,
        head_dim: spec.attention.head_dim,
        max_positions: spec.max_positions,
        tied_embeddings: spec.embeddings.tied,
        bos_token_id: spec.tokens.bos,
        eos_token_ids: spec.tokens.eos.clone(),
        chat_template: None,
    }
}

/// The backend an artifact is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// x86-64 object code (Cranelift).
    Cpu,
    /// PTX for sm_90.
    Cuda,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "CPU",
            Target::Cuda => "CUDA",
        }
    }

    /// The standard pipeline with `options`, as this target's programs run it: for CUDA,
    /// bound by memory bandwidth, `elementwise-fusion` computes values again where they are read
    /// wherever that costs less traffic than storing them (a softmax's exponentials, small
    /// trees over narrow values), and the `recompute` pass's estimate counts
    /// an attention and its log-sum-exp together, as one kernel computes both.
    pub fn pipeline(self, options: &PipelineOptions) -> Pipeline {
        match self {
            Target::Cpu => Pipeline::with_options(options),
            Target::Cuda => Pipeline::with_options(options)
                .fusing_for_bandwidth()
                .computing_attention_with_lse(),
        }
    }

    /// The precision policies the target compiles, for inference or training programs. The CPU
    /// computes in f32: it compiles `bf16-weights` (weights stored bf16, widened as the kernels
    /// read them) but no narrow matmul operands, and trains in f32. CUDA kernels also round
    /// values to bf16 and widen them as they read them (arithmetic stays f32), so they compile
    /// `bf16`, for training too: the pass keeps the master weights f32 and narrows the matmul
    /// operands of the forward and the backward. Neither holds f16 values.
    pub fn precisions(self, training: bool) -> &'static [Precision] {
        match (self, training) {
            (Target::Cpu, false) => &[Precision::F32, Precision::Bf16Weights],
            (Target::Cpu, true) => &[Precision::F32],
            (Target::Cuda, false) => &[Precision::F32, Precision::Bf16Weights, Precision::Bf16],
            (Target::Cuda, true) => &[Precision::F32, Precision::Bf16],
        }
    }

    /// Why the target does not compile `precision`, and what it compiles instead.
    fn refusal(self, precision: Precision) -> String {
        let (reason, instead) = match self {
            Target::Cpu => (
                "which computes in f32",
                format!(
                    "`{}` to store the weights in bf16, or `{}`",
                    Precision::Bf16Weights,
                    Precision::F32
                ),
            ),
            Target::Cuda => (
                "which holds no f16 values",
                format!(
                    "`{}`, `{}` or `{}`",
                    Precision::Bf16,
                    Precision::Bf16Weights,
                    Precision::F32
                ),
            ),
        };
        format!(
            "precision `{precision}` is not supported by the {} backend, {reason} (its matmuls \
             have {} operands); use {instead}",
            self.name(),
            precision.matmul_dtype()
        )
    }
}

/// `` `a`, `b` or `c` ``.
fn quoted(precisions: &[Precision]) -> String {
    let names: Vec<String> = precisions.iter().map(|p| format!("`{p}`")).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Builds `programs`, optimizes each with the standard pipeline and compiles them for the CPU.
pub fn compile_cpu(
    spec: &ModelSpec,
    programs: &[Program],
    opts: BuildOptions,
) -> Result<Artifact, String> {
    compile_cpu_with(spec, programs, opts, &PipelineOptions::default())
}

/// [`compile`] for the CPU.
pub fn compile_cpu_with(
    spec: &ModelSpec,
    programs: &[Program],
    opts: BuildOptions,
    options: &PipelineOptions,
) -> Result<Artifact, String> {
    compile(Target::Cpu, spec, programs, opts, options)
}

/// `programs` built and optimized by the pipeline of `options`, as the backends receive them.
/// The precision policy must be one the target compiles for each program
/// ([`Target::precisions`]).
pub fn optimized_programs(
    target: Target,
    spec: &ModelSpec,
    programs: &[Program],
    opts: BuildOptions,
    options: &PipelineOptions,
) -> Result<Vec<Graph>, String> {
    let precision = options.precision;
    if !target.precisions(false).contains(&precision) {
        return Err(target.refusal(precision));
    }
    let pipeline = target.pipeline(options);
    let mut graphs = Vec::new();
    for &program in programs {
        let allowed = target.precisions(true);
        if program.is_training() && !allowed.contains(&precision) {
            return Err(format!(
                "program `{program}` trains f32 master weights: compile it with precision {}",
                quoted(allowed)
            ));
        }
        let mut g = build(spec, program, opts).map_err(|e| e.to_string())?;
        pipeline.run(&mut g, |_, _| {}).map_err(|e| e.to_string())?;
        graphs.push(g);
    }
    Ok(graphs)
}

/// Builds `programs`, optimizes each with the pipeline of `options` and compiles them for
/// `target` into one artifact.
pub fn compile(
    target: Target,
    spec: &ModelSpec,
    programs: &[Program],
    opts: BuildOptions,
    options: &PipelineOptions,
) -> Result<Artifact, String> {
    let graphs = optimized_programs(target, spec, programs, opts, options)?;
    let model = model_info(spec);
    match target {
        Target::Cpu => kiln_backend_cpu::compile(&graphs, model).map_err(|e| e.to_string()),
        Target::Cuda => kiln_backend_cuda::compile(&graphs, model).map_err(|e| e.to_string()),
    }
}
