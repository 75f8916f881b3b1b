//! `kiln compile`: a model config (config.json, model directory or .gguf) in, a `.kiln`
//! artifact out, holding the `prefill` and `decode` programs that generation runs and the
//! `forward` program that scores every position (by default; `--programs` chooses).

use clap::{Args, ValueEnum};
use kiln::compile::{compile, Target as Backend};
use kiln::model;
use kiln_frontend::{BuildOptions, Program};
use kiln_passes::{Pipeline, PipelineOptions, Precision, Recompute};
use kiln_runtime::Artifact;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct CompileArgs {
    /// config.json, a model directory, or a .gguf file (default: an embedded tiny Llama).
    model: Option<PathBuf>,
    /// The backend: `cpu` (x86-64 object code) or `cuda` (PTX for sm_90; the artifact is for a
    /// CUDA executor).
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
    /// Where to write the artifact.
    #[arg(short, long)]
    output: PathBuf,
    /// Largest batch the programs accept.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Longest sequence (prompt plus generated tokens); default: the model's position limit.
    #[arg(long)]
    max_seq: Option<usize>,
    /// The programs to compile, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "prefill,decode,forward")]
    programs: Vec<Program>,
    /// Mixed-precision policy: f32, bf16-weights (weights stored bf16, f32 compute), bf16 or f16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Passes of the pipeline to leave out, comma-separated (e.g. to measure what they buy).
    #[arg(long, value_delimiter = ',')]
    skip_passes: Vec<String>,
    /// Training programs: activations to recompute in the backward — `save-all`, `selective`
    /// (all but the matmuls' and attentions' results), `layers`, or a memory budget such as
    /// `64MiB` (the least recomputed that fits it: layers made selective, then recomputed whole).
    #[arg(long, default_value = "save-all")]
    recompute: Recompute,
}

/// The backend a command compiles for, as the command line names it.
#[derive(Clone, Copy, ValueEnum)]
pub enum Target {
    Cpu,
    Cuda,
}

impl Target {
    pub fn backend(self) -> Backend {
        match self {
            Target::Cpu => Backend::Cpu,
            Target::Cuda => Backend::Cuda,
        }
    }
}

pub fn build_options(
    spec: &kiln_frontend::ModelSpec,
    max_batch: Option<usize>,
    max_seq: Option<usize>,
) -> BuildOptions {
    let mut opts = BuildOptions::for_spec(spec);
    opts.max_batch = max_batch.unwrap_or(opts.max_batch);
    opts.max_seq = max_seq.unwrap_or(opts.max_seq);
    opts
}

pub fn run(args: CompileArgs) -> Result<(), String> {
    let started = Instant::now();
    let spec = model::spec(args.model.as_deref())?;
    let opts = build_options(&spec, args.max_batch, args.max_seq);
    let unknown = Pipeline::unknown(&args.skip_passes);
    if !unknown.is_empty() {
        return Err(format!(
            "--skip-passes: no pass named {} (the pipeline is {})",
            unknown.join(", "),
            Pipeline::standard().names().join(", ")
        ));
    }
    let pipeline = PipelineOptions {
        precision: args.precision,
        recompute: args.recompute,
        skip: args.skip_passes.clone(),
    };
    let backend = args.target.backend();
    let artifact = compile(backend, &spec, &args.programs, opts, &pipeline)?;
    artifact.write(&args.output).map_err(|e| e.to_string())?;
    let bytes = artifact.to_bytes();
    eprintln!(
        "wrote {} ({} KiB, target {}, precision {}, sha256 {}) in {:.2} s",
        args.output.display(),
        bytes.len() / 1024,
        artifact.manifest.target.arch,
        args.precision,
        &Artifact::content_hash(&bytes)[..16],
        started.elapsed().as_secs_f64()
    );
    for p in &artifact.manifest.programs {
        eprintln!(
            "  {}: {} kernels; at the maxima, intermediates in a {} arena ({} apart)",
            p.name,
            p.steps.len(),
            human_bytes(p.memory.peak_bytes),
            human_bytes(p.memory.intermediate_bytes)
        );
        if backend == Backend::Cuda {
            eprintln!("    {}", kernel_counts(p));
        }
    }
    Ok(())
}

/// The kernels of a CUDA program by kind (`map 12, reduce 5, …`) and how many distinct entries
/// they run: a CUDA kernel's entry is named `KIND_N`.
fn kernel_counts(p: &kiln_runtime::manifest::ProgramDesc) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut entries = std::collections::HashSet::new();
    for step in &p.steps {
        entries.insert(step.kernel.as_str());
        let kind = step
            .kernel
            .rsplit_once('_')
            .map_or(&*step.kernel, |(k, _)| k);
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(
        "kernels by kind: {}; {} distinct entries",
        parts.join(", "),
        entries.len()
    )
}

/// `12.3 KiB`, `4.5 MiB`, `1.2 GiB`.
fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}
