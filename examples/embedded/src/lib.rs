//! The core of the embedded example: a model compiled into the binary at build time and run by
//! `kiln-runtime` alone, with no file read at run time.
//!
//! Two things are embedded: [`ARTIFACT`], which `build.rs` compiles from the tiny Hugging Face
//! Llama fixture's `config.json`, and [`WEIGHTS`], that fixture's `model.safetensors` (random
//! weights, so what the model writes is gibberish). [`load_model`] turns them into a
//! [`Model`], [`encode_prompt`] turns text into token ids, and [`generate`] decodes greedily.
//! `src/main.rs` is the command line around them; `tests/reference.rs` checks the greedy tokens
//! against Hugging Face transformers'.

use kiln_runtime::{
    load_weights_from_bytes, Artifact, GenerateOptions, Generation, Generator, Model, RuntimeError,
    Sampling, Tokenizer,
};

/// The artifact `build.rs` compiled from `tests/fixtures/hf/llama/config.json`.
pub const ARTIFACT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny_llama.kiln"));

/// The weights of that model: `tests/fixtures/hf/llama/model.safetensors`.
pub const WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/hf/llama/model.safetensors");

/// How errors name the embedded artifact.
pub const ARTIFACT_NAME: &str = "<embedded tiny_llama.kiln>";

/// How errors name the embedded weights.
pub const WEIGHTS_NAME: &str = "<embedded model.safetensors>";

/// Loads the embedded artifact and weights into a model that runs on `threads` threads.
pub fn load_model(threads: usize) -> kiln_runtime::Result<Model> {
    let artifact = Artifact::from_bytes(ARTIFACT, ARTIFACT_NAME)?;
    let manifest = &artifact.manifest;
    let weights =
        load_weights_from_bytes(WEIGHTS, WEIGHTS_NAME, &manifest.weights, &manifest.model)?;
    Model::new(artifact, ARTIFACT_NAME, weights.tensors, threads)
}

/// The tokenizer of the example. The fixture has no tokenizer of its own, so the example uses
/// the byte-level one (token id = UTF-8 byte), which needs a vocabulary of at least its 256
/// ids; the fixture's has exactly 256. A real model would embed its `tokenizer.json` instead.
pub fn tokenizer(model: &Model) -> kiln_runtime::Result<Tokenizer> {
    let info = &model.manifest().model;
    let tokenizer = Tokenizer::bytes();
    if info.vocab_size < tokenizer.vocab_size() {
        return Err(RuntimeError::new(
            ARTIFACT_NAME,
            Some("model.vocab_size"),
            format!(
                "the vocabulary has {} ids, fewer than the {} of the byte tokenizer; \
                 give the prompt as token ids (--ids)",
                info.vocab_size,
                tokenizer.vocab_size()
            ),
        ));
    }
    Ok(tokenizer.with_model_info(info))
}

/// The token ids of `text`: the model's BOS id (as Llama's tokenizers add it), then one id per
/// UTF-8 byte.
pub fn encode_prompt(model: &Model, text: &str) -> kiln_runtime::Result<Vec<u32>> {
    let tokenizer = tokenizer(model)?;
    let mut ids: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    ids.extend(tokenizer.encode(text, false)?);
    Ok(ids)
}

/// Generates up to `max_new_tokens` tokens after `prompt`, greedily, stopping early at the
/// model's end-of-sequence id; `on_token` sees each new token as it is chosen.
///
/// The prompt must hold at least one id, each below the vocabulary size, and the prompt plus
/// the new tokens must fit the positions the artifact was compiled for.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    mut on_token: impl FnMut(u32),
) -> kiln_runtime::Result<Generation> {
    let info = &model.manifest().model;
    let err = |message: String| RuntimeError::new("<prompt>", None, message);
    if prompt.is_empty() {
        return Err(err("the prompt has no tokens".into()));
    }
    if let Some(id) = prompt.iter().find(|&&id| id as usize >= info.vocab_size) {
        return Err(err(format!(
            "token id {id} is outside the vocabulary of {} ids",
            info.vocab_size
        )));
    }
    // The last new token is never fed back, so it takes no position.
    let positions = prompt.len() + max_new_tokens.saturating_sub(1);
    if positions > info.max_positions {
        return Err(err(format!(
            "{} prompt tokens and {max_new_tokens} new ones need {positions} positions, \
             but the model has {}",
            prompt.len(),
            info.max_positions
        )));
    }
    let opts = GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos: info.eos_token_ids.clone(),
    };
    Generator::new(model)?.generate(&[prompt.to_vec()], &opts, |_, token| on_token(token))
}
