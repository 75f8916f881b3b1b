//! `kiln compile`: a model config (config.json, model directory or .gguf) in, a `.kiln`
//! artifact out, holding the `prefill` and `decode` programs.

use clap::{Args, ValueEnum};
use kiln::compile::{compile_cpu_with, DECODING_PROGRAMS};
use kiln::model;
use kiln_frontend::BuildOptions;
use kiln_passes::{PipelineOptions, Precision};
use kiln_runtime::Artifact;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct CompileArgs {
    /// config.json, a model directory, or a .gguf file (default: an embedded tiny Llama).
    model: Option<PathBuf>,
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
    /// Mixed-precision policy: f32, bf16-weights (weights stored bf16, f32 compute), bf16 or f16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Cpu,
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
    let artifact = match args.target {
        Target::Cpu => compile_cpu_with(
            &spec,
            &DECODING_PROGRAMS,
            opts,
            &PipelineOptions {
                precision: args.precision,
            },
        )?,
    };
    artifact.write(&args.output).map_err(|e| e.to_string())?;
    let bytes = artifact.to_bytes();
    let kernels: usize = artifact
        .manifest
        .programs
        .iter()
        .map(|p| p.steps.len())
        .sum();
    eprintln!(
        "wrote {} ({} KiB, {} kernels, precision {}, sha256 {}) in {:.2} s",
        args.output.display(),
        bytes.len() / 1024,
        kernels,
        args.precision,
        &Artifact::content_hash(&bytes)[..16],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
