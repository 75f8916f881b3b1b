//! `kiln-example-embedded`: generates text with a model compiled into this binary at build time.
//!
//! ```text
//! kiln-example-embedded [PROMPT] [--tokens N] [--threads N] [--ids ID,ID,...]
//! ```
//!
//! The prompt (default: [`DEFAULT_PROMPT`]) is encoded byte by byte, or given as token ids with
//! `--ids`; the model then generates `--tokens` tokens (default 20) greedily, on `--threads`
//! threads (default 1: the model is so small that more threads only add synchronization; a
//! larger model would take `kiln_runtime::executor::default_threads()`). Each token is printed
//! as it comes, with its id, then the whole continuation and the throughput. The model's
//! weights are random, so the text is gibberish. Errors print one `error:` line and exit with
//! status 1.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use kiln_example_embedded::{encode_prompt, generate, load_model, tokenizer};

const DEFAULT_PROMPT: &str = "Once upon a time";
const DEFAULT_TOKENS: usize = 20;
const DEFAULT_THREADS: usize = 1;
const USAGE: &str =
    "usage: kiln-example-embedded [PROMPT] [--tokens N] [--threads N] [--ids ID,ID,...]";

/// What the prompt is made of.
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

struct Args {
    prompt: Prompt,
    tokens: usize,
    threads: usize,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value of option `name`, parsed.
fn value<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{name} needs a value (see --help)"))?;
    value
        .parse()
        .map_err(|_| format!("{name}: `{value}` is not a valid value (see --help)"))
}

/// Token ids written `1,2,3`.
fn ids(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(|id| {
            id.trim()
                .parse()
                .map_err(|_| format!("--ids: `{id}` is not a token id"))
        })
        .collect()
}

/// The arguments, or `None` when help was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        prompt: Prompt::Text(DEFAULT_PROMPT.to_string()),
        tokens: DEFAULT_TOKENS,
        threads: DEFAULT_THREADS,
    };
    let mut prompt_given = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let new_prompt = match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--tokens" => {
                args.tokens = value("--tokens", argv.next())?;
                None
            }
            "--threads" => {
                args.threads = value("--threads", argv.next())?;
                if args.threads == 0 {
                    return Err("--threads must be at least 1".into());
                }
                None
            }
            "--ids" => Some(Prompt::Ids(ids(&value::<String>("--ids", argv.next())?)?)),
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option `{flag}` (see --help)"))
            }
            _ => Some(Prompt::Text(arg)),
        };
        if let Some(prompt) = new_prompt {
            if prompt_given {
                return Err("give one prompt (quote it if it has spaces)".into());
            }
            prompt_given = true;
            args.prompt = prompt;
        }
    }
    Ok(Some(args))
}

fn tokens_per_second(tokens: usize, time: Duration) -> f64 {
    tokens as f64 / time.as_secs_f64().max(1e-9)
}

fn run() -> Result<(), String> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let model = load_model(args.threads).map_err(|e| e.to_string())?;
    let info = &model.manifest().model;
    let (prompt, text) = match args.prompt {
        Prompt::Text(text) => {
            let ids = encode_prompt(&model, &text).map_err(|e| e.to_string())?;
            (ids, Some(text))
        }
        Prompt::Ids(ids) => (ids, None),
    };
    // Byte-level text is shown only when the vocabulary allows it.
    let tokenizer = tokenizer(&model).ok();
    let mut stream = tokenizer.as_ref().map(|t| t.decode_stream(false));

    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| format!("writing the output: {e}");
    writeln!(
        out,
        "A tiny {} ({} layers, {} token ids) compiled into this binary at build time, \
         run by kiln-runtime.",
        info.family, info.num_layers, info.vocab_size
    )
    .map_err(io)?;
    writeln!(
        out,
        "Its weights are random test weights: the text it writes is gibberish."
    )
    .map_err(io)?;
    match &text {
        Some(text) => writeln!(out, "prompt: {text:?} = {prompt:?}"),
        None => writeln!(out, "prompt: {prompt:?}"),
    }
    .map_err(io)?;
    writeln!(out, "generating {} tokens greedily:", args.tokens).map_err(io)?;

    let mut failed = None;
    let generation = generate(&model, &prompt, args.tokens, |id| {
        let piece = match stream.as_mut().map(|s| s.step(id)) {
            // Empty while the bytes of a character are incomplete.
            Some(Ok(piece)) if !piece.is_empty() => format!(" {piece:?}"),
            Some(Err(e)) => {
                failed.get_or_insert_with(|| e.to_string());
                String::new()
            }
            _ => String::new(),
        };
        if let Err(e) = writeln!(out, "  {id:>5}{piece}").and_then(|()| out.flush()) {
            failed.get_or_insert_with(|| io(e));
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(e);
    }

    let new = &generation.tokens[0];
    writeln!(out, "new token ids: {new:?}").map_err(io)?;
    if let Some(tokenizer) = &tokenizer {
        let text = tokenizer.decode(new, false).map_err(|e| e.to_string())?;
        writeln!(out, "new text: {text:?}").map_err(io)?;
    }
    let time = generation.prefill_time + generation.decode_time;
    writeln!(
        out,
        "{} tokens in {:.2} ms: {:.0} tokens/s (prefill of {} tokens: {:.0} tokens/s; \
         decode: {:.0} tokens/s)",
        generation.new_tokens,
        time.as_secs_f64() * 1e3,
        tokens_per_second(generation.new_tokens, time),
        generation.prompt_tokens,
        generation.prefill_tokens_per_second(),
        generation.decode_tokens_per_second(),
    )
    .map_err(io)?;
    Ok(())
}
