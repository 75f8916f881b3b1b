//! Peer benchmark for kiln: SmolLM2-135M-Instruct in f32 on candle 0.11's CPU backend
//! (`candle_transformers::models::llama`).
//!
//! Loads `model.safetensors` and `config.json` from `--model-dir` (written by
//! `bench/peers/convert_smollm2.py`), then, for each of `--runs` runs after one warm-up run:
//! resets the KV cache, feeds a fixed prompt of `--prompt-tokens` ids (1, 2, …) in one forward
//! pass (prefill), and generates `--decode-tokens` tokens greedily one forward pass at a time
//! (decode). Prints one JSON object with the medians over the runs and the process's peak
//! resident set (VmHWM from /proc/self/status).
//!
//! ```text
//! candle-bench --model-dir target/bench/smollm2-f32 --threads 2 --runs 5
//! candle-bench --model-dir target/bench/smollm2-f32 --prompt-ids 504,3458,282 --generate 8
//! ```
//!
//! The second form prints the greedy continuation's token ids, one line, comma separated; the
//! benchmark script uses it to check that the converted weights are right.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig};

type AnyResult<T> = Result<T, Box<dyn Error>>;

struct Args {
    model_dir: PathBuf,
    prompt_tokens: usize,
    decode_tokens: usize,
    runs: usize,
    threads: usize,
    prompt_ids: Option<Vec<u32>>,
    generate: Option<usize>,
}

fn parse_args() -> AnyResult<Args> {
    let mut args = Args {
        model_dir: PathBuf::from("target/bench/smollm2-f32"),
        prompt_tokens: 128,
        decode_tokens: 128,
        runs: 5,
        threads: 2,
        prompt_ids: None,
        generate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model-dir" => args.model_dir = PathBuf::from(value()?),
            "--prompt-tokens" => args.prompt_tokens = value()?.parse()?,
            "--decode-tokens" => args.decode_tokens = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            "--threads" => args.threads = value()?.parse()?,
            "--prompt-ids" => {
                let ids = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()?;
                args.prompt_ids = Some(ids);
            }
            "--generate" => args.generate = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "candle-bench [--model-dir DIR] [--prompt-tokens N] [--decode-tokens N] \
                     [--runs N] [--threads N] [--prompt-ids A,B,.. --generate N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.runs == 0 || args.prompt_tokens == 0 {
        return Err("--runs and --prompt-tokens must be at least 1".into());
    }
    Ok(args)
}

struct Model {
    llama: Llama,
    config: Config,
    device: Device,
}

fn load(dir: &Path) -> AnyResult<Model> {
    let config: LlamaConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let config = config.into_config(false);
    let device = Device::Cpu;
    let weights = dir.join("model.safetensors");
    // SAFETY: the file is not modified while mapped (it is only written by the converter).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
    let llama = Llama::load(vb, &config)?;
    Ok(Model {
        llama,
        config,
        device,
    })
}

/// One forward pass over `ids` starting at position `pos`; returns the greedy next token.
fn step(model: &Model, cache: &mut Cache, ids: &[u32], pos: usize) -> AnyResult<u32> {
    let input = Tensor::new(ids, &model.device)?.unsqueeze(0)?;
    let logits = model.llama.forward(&input, pos, cache)?;
    Ok(logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?)
}

/// Prefill `prompt`, then decode `decode` tokens greedily. Returns the generated ids and the
/// prefill and decode wall times in seconds.
fn generate(model: &Model, prompt: &[u32], decode: usize) -> AnyResult<(Vec<u32>, f64, f64)> {
    let mut cache = Cache::new(true, DType::F32, &model.config, &model.device)?;
    let start = Instant::now();
    let mut next = step(model, &mut cache, prompt, 0)?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut out = vec![next];
    let start = Instant::now();
    for i in 0..decode {
        next = step(model, &mut cache, &[next], prompt.len() + i)?;
        out.push(next);
    }
    let decode_s = start.elapsed().as_secs_f64();
    Ok((out, prefill_s, decode_s))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn peak_rss_bytes() -> AnyResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    // candle's CPU kernels (gemm) and rayon both size their pools from this variable; set it
    // before either is first used.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let model = load(&args.model_dir)?;

    if let Some(n) = args.generate {
        let prompt = args.prompt_ids.ok_or("--generate needs --prompt-ids")?;
        // `generate` returns n + 1 tokens for n decode steps.
        let (ids, _, _) = generate(&model, &prompt, n.saturating_sub(1))?;
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", ids.join(","));
        return Ok(());
    }

    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (1..=args.prompt_tokens as u32).map(|i| i % vocab).collect();
    generate(&model, &prompt, args.decode_tokens)?; // warm-up
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.runs {
        let (_, prefill_s, decode_s) = generate(&model, &prompt, args.decode_tokens)?;
        prefill.push(args.prompt_tokens as f64 / prefill_s);
        decode.push(args.decode_tokens as f64 / decode_s);
    }
    let fmt = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{{\"peer\":\"candle 0.11\",\"prefill_tokens_per_s\":{:.2},\"decode_tokens_per_s\":{:.2},\
         \"peak_rss_bytes\":{},\"threads\":{},\"prompt_tokens\":{},\"decode_tokens\":{},\
         \"runs\":{},\"prefill_samples\":[{}],\"decode_samples\":[{}]}}",
        median(prefill.clone()),
        median(decode.clone()),
        peak_rss_bytes()?,
        args.threads,
        args.prompt_tokens,
        args.decode_tokens,
        args.runs,
        fmt(&prefill),
        fmt(&decode),
    );
    Ok(())
}
