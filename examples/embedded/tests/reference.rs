//! The embedded artifact against an external reference: greedy decoding from the fixture's
//! prompt gives exactly the tokens Hugging Face transformers' `generate` gave
//! (`tests/fixtures/hf/llama/reference.safetensors`: `greedy` is the prompt `input_ids[0]`
//! followed by the continuation). Also the command line: the same tokens through `--ids`, and
//! errors as one `error:` line with exit status 1.

use std::path::Path;
use std::process::Command;

use kiln_example_embedded::{encode_prompt, generate, load_model};
use safetensors::{Dtype, SafeTensors};

/// A tensor of the reference file, as i64 values and its shape.
fn reference_ints(name: &str) -> (Vec<i64>, Vec<usize>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf/llama/reference.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    assert_eq!(view.dtype(), Dtype::I64, "{name}");
    let values = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (values, view.shape().to_vec())
}

/// The reference prompt and its greedy continuation.
fn reference() -> (Vec<u32>, Vec<u32>) {
    let (greedy, shape) = reference_ints("greedy");
    assert_eq!(shape[0], 1);
    let (input_ids, shape) = reference_ints("input_ids");
    let prompt_len = shape[1];
    let greedy: Vec<u32> = greedy.iter().map(|&t| t as u32).collect();
    let prompt: Vec<u32> = input_ids[..prompt_len].iter().map(|&t| t as u32).collect();
    assert_eq!(
        greedy[..prompt_len],
        prompt,
        "greedy opens with input_ids[0]"
    );
    (prompt, greedy[prompt_len..].to_vec())
}

#[test]
fn greedy_tokens_match_transformers() {
    let (prompt, expected) = reference();
    let model = load_model(2).unwrap();
    let mut streamed = Vec::new();
    let generation = generate(&model, &prompt, expected.len(), |t| streamed.push(t)).unwrap();
    assert_eq!(generation.tokens.len(), 1);
    assert_eq!(generation.tokens[0], expected);
    assert_eq!(streamed, expected);
    assert_eq!(generation.prompt_tokens, prompt.len());
    assert_eq!(generation.new_tokens, expected.len());
}

#[test]
fn text_prompts_are_bos_then_bytes() {
    let model = load_model(1).unwrap();
    assert_eq!(encode_prompt(&model, "hé").unwrap(), [1, 104, 0xc3, 0xa9]);
}

#[test]
fn prompts_the_artifact_cannot_run_are_errors() {
    let model = load_model(1).unwrap();
    let cases: [(&[u32], usize, &str); 3] = [
        (&[], 4, "no tokens"),
        (
            &[1, 256],
            4,
            "token id 256 is outside the vocabulary of 256",
        ),
        (&[1, 2, 3], 127, "need 129 positions, but the model has 128"),
    ];
    for (prompt, tokens, fragment) in cases {
        let message = generate(&model, prompt, tokens, |_| {})
            .unwrap_err()
            .to_string();
        assert!(message.contains(fragment), "`{message}`");
    }
    // The longest run that fits.
    let generation = generate(&model, &[1, 2, 3], 126, |_| {}).unwrap();
    assert!(generation.new_tokens >= 1);
}

fn app(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-example-embedded"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_app_prints_the_reference_tokens() {
    let (prompt, expected) = reference();
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let tokens = expected.len().to_string();
    let (ok, stdout, stderr) = app(&["--ids", &ids.join(","), "--tokens", &tokens]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("gibberish"), "{stdout}");
    assert!(
        stdout.contains(&format!("new token ids: {expected:?}")),
        "{stdout}"
    );
    assert!(stdout.contains("tokens/s"), "{stdout}");
}

#[test]
fn the_app_runs_a_text_prompt() {
    let (ok, stdout, stderr) = app(&["Hello", "--tokens", "3"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("prompt: \"Hello\" = [1, 72, 101, 108, 108, 111]"),
        "{stdout}"
    );
}

#[test]
fn app_errors_are_one_line_and_status_1() {
    for args in [
        &["--tokens", "many"][..],
        &["--ids", "1,x"],
        &["--ids", "1,999"],
        &["--tokens", "500"],
        &["--bogus"],
        &["one", "two"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_kiln-example-embedded"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
