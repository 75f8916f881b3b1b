//! The CPU backend end to end on the Hugging Face fixtures: compiled prefill logits against
//! transformers' (relative error ≤ 1e-4) and 20 greedy tokens identical to `generate`.

mod common;

use common::cpu::{interp_tensor, runtime_tensor};
use common::{fixture_dir, read_safetensors, relative_error, HF_CASES};
use kiln_frontend::{load_spec, BuildOptions};
use kiln_ir::interp::Data;
use kiln_runtime::generate::{GenerateOptions, Generator};
use kiln_runtime::{load_weights, open::weight_tensors, Artifact, Model, Sampling};

/// Compiles a fixture's model (through artifact bytes, as a file would) and loads its weights.
fn compiled(case: &str) -> Model {
    let dir = fixture_dir(case);
    let spec = load_spec(&dir.join("config.json")).unwrap();
    let opts = BuildOptions {
        max_batch: 2,
        max_seq: 64,
    };
    let artifact =
        kiln::compile::compile_cpu(&spec, &kiln::compile::DECODING_PROGRAMS, opts).unwrap();
    let artifact = Artifact::from_bytes(&artifact.to_bytes(), case).unwrap();
    let manifest = &artifact.manifest;
    let weights = load_weights(
        &dir.join("model.safetensors"),
        &manifest.weights,
        &manifest.model,
    )
    .unwrap();
    let tensors = weight_tensors(weights, &manifest.weights);
    Model::new(artifact, case, tensors, 2).unwrap()
}

fn prefill_matches_transformers(case: &str) -> f64 {
    let reference = read_safetensors(&fixture_dir(case).join("reference.safetensors"));
    let model = compiled(case);
    let mut prefill = model.runner("prefill").unwrap();
    for name in ["input_ids", "position_ids"] {
        prefill
            .set_input(name, runtime_tensor(&reference[name]))
            .unwrap();
    }
    prefill.run().unwrap();
    let logits = interp_tensor(prefill.output("logits").unwrap());
    relative_error(&logits, &reference["logits"])
}

fn greedy_matches_transformers(case: &str) {
    let reference = read_safetensors(&fixture_dir(case).join("reference.safetensors"));
    let Data::Int(greedy) = &reference["greedy"].data else {
        panic!("greedy tokens are integers")
    };
    let greedy: Vec<u32> = greedy.iter().map(|&t| t as u32).collect();
    let prompt_len = reference["input_ids"].shape[1];
    let model = compiled(case);
    let mut generator = Generator::new(&model).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: greedy.len() - prompt_len,
        sampling: Sampling::Greedy,
        eos: Vec::new(),
    };
    let out = generator
        .generate(&[greedy[..prompt_len].to_vec()], &opts, |_, _| {})
        .unwrap();
    assert_eq!(
        out.tokens[0],
        greedy[prompt_len..],
        "{case}: greedy tokens differ"
    );
}

#[test]
fn compiled_prefill_matches_transformers_on_every_fixture() {
    for case in HF_CASES {
        let err = prefill_matches_transformers(case);
        println!("{case}: prefill logits relative error {err:.2e}");
        assert!(err <= 1e-4, "{case}: relative error {err:.2e} > 1e-4");
    }
}

#[test]
fn compiled_greedy_decoding_matches_transformers_on_every_fixture() {
    for case in HF_CASES {
        greedy_matches_transformers(case);
    }
}
