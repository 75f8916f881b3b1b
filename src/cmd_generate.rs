//! `kiln generate`: text generation with a compiled artifact — tokenize (optionally through the
//! model's chat template), prefill, decode greedily or by sampling, stream the text, and end
//! with prompt and decode throughput. With no artifact it compiles the embedded tiny Llama and
//! runs it on seeded random weights, so it works with nothing downloaded. `--device cuda` runs a
//! `--target cuda` artifact on the GPU, the KV cache staying on the device.

use crate::device::Device;
use clap::Args;
use kiln::compile::{compile_cpu, DECODING_PROGRAMS};
use kiln::model;
use kiln_frontend::BuildOptions;
use kiln_runtime::generate::{DecodeProgram, GenerateOptions, Generator};
use kiln_runtime::{
    executor::default_threads, open_model, open_tokenizer, render_chat, ChatMessage,
};
use kiln_runtime::{Model, Sampling, Tokenizer};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// The `.kiln` artifact (default: compile the embedded tiny Llama, with random weights).
    artifact: Option<PathBuf>,
    /// Weights: a .gguf, a .safetensors file, a sharded index or a model directory.
    #[arg(long, requires = "artifact")]
    weights: Option<PathBuf>,
    /// A tokenizer.json (default: the GGUF's own, or one beside the weights).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prompt text; repeat for a batch.
    #[arg(long, default_value = "Once upon a time")]
    prompt: Vec<String>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sample at this temperature (default: greedy).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    #[arg(long, requires = "temperature")]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Where to run: `cpu`, or `cuda` for an artifact compiled with `--target cuda`.
    #[arg(long, value_enum, default_value = "cpu", requires = "artifact")]
    device: Device,
    /// On the GPU, launch every kernel of a decode step from the host instead of replaying
    /// the step as a captured CUDA graph.
    #[arg(long)]
    no_cuda_graphs: bool,
}

fn embedded_model(threads: usize) -> Result<Model, String> {
    let spec = model::spec(None)?;
    let artifact = compile_cpu(&spec, &DECODING_PROGRAMS, BuildOptions::for_spec(&spec))?;
    let weights = model::random_weights(&artifact.manifest.weights, 0);
    eprintln!("(embedded tiny Llama with random weights: the text is noise; pass an artifact and --weights for a real model)");
    Model::new(artifact, "<embedded tiny-llama>", weights, threads).map_err(|e| e.to_string())
}

fn prompt_ids(tokenizer: &Tokenizer, text: &str, chat: bool) -> Result<Vec<u32>, String> {
    if !chat {
        return tokenizer.encode(text, true).map_err(|e| e.to_string());
    }
    let template = tokenizer
        .chat_template()
        .ok_or("--chat: the model has no chat template")?;
    let name = |id: Option<u32>| {
        id.and_then(|i| tokenizer.decode(&[i], false).ok())
            .unwrap_or_default()
    };
    let rendered = render_chat(
        template,
        &[ChatMessage::new("user", text)],
        true,
        &name(tokenizer.bos_id()),
        &name(tokenizer.eos_ids().first().copied()),
    )
    .map_err(|e| e.to_string())?;
    tokenizer
        .encode(&rendered, false)
        .map_err(|e| e.to_string())
}

pub fn run(args: GenerateArgs) -> Result<(), String> {
    if args.device == Device::Cuda {
        return run_on_gpu(&args);
    }
    let (model, tokenizer) = match (&args.artifact, &args.weights) {
        (Some(artifact), Some(weights)) => {
            let model = open_model(artifact, weights, args.threads).map_err(|e| e.to_string())?;
            let tokenizer =
                open_tokenizer(args.tokenizer.as_deref(), weights, &model.manifest().model)
                    .map_err(|e| e.to_string())?;
            (model, tokenizer)
        }
        (Some(_), None) => return Err("--weights: required with an artifact".into()),
        _ => (embedded_model(args.threads)?, Tokenizer::bytes()),
    };
    let mut generator = Generator::new(&model).map_err(|e| e.to_string())?;
    stream_generation(&args, &tokenizer, &mut generator)
}

/// `--device cuda`: the artifact on the GPU.
fn run_on_gpu(args: &GenerateArgs) -> Result<(), String> {
    let (Some(artifact), Some(weights)) = (&args.artifact, &args.weights) else {
        return Err(
            "--device cuda: needs an artifact compiled with --target cuda, and --weights".into(),
        );
    };
    let art = kiln_runtime::Artifact::read(artifact).map_err(|e| e.to_string())?;
    let m = &art.manifest;
    let tensors = kiln_runtime::load_weights(weights, &m.weights, &m.model)
        .map_err(|e| e.to_string())?
        .tensors;
    let tokenizer =
        open_tokenizer(args.tokenizer.as_deref(), weights, &m.model).map_err(|e| e.to_string())?;
    let file = artifact.display().to_string();
    let model =
        kiln_runtime::cuda::CudaModel::new(art, &file, tensors).map_err(|e| e.to_string())?;
    let mut generator =
        Generator::on_gpu(&model, !args.no_cuda_graphs).map_err(|e| e.to_string())?;
    stream_generation(args, &tokenizer, &mut generator)
}

/// Generates for the prompts, streaming the text of a single prompt, and ends with throughput.
fn stream_generation<P: DecodeProgram>(
    args: &GenerateArgs,
    tokenizer: &Tokenizer,
    generator: &mut Generator<P>,
) -> Result<(), String> {
    let prompts: Vec<Vec<u32>> = args
        .prompt
        .iter()
        .map(|p| prompt_ids(tokenizer, p, args.chat))
        .collect::<Result<_, _>>()?;
    let sampling = match args.temperature {
        Some(temperature) => Sampling::Sample {
            temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        None => Sampling::Greedy,
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_tokens,
        sampling,
        eos: tokenizer.eos_ids().to_vec(),
    };
    let streaming = prompts.len() == 1;
    let mut stream = tokenizer.decode_stream(true);
    let mut stdout = std::io::stdout();
    if streaming {
        print!("{}", args.prompt[0]);
    }
    let mut stream_error = None;
    let out = generator
        .generate(&prompts, &opts, |_, token| {
            if streaming {
                match stream.step(token) {
                    Ok(text) => {
                        print!("{text}");
                        let _ = stdout.flush();
                    }
                    Err(e) => stream_error = Some(e.to_string()),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(e) = stream_error {
        return Err(e);
    }
    if streaming {
        println!();
    } else {
        for (prompt, tokens) in args.prompt.iter().zip(&out.tokens) {
            let text = tokenizer.decode(tokens, true).map_err(|e| e.to_string())?;
            println!("{prompt}{text}\n---");
        }
    }
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s · decode: {} tokens, {:.1} tok/s",
        out.prompt_tokens,
        out.prefill_tokens_per_second(),
        out.new_tokens,
        out.decode_tokens_per_second()
    );
    Ok(())
}
