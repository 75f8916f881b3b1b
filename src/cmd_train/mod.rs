//! `kiln train`: compiles a model's training programs, then trains it on token data with the
//! runtime's trainer — learning-rate warmup and cosine decay (or a constant rate), a batch-size
//! ramp, clipping, AdamW, loss-spike handling and checkpoints — showing a progress bar, writing
//! a CSV log and a PNG loss curve, and saving the final weights. With no model and no data it
//! trains the embedded tiny Llama on the embedded text, then generates from it.

mod data;
mod report;

use crate::device::Device;
use clap::{Args, ValueEnum};
use kiln::compile::{compile, Target, DECODING_PROGRAMS};
use kiln::model;
use kiln_frontend::{BuildOptions, Program};
use kiln_passes::{PipelineOptions, Precision, Recompute};
use kiln_runtime::cuda::CudaModel;
use kiln_runtime::executor::default_threads;
use kiln_runtime::generate::{DecodeProgram, GenerateOptions, Generator};
use kiln_runtime::manifest::ModelInfo;
use kiln_runtime::train::{
    BatchRamp, LrSchedule, Outcome, SpikeOptions, SpikePolicy, StepReport, TokenData, TrainOptions,
    TrainProgram, Trainer,
};
use kiln_runtime::{load_weights, open_tokenizer, Model, Sampling, Tensor, Tokenizer};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct TrainArgs {
    /// A config.json or model directory (default: the embedded tiny Llama).
    model: Option<PathBuf>,
    /// Initial weights (safetensors with Hugging Face names; default: seeded random weights).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Training data: a text file, or token ids as safetensors (`tokens` or `input_ids`);
    /// default: the embedded text.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A tokenizer.json for text data (default: the model's, or bytes for the embedded model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Optimizer steps to run (in all, counting those of a resumed checkpoint).
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Positions per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Warmup steps (linear from lr/warmup).
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// The rate the cosine decays to by the last step (default: lr / 10).
    #[arg(long)]
    min_lr: Option<f64>,
    /// A constant rate: no warmup and no decay.
    #[arg(long, conflicts_with_all = ["warmup", "min_lr"])]
    constant_lr: bool,
    /// Micro-batches per step as `STEP:COUNT,…` (e.g. `1:1,100:2`); default: one.
    #[arg(long)]
    batch_ramp: Option<String>,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// No gradient clipping.
    #[arg(long, conflicts_with = "clip")]
    no_clip: bool,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.95)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Label smoothing of the cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Weight of the z-loss (`lse²`).
    #[arg(long, default_value_t = 0.0)]
    z_loss: f64,
    /// Scale the gradient reaching the embedding table through the lookup (GLM-130B's
    /// embedding-gradient shrink; 1: none).
    #[arg(long, default_value_t = 1.0)]
    embedding_grad_scale: f64,
    /// Activations to recompute in the backward: `save-all`, `selective` (all but the matmuls'
    /// and attentions' results), `layers`, or a memory budget such as `64MiB` (as
    /// `--memory-budget`).
    #[arg(long, default_value = "save-all", conflicts_with = "memory_budget")]
    recompute: Recompute,
    /// Recompute the least whose peak memory fits this budget (e.g. `64MiB`): layers made
    /// selective first, first layer first, then layers recomputed whole.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Attention as `flash_attention` kernels (forward and backward; memory linear in the
    /// sequence) or as the matmuls and softmax it is made of. `auto` fuses it where its
    /// backward runs on tensor cores (`--device cuda --precision bf16`) and leaves it unfused
    /// elsewhere, where the unfused matmuls are faster (see docs/training.md).
    #[arg(long, value_enum, default_value = "auto")]
    attention: AttentionArg,
    /// Reject a step whose loss exceeds this many times the recent mean (non-finite losses and
    /// gradients are always rejected).
    #[arg(long)]
    spike_factor: Option<f64>,
    /// What to do with a rejected step.
    #[arg(long, value_enum, default_value = "skip")]
    spike_policy: PolicyArg,
    /// Where to write checkpoints (`step-N.safetensors`); needed to roll back.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every this many steps (and after the last).
    #[arg(long, default_value_t = 100, requires = "checkpoint_dir")]
    checkpoint_every: u64,
    /// Continue from a checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write the final weights here (safetensors, Hugging Face names).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write one CSV row per step here.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Draw the loss curve into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// After training, generate from this prompt (default for the embedded model: "The kiln").
    #[arg(long)]
    generate: Option<String>,
    /// Seed of the random initial weights and of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Where to train: `cpu`, or `cuda` (compiles for the GPU; the weights, moments and
    /// gradient sums stay on it, and each step replays CUDA graphs).
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Mixed precision: `f32`, or `bf16` (matmuls on bf16 operands, f32 master weights,
    /// gradients and optimizer; the CUDA backend only).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// After training, print where the time went: the costliest kinds of step of each training
    /// program (on the GPU, steps are then launched one by one and timed with events).
    #[arg(long)]
    profile: bool,
    /// With `--profile`, also write every step's time to this CSV file (program, step, kernel,
    /// label, seconds).
    #[arg(long, requires = "profile")]
    profile_steps: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttentionArg {
    Auto,
    Fused,
    Unfused,
}

impl AttentionArg {
    /// Whether attention is fused on `device` at `precision`.
    fn fused(self, device: Device, precision: Precision) -> bool {
        match self {
            AttentionArg::Auto => device == Device::Cuda && precision == Precision::Bf16,
            AttentionArg::Fused => true,
            AttentionArg::Unfused => false,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Skip,
    Rollback,
}

fn options(args: &TrainArgs) -> Result<TrainOptions, String> {
    let lr = if args.constant_lr {
        LrSchedule::constant(args.lr)
    } else {
        LrSchedule {
            peak: args.lr,
            warmup: args.warmup.min(args.steps.saturating_sub(1)),
            decay_until: Some(args.steps),
            floor: args.min_lr.unwrap_or(args.lr / 10.0),
        }
    };
    let ramp = match &args.batch_ramp {
        Some(text) => BatchRamp::parse(text).map_err(|e| e.to_string())?,
        None => BatchRamp::constant(1),
    };
    let policy = match args.spike_policy {
        PolicyArg::Skip => SpikePolicy::Skip,
        PolicyArg::Rollback if args.checkpoint_dir.is_none() => {
            return Err("--spike-policy rollback: needs --checkpoint-dir".into())
        }
        PolicyArg::Rollback => SpikePolicy::Rollback,
    };
    Ok(TrainOptions {
        batch: args.batch,
        lr,
        ramp,
        beta1: args.beta1,
        beta2: args.beta2,
        eps: args.eps,
        weight_decay: args.weight_decay,
        max_grad_norm: (!args.no_clip).then_some(args.clip),
        spike: SpikeOptions {
            factor: args.spike_factor,
            policy,
            ..SpikeOptions::default()
        },
    })
}

/// The tokenizer for text data: given, beside the model, or bytes for the embedded model.
fn tokenizer(args: &TrainArgs, info: &ModelInfo) -> Result<Tokenizer, String> {
    match (&args.tokenizer, &args.model) {
        (Some(path), _) => open_tokenizer(Some(path), path, info),
        (None, Some(model_path)) => open_tokenizer(None, model_path, info),
        (None, None) => Ok(Tokenizer::bytes()),
    }
    .map_err(|e| e.to_string())
}

pub fn run(args: TrainArgs) -> Result<(), String> {
    let started = Instant::now();
    let options = options(&args)?;
    let spec = model::spec(args.model.as_deref())?;
    if args.seq > spec.max_positions {
        return Err(format!(
            "--seq: {} is longer than the model's {} positions",
            args.seq, spec.max_positions
        ));
    }
    // Sequences up to the model's limit for generation after training, so it has room.
    let build = BuildOptions {
        max_batch: args.batch,
        max_seq: spec.max_positions,
        loss: kiln_frontend::LossOptions {
            label_smoothing: args.label_smoothing,
            z_loss: args.z_loss,
            embedding_gradient_scale: args.embedding_grad_scale,
        },
    };
    let prompt = args
        .generate
        .clone()
        .or_else(|| args.model.is_none().then(|| "The kiln".to_string()));
    // `accumulate` only for steps of several micro-batches: each program adds compile and load
    // time.
    let accumulate = (options.ramp.most() > 1).then_some(Program::Accumulate);
    let programs: Vec<Program> = [Program::TrainStep].into_iter().chain(accumulate).collect();
    let recompute = match &args.memory_budget {
        Some(budget) => match budget.parse()? {
            Recompute::Budget(bytes) => Recompute::Budget(bytes),
            _ => {
                return Err(format!(
                    "--memory-budget: expected a size like `64MiB`, found `{budget}`"
                ))
            }
        },
        None => args.recompute,
    };
    let pipeline = PipelineOptions {
        precision: args.precision,
        recompute,
        skip: if args.attention.fused(args.device, args.precision) {
            Vec::new()
        } else {
            vec!["attention-fusion".to_string()]
        },
    };
    let target = match args.device {
        Device::Cpu => Target::Cpu,
        Device::Cuda => Target::Cuda,
    };
    // The training programs only ever see `--seq` positions, and a memory budget is met at
    // the programs' maxima: compiled for exactly that length.
    let training = BuildOptions {
        max_seq: args.seq,
        ..build
    };
    let artifact = compile(target, &spec, &programs, training, &pipeline)?;
    // Generating after training runs the f32 master weights, whatever the training precision,
    // through decoding programs of their own.
    let decoding = PipelineOptions {
        precision: Precision::F32,
        ..pipeline
    };
    let generation = prompt
        .as_ref()
        .map(|_| compile(target, &spec, &DECODING_PROGRAMS, build, &decoding))
        .transpose()?;
    let compiled = started.elapsed().as_secs_f64();
    let source = args
        .model
        .as_ref()
        .map_or("<embedded tiny-llama>".into(), |p| p.display().to_string());
    let weights = match &args.init {
        Some(path) => {
            let m = &artifact.manifest;
            load_weights(path, &m.weights, &m.model)
                .map_err(|e| e.to_string())?
                .tensors
        }
        None => model::random_weights(&artifact.manifest.weights, args.seed),
    };
    let tokenizer = tokenizer(&args, &artifact.manifest.model)?;
    let ids = data::tokens(args.data.as_deref(), &tokenizer, spec.vocab_size)?;
    let data_name = args
        .data
        .as_ref()
        .map_or("<embedded text>".into(), |p| p.display().to_string());
    let mut stream = TokenData::new(ids, args.seq, args.batch, args.seed, &data_name)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "compiled {source} in {compiled:.2} s; training on {} tokens of {data_name} ({} windows of {})",
        stream.windows() * args.seq,
        stream.windows(),
        args.seq
    );
    let err = |e: kiln_runtime::RuntimeError| e.to_string();
    let trained = match args.device {
        Device::Cpu => {
            let mut model = Model::new(artifact, &source, weights, args.threads).map_err(err)?;
            let params = model.take_weights();
            let trainer = Trainer::new(&model, params, options).map_err(err)?;
            train(&args, trainer, &mut stream)?
        }
        Device::Cuda => {
            let loading = Instant::now();
            let mut model = CudaModel::new(artifact, &source, weights).map_err(err)?;
            eprintln!(
                "loaded on the GPU in {:.2} s (the driver compiles the PTX; the weights are copied)",
                loading.elapsed().as_secs_f64()
            );
            if let Some(gemm) = model.gemm_report() {
                eprintln!("{gemm}");
            }
            let params = model.take_weights();
            let trainer = Trainer::on_gpu(&model, params, options).map_err(err)?;
            let trained = train(&args, trainer, &mut stream)?;
            let (gpu, in_use) = model.device_report().map_err(err)?;
            eprintln!(
                "{gpu}: {:.2} GiB in use",
                in_use as f64 / (1u64 << 30) as f64
            );
            trained
        }
    };
    let (Some(prompt), Some(generation)) = (prompt, generation) else {
        return Ok(());
    };
    match args.device {
        Device::Cpu => {
            let model = Model::new(generation, &source, trained, args.threads).map_err(err)?;
            let mut generator = Generator::new(&model).map_err(err)?;
            generate(&mut generator, &tokenizer, &prompt, args.seq)
        }
        Device::Cuda => {
            let model = CudaModel::new(generation, &source, trained).map_err(err)?;
            let mut generator = Generator::on_gpu(&model, true).map_err(err)?;
            generate(&mut generator, &tokenizer, &prompt, args.seq)
        }
    }
}

/// Trains (from the checkpoint of `--resume`, if given), writes the log, the plot and the final
/// weights the arguments ask for, and returns the trained weights on the host.
fn train<P: TrainProgram>(
    args: &TrainArgs,
    mut trainer: Trainer<P>,
    stream: &mut TokenData,
) -> Result<Vec<Tensor>, String> {
    trainer.set_profiling(args.profile);
    if let Some(path) = &args.resume {
        let position = trainer.resume(path).map_err(|e| e.to_string())?;
        stream.seek(position).map_err(|e| e.to_string())?;
    }
    let rows = train_loop(args, &mut trainer, stream)?;
    if let Some(path) = &args.save {
        trainer.save_weights(path).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.log {
        report::write_csv(path, &rows)?;
    }
    if let Some(path) = &args.plot {
        let losses: Vec<f64> = rows.iter().map(|(r, _)| r.loss).collect();
        report::plot_loss(path, &losses)?;
    }
    summarize(&rows, trainer.arena_bytes());
    crate::profile::report(
        &trainer.profiles(),
        "this run's training steps",
        args.profile_steps.as_deref(),
    )?;
    trainer.host_params().map_err(|e| e.to_string())
}

fn train_loop<P: TrainProgram>(
    args: &TrainArgs,
    trainer: &mut Trainer<P>,
    stream: &mut TokenData,
) -> Result<Vec<(StepReport, f64)>, String> {
    let bar = indicatif::ProgressBar::new(args.steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps · {msg} · {elapsed} (eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.set_position(trainer.step_count());
    let started = Instant::now();
    let mut rows = Vec::new();
    while trainer.step_count() < args.steps {
        let report = trainer.step(stream).map_err(|e| e.to_string())?;
        if report.outcome != Outcome::Applied {
            bar.println(format!("step {}: {:?}", report.step + 1, report.outcome));
        }
        bar.set_position(report.step);
        bar.set_message(format!(
            "loss {:.4} · lr {:.2e} · |g| {:.3}",
            report.loss, report.lr, report.grad_norm
        ));
        let at_interval = report.step % args.checkpoint_every == 0;
        let applied = report.outcome == Outcome::Applied;
        if let Some(dir) = &args.checkpoint_dir {
            if applied && (at_interval || report.step == args.steps) {
                checkpoint(trainer, dir, stream)?;
            }
        }
        rows.push((report, started.elapsed().as_secs_f64()));
    }
    bar.finish();
    Ok(rows)
}

fn checkpoint<P: TrainProgram>(
    trainer: &mut Trainer<P>,
    dir: &Path,
    stream: &TokenData,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("step-{}.safetensors", trainer.step_count()));
    trainer
        .save_checkpoint(&path, stream.position())
        .map_err(|e| e.to_string())
}

fn summarize(rows: &[(StepReport, f64)], arena: usize) {
    let (Some((first, _)), Some((last, seconds))) = (rows.first(), rows.last()) else {
        eprintln!("no step to run");
        return;
    };
    let tokens: usize = rows.iter().map(|(r, _)| r.tokens).sum();
    let rejected = rows
        .iter()
        .filter(|(r, _)| r.outcome != Outcome::Applied)
        .count();
    eprintln!(
        "{} steps in {seconds:.1} s ({:.0} tokens/s); loss {:.4} → {:.4}; intermediates {:.1} MiB{}",
        rows.len(),
        tokens as f64 / seconds,
        first.loss,
        last.loss,
        arena as f64 / (1u64 << 20) as f64,
        if rejected > 0 {
            format!("; {rejected} steps rejected")
        } else {
            String::new()
        }
    );
}

/// Greedy continuation of `prompt`, as long as the training sequences: the positions the model
/// has learned.
fn generate<P: DecodeProgram>(
    generator: &mut Generator<P>,
    tokenizer: &Tokenizer,
    prompt: &str,
    positions: usize,
) -> Result<(), String> {
    let ids = tokenizer.encode(prompt, false).map_err(|e| e.to_string())?;
    if ids.is_empty() || ids.len() >= positions {
        return Err(format!(
            "--generate: the prompt is {} tokens; it needs 1 to {}",
            ids.len(),
            positions - 1
        ));
    }
    let options = GenerateOptions {
        max_new_tokens: (positions - ids.len()).min(120),
        sampling: Sampling::Greedy,
        eos: tokenizer.eos_ids().to_vec(),
    };
    let out = generator
        .generate(&[ids], &options, |_, _| {})
        .map_err(|e| e.to_string())?;
    let text = tokenizer
        .decode(&out.tokens[0], true)
        .map_err(|e| e.to_string())?;
    println!("{prompt}{text}");
    Ok(())
}
