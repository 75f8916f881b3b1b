//! SmolLM2-135M-Instruct (the real Q4_1 GGUF) compiled for the CPU: the tokenizer, the logits
//! and the greedy continuation against Hugging Face transformers' own reading of the same file
//! (`tests/fixtures/smollm2/reference.safetensors`, from `tools/fixtures/make_smollm2_fixture.py`).
//!
//! The model is found at `$KILN_SMOLLM2_GGUF` or `target/models/` (`scripts/fetch_smollm2.sh`);
//! CI sets the variable, so there a missing model fails instead of skipping.

mod common;

use common::read_safetensors;
use kiln_frontend::{load_spec, BuildOptions};
use kiln_ir::interp::Data;
use kiln_runtime::generate::{GenerateOptions, Generator};
use kiln_runtime::{load_weights, open_tokenizer, Model, Sampling, Tokenizer};
use std::path::PathBuf;

const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_SMOLLM2_GGUF") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "KILN_SMOLLM2_GGUF={} is not a file",
            path.display()
        );
        return Some(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/models")
        .join(NAME);
    if path.is_file() {
        Some(path)
    } else {
        println!("skipped: {NAME} is absent (scripts/fetch_smollm2.sh fetches it)");
        None
    }
}

fn compiled(path: &std::path::Path) -> (Model, Tokenizer) {
    let spec = load_spec(path).unwrap();
    let opts = BuildOptions {
        max_batch: 1,
        max_seq: 64,
    };
    let artifact =
        kiln::compile::compile_cpu(&spec, &kiln::compile::DECODING_PROGRAMS, opts).unwrap();
    let manifest = &artifact.manifest;
    let weights = load_weights(path, &manifest.weights, &manifest.model).unwrap();
    let tokenizer = open_tokenizer(None, path, &manifest.model).unwrap();
    (
        Model::new(artifact, NAME, weights.tensors, 2).unwrap(),
        tokenizer,
    )
}

fn ints(t: &kiln_ir::interp::Tensor) -> Vec<u32> {
    match &t.data {
        Data::Int(v) => v.iter().map(|&x| x as u32).collect(),
        _ => panic!("expected integers"),
    }
}

#[test]
fn smollm2_matches_transformers() {
    let Some(path) = model_path() else { return };
    let reference = read_safetensors(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smollm2/reference.safetensors"),
    );
    let (model, tokenizer) = compiled(&path);

    let prompt = tokenizer.encode("The capital of France is", false).unwrap();
    assert_eq!(
        prompt,
        ints(&reference["input_ids"]),
        "tokenizer differs from transformers'"
    );

    let mut prefill = model.runner("prefill").unwrap();
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let n = ids.len();
    prefill
        .set_input("input_ids", kiln_runtime::Tensor::i64(&[1, n], &ids))
        .unwrap();
    let positions: Vec<i64> = (0..n as i64).collect();
    prefill
        .set_input(
            "position_ids",
            kiln_runtime::Tensor::i64(&[1, n], &positions),
        )
        .unwrap();
    prefill.run().unwrap();
    let logits = prefill.output("logits").unwrap().as_f32();
    let Data::Float(expected) = &reference["logits"].data else {
        panic!("logits are floats")
    };
    let diff = logits
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = expected.iter().map(|b| b.abs()).fold(0.0f32, f32::max);
    let err = diff / scale;
    println!("SmolLM2 prefill logits relative error {err:.2e}");
    assert!(err <= 1e-3, "relative error {err:.2e} > 1e-3");

    let vocab = model.manifest().model.vocab_size;
    let last = &logits[(n - 1) * vocab..];
    let next = (0..vocab)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap() as u32;
    assert_eq!(tokenizer.decode(&[next], false).unwrap(), " Paris");

    let greedy = ints(&reference["greedy"]);
    let opts = GenerateOptions {
        max_new_tokens: greedy.len() - n,
        sampling: Sampling::Greedy,
        eos: Vec::new(),
    };
    let out = Generator::new(&model)
        .unwrap()
        .generate(&[prompt], &opts, |_, _| {})
        .unwrap();
    assert_eq!(
        out.tokens[0],
        greedy[n..],
        "greedy continuation differs from transformers'"
    );
}
