//! `kiln bench`: prefill and decode throughput of an artifact on the CPU or the GPU, the medians
//! of several runs after a warm-up, the time to load the model and to run the first (warm-up)
//! generation, and peak memory — as a table or one JSON object.
//!
//! The prompt is fixed pseudo-random token ids (one copy per sequence of the batch), decoding is
//! greedy and never stops early, so every run does the same work. Without `--weights` the model
//! runs on seeded random weights: the figures are the same, the text is noise.

use crate::device::Device;
use clap::Args;
use kiln::model;
use kiln_runtime::cuda::CudaModel;
use kiln_runtime::executor::default_threads;
use kiln_runtime::generate::{DecodeProgram, GenerateOptions, Generator};
use kiln_runtime::{load_weights, Artifact, Model, Sampling};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// The `.kiln` artifact.
    artifact: PathBuf,
    /// Weights: a .gguf, a .safetensors file, a sharded index or a model directory (default:
    /// seeded random weights).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Where to run: `cpu`, or `cuda` for an artifact compiled with `--target cuda`.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// On the GPU, launch every kernel of a decode step instead of replaying a CUDA graph.
    #[arg(long)]
    no_cuda_graphs: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print where the time goes in the timed runs (not the warm-up), the costliest kinds
    /// of step in each program (on the GPU, steps are then launched one by one and timed with
    /// events, without graphs).
    #[arg(long)]
    profile: bool,
    /// With `--profile`, also write every step's time to this CSV file (program, step, kernel,
    /// label, seconds).
    #[arg(long, requires = "profile")]
    profile_steps: Option<PathBuf>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What one benchmark measured.
struct Measured {
    prefill: f64,
    decode: f64,
    /// The warm-up generation: its prefill and first decode step, and all of it.
    first_step_s: f64,
    first_run_s: f64,
}

/// The warm-up generation, then `runs` timed ones.
fn measure<P: DecodeProgram>(
    args: &BenchArgs,
    generator: &mut Generator<P>,
    vocab: u64,
) -> Result<Measured, String> {
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let prompts = vec![prompt; args.batch];
    let opts = GenerateOptions {
        max_new_tokens: args.decode_tokens + 1,
        sampling: Sampling::Greedy,
        eos: Vec::new(),
    };
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let (mut first_step_s, mut first_run_s) = (0.0, 0.0);
    for run in 0..=args.runs {
        let started = Instant::now();
        // Two tokens per sequence: the prefill's and the first decode step's.
        let mut tokens = 0;
        let out = generator
            .generate(&prompts, &opts, |_, _| {
                tokens += 1;
                if run == 0 && tokens == 2 * args.batch {
                    first_step_s = started.elapsed().as_secs_f64();
                }
            })
            .map_err(|e| e.to_string())?;
        if run == 0 {
            first_run_s = started.elapsed().as_secs_f64();
            // The profile times warm runs only (the first run loads kernels and pages memory).
            if args.profile {
                generator.set_profiling(true);
            }
        } else {
            prefill.push(out.prefill_tokens_per_second());
            decode.push(out.decode_tokens_per_second());
        }
    }
    Ok(Measured {
        prefill: median(prefill),
        decode: median(decode),
        first_step_s,
        first_run_s,
    })
}

/// What a profile's times are summed over: every timed run (the warm-up is not profiled).
fn timed_runs(args: &BenchArgs) -> String {
    match args.runs {
        1 => "1 run".into(),
        n => format!("{n} runs"),
    }
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.runs == 0 || args.prompt_tokens == 0 || args.decode_tokens == 0 || args.batch == 0 {
        return Err("--runs, --prompt-tokens, --decode-tokens and --batch must be positive".into());
    }
    let file = args.artifact.display().to_string();
    let artifact = Artifact::read(&args.artifact).map_err(|e| e.to_string())?;
    let m = &artifact.manifest;
    let vocab = m.model.vocab_size as u64;
    let weights = match &args.weights {
        Some(path) => {
            load_weights(path, &m.weights, &m.model)
                .map_err(|e| e.to_string())?
                .tensors
        }
        None => model::random_weights(&m.weights, 0),
    };
    let started = Instant::now();
    // Whether the GPU model runs its offered matmuls on cuBLASLt.
    let mut gemm_library = false;
    let (measured, load_s, gpu) = match args.device {
        Device::Cpu => {
            let model =
                Model::new(artifact, &file, weights, args.threads).map_err(|e| e.to_string())?;
            let load_s = started.elapsed().as_secs_f64();
            let mut generator = Generator::new(&model).map_err(|e| e.to_string())?;
            let measured = measure(&args, &mut generator, vocab)?;
            if !args.json {
                report(&args, &measured, load_s, None);
            }
            crate::profile::report(
                &generator.profiles(),
                &timed_runs(&args),
                args.profile_steps.as_deref(),
            )?;
            (measured, load_s, None)
        }
        Device::Cuda => {
            let model = CudaModel::new(artifact, &file, weights).map_err(|e| e.to_string())?;
            let load_s = started.elapsed().as_secs_f64();
            gemm_library = model.uses_gemm_library();
            if let Some(gemm) = model.gemm_report() {
                eprintln!("{gemm}");
            }
            let mut generator =
                Generator::on_gpu(&model, !args.no_cuda_graphs).map_err(|e| e.to_string())?;
            let measured = measure(&args, &mut generator, vocab)?;
            let gpu = model.device_report().map_err(|e| e.to_string())?;
            if !args.json {
                report(&args, &measured, load_s, Some(&gpu));
            }
            crate::profile::report(
                &generator.profiles(),
                &timed_runs(&args),
                args.profile_steps.as_deref(),
            )?;
            (measured, load_s, Some(gpu))
        }
    };
    if args.json {
        let (gpu, in_use) = gpu.unwrap_or_default();
        let cuda = args.device == Device::Cuda;
        let report = serde_json::json!({
            "peer": format!("kiln {}", env!("CARGO_PKG_VERSION")),
            "device": if cuda { "cuda" } else { "cpu" },
            "gpu": gpu,
            "cuda_graphs": cuda && !args.no_cuda_graphs,
            "gemm_library": gemm_library,
            "batch": args.batch,
            "prompt_tokens": args.prompt_tokens,
            "decode_tokens": args.decode_tokens,
            "prefill_tokens_per_s": measured.prefill,
            "decode_tokens_per_s": measured.decode,
            "load_s": load_s,
            "first_step_s": measured.first_step_s,
            "first_run_s": measured.first_run_s,
            "peak_rss_bytes": peak_rss_bytes().unwrap_or(0),
            "gpu_memory_in_use_bytes": in_use,
            "threads": args.threads,
            "runs": args.runs,
        });
        println!("{report}");
    }
    Ok(())
}

fn report(args: &BenchArgs, m: &Measured, load_s: f64, gpu: Option<&(String, usize)>) {
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    println!("| figure | kiln |\n| --- | --- |");
    println!(
        "| prefill {} × {} tokens (tok/s, median of {}) | {:.1} |",
        args.batch, args.prompt_tokens, args.runs, m.prefill
    );
    println!(
        "| decode {} × {} tokens (tok/s, median of {}) | {:.2} |",
        args.batch, args.decode_tokens, args.runs, m.decode
    );
    println!("| loading the model (s) | {load_s:.2} |");
    println!(
        "| warm-up: prefill and first decode step (s) | {:.3} |",
        m.first_step_s
    );
    println!("| warm-up: whole generation (s) | {:.2} |", m.first_run_s);
    println!(
        "| peak memory (MiB) | {:.0} |",
        mib(peak_rss_bytes().unwrap_or(0) as f64)
    );
    if let Some((name, in_use)) = gpu {
        println!(
            "| {name} memory in use (MiB) | {:.0} |",
            mib(*in_use as f64)
        );
    }
}
