//! `kiln bench`: prefill and decode throughput of an artifact, the medians of several runs after
//! a warm-up, and the process's peak resident memory — as a table or one JSON object.
//!
//! The prompt is fixed pseudo-random token ids, decoding is greedy and never stops early, so
//! every run does the same work.

use clap::Args;
use kiln_runtime::executor::default_threads;
use kiln_runtime::generate::{GenerateOptions, Generator};
use kiln_runtime::{open_model, Sampling};
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// The `.kiln` artifact.
    artifact: PathBuf,
    /// Weights: a .gguf, a .safetensors file, a sharded index or a model directory.
    #[arg(long)]
    weights: PathBuf,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print where the time goes: the costliest kinds of step in each program.
    #[arg(long)]
    profile: bool,
}

/// Time per kind of step (the op name, the first word of its label), largest first.
fn print_profile(runner: &kiln_runtime::Runner<'_>) {
    let Some(times) = runner.profile() else {
        return;
    };
    let mut by_kind: std::collections::BTreeMap<&str, (std::time::Duration, usize)> =
        Default::default();
    for (step, t) in runner.desc().steps.iter().zip(times) {
        let kind = step.label.split_whitespace().next().unwrap_or("?");
        let entry = by_kind.entry(kind).or_default();
        entry.0 += *t;
        entry.1 += 1;
    }
    let total: f64 = times.iter().map(|t| t.as_secs_f64()).sum();
    let mut rows: Vec<_> = by_kind.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1 .0));
    println!(
        "\n{}: {:.3} s in {} steps",
        runner.desc().name,
        total,
        times.len()
    );
    println!("| step kind | steps | time (s) | share |\n| --- | --- | --- | --- |");
    for (kind, (t, n)) in rows.iter().take(12) {
        let secs = t.as_secs_f64();
        println!(
            "| {kind} | {n} | {secs:.3} | {:.1}% |",
            100.0 * secs / total.max(1e-12)
        );
    }
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

pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.runs == 0 || args.prompt_tokens == 0 || args.decode_tokens == 0 {
        return Err("--runs, --prompt-tokens and --decode-tokens must be positive".into());
    }
    let model =
        open_model(&args.artifact, &args.weights, args.threads).map_err(|e| e.to_string())?;
    let vocab = model.manifest().model.vocab_size as u64;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: args.decode_tokens + 1,
        sampling: Sampling::Greedy,
        eos: Vec::new(),
    };
    let mut generator = Generator::new(&model).map_err(|e| e.to_string())?;
    generator.set_profiling(args.profile);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let out = generator
            .generate(std::slice::from_ref(&prompt), &opts, |_, _| {})
            .map_err(|e| e.to_string())?;
        if run > 0 {
            prefill.push(out.prefill_tokens_per_second());
            decode.push(out.decode_tokens_per_second());
        }
    }
    let (prefill, decode) = (median(prefill), median(decode));
    let peak = peak_rss_bytes().unwrap_or(0);
    if args.json {
        println!(
            "{{\"peer\":\"kiln {}\",\"prefill_tokens_per_s\":{prefill:.1},\"decode_tokens_per_s\":{decode:.2},\"peak_rss_bytes\":{peak},\"threads\":{},\"runs\":{}}}",
            env!("CARGO_PKG_VERSION"),
            args.threads,
            args.runs
        );
    } else {
        println!("| figure | kiln |\n| --- | --- |");
        println!(
            "| prefill {} tokens (tok/s, median of {}) | {prefill:.1} |",
            args.prompt_tokens, args.runs
        );
        println!(
            "| decode {} tokens (tok/s, median of {}) | {decode:.2} |",
            args.decode_tokens, args.runs
        );
        println!(
            "| peak memory (MiB) | {:.0} |",
            peak as f64 / (1024.0 * 1024.0)
        );
    }
    generator.runners().into_iter().for_each(print_profile);
    Ok(())
}
