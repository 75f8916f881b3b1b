//! Tokenizers from the three sources: SmolLM2's GGUF against reference ids (fixture
//! `smollm2_tokens.json`, written by `tools/fixtures/make_tokenizer_fixtures.py`), a hand-written
//! tokenizer.json (`tiny_tokenizer.json`), hand-built GGUF headers, and the byte fallback; round
//! trips, streaming decode of characters split over tokens, and errors naming file and field.

use std::path::{Path, PathBuf};

use kiln_gguf::{GgufFile, Value};
use kiln_runtime::manifest::ModelInfo;
use kiln_runtime::Tokenizer;
use serde::Deserialize;

use crate::smollm2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Feeds `ids` one at a time to a decode stream, returning each step's text.
fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut decoder = tokenizer.decode_stream(false);
    ids.iter().map(|&id| decoder.step(id).unwrap()).collect()
}

#[derive(Deserialize)]
struct Reference {
    gguf_sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[test]
fn smollm2_encodes_like_the_reference() {
    let Some(file) = smollm2::gguf("smollm2_encodes_like_the_reference") else {
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let text = std::fs::read_to_string(fixture("smollm2_tokens.json")).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    assert_eq!(reference.gguf_sha256, SMOLLM2_SHA256);
    assert_eq!(
        reference.cases[0].ids,
        tokenizer.encode("The capital of France is", false).unwrap()
    );
    for case in &reference.cases {
        let ids = tokenizer.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), case.text);
    }
}

#[test]
fn smollm2_metadata_special_tokens_and_round_trips() {
    let Some(file) = smollm2::gguf("smollm2_metadata_special_tokens_and_round_trips") else {
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_ids(), &[2]);
    assert!(tokenizer
        .chat_template()
        .unwrap()
        .contains("<|im_start|>assistant"));

    assert_eq!(tokenizer.encode("<|im_start|>", false).unwrap(), [1]);
    assert_eq!(tokenizer.encode("<|im_end|>", true).unwrap(), [2]);
    // add_bos_token is false in this file: nothing is added.
    assert_eq!(
        tokenizer.encode("Hi", true).unwrap(),
        tokenizer.encode("Hi", false).unwrap()
    );
    let ids = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .unwrap();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user\nHi");

    for text in [
        "",
        "café au lait",
        "日本",
        "🦀 crab 🎉",
        "a  b\n\n\tc",
        "x=1+22*333",
    ] {
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn smollm2_streams_characters_split_over_tokens() {
    let Some(file) = smollm2::gguf("smollm2_streams_characters_split_over_tokens") else {
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let text = "Emoji: 🎉🦀 and 日本語, é.";
    let ids = tokenizer.encode(text, false).unwrap();
    let pieces = stream(&tokenizer, &ids);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // 🎉 spans several byte-level tokens: some steps complete no character.
    assert!(pieces.iter().any(String::is_empty), "{pieces:?}");
}

#[test]
fn bytes_tokenizer_ids_are_utf8_bytes() {
    let tokenizer = Tokenizer::bytes();
    assert_eq!(tokenizer.vocab_size(), 256);
    assert_eq!(tokenizer.bos_id(), None);
    assert!(tokenizer.eos_ids().is_empty());
    assert_eq!(tokenizer.chat_template(), None);

    // A character for every lead byte valid UTF-8 has, and every continuation byte.
    let mut text: String = (0..0x800u32).filter_map(char::from_u32).collect();
    text.extend(
        (0x0800..=0xF000u32)
            .step_by(0x1000)
            .filter_map(char::from_u32),
    );
    text.extend([0x10000, 0x40000, 0x80000, 0xC0000, 0x100000].map(|c| char::from_u32(c).unwrap()));
    let ids = tokenizer.encode(&text, false).unwrap();
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    assert_eq!(ids, bytes);
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    // Ids above 255 are no token: they decode to nothing.
    assert_eq!(tokenizer.decode(&[104, 300, 105], false).unwrap(), "hi");
}

#[test]
fn bytes_tokenizer_streams_multibyte_characters_whole() {
    let tokenizer = Tokenizer::bytes();
    let text = "é日🎉";
    let ids = tokenizer.encode(text, false).unwrap();
    assert_eq!(ids.len(), 2 + 3 + 4);
    let pieces = stream(&tokenizer, &ids);
    let expected = ["", "é", "", "", "日", "", "", "", "🎉"];
    assert_eq!(pieces, expected);
}

#[test]
fn from_file_reads_a_tokenizer_json() {
    let tokenizer = Tokenizer::from_file(fixture("tiny_tokenizer.json")).unwrap();
    assert_eq!(tokenizer.vocab_size(), 18);
    assert_eq!(tokenizer.encode("hello world", true).unwrap(), [12, 17]);
    assert_eq!(tokenizer.encode("held", false).unwrap(), [9, 16]);
    assert_eq!(
        tokenizer.encode("hello<|endoftext|>", false).unwrap(),
        [12, 0]
    );
    assert_eq!(tokenizer.decode(&[12, 17, 0], true).unwrap(), "hello world");
    assert_eq!(
        tokenizer.decode(&[12, 17, 0], false).unwrap(),
        "hello world<|endoftext|>"
    );
    assert_eq!(stream(&tokenizer, &[12, 17]).concat(), "hello world");

    // tokenizer.json has no BOS, EOS or template: the model's config brings them.
    assert_eq!(tokenizer.bos_id(), None);
    let info = ModelInfo {
        vocab_size: 18,
        bos_token_id: Some(0),
        eos_token_ids: vec![0, 12],
        chat_template: Some("{{ messages }}".into()),
        ..ModelInfo::default()
    };
    let tokenizer = tokenizer.with_model_info(&info);
    assert_eq!(tokenizer.bos_id(), Some(0));
    assert_eq!(tokenizer.eos_ids(), &[0, 12]);
    assert_eq!(tokenizer.chat_template(), Some("{{ messages }}"));
}

#[test]
fn from_file_errors_name_the_file() {
    let missing = fixture("no_such_tokenizer.json");
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert_eq!(err.file, missing.display().to_string());

    let bad = std::env::temp_dir().join(format!("kiln-bad-tokenizer-{}.json", std::process::id()));
    std::fs::write(&bad, "{\"model\": [").unwrap();
    let err = Tokenizer::from_file(&bad).unwrap_err();
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(err.file, bad.display().to_string());
    assert!(err.message.contains("not a valid tokenizer.json"), "{err}");
}

/// A GGUF header holding only `metadata`.
fn gguf(metadata: Vec<(&str, Value)>) -> GgufFile {
    GgufFile {
        source: "tiny.gguf".into(),
        version: 3,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        tensors: Vec::new(),
        alignment: 32,
        data_offset: 0,
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A small gpt2 vocabulary: `<s>` (control), `</s>` (control), `<tool>` (user-defined), then
/// `a`, `b`, `ab`, `Ġ`, `Ġab`.
fn tiny_gpt2() -> Vec<(&'static str, Value)> {
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["<s>", "</s>", "<tool>", "a", "b", "ab", "Ġ", "Ġab"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array([3, 3, 4, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
    ]
}

/// [`tiny_gpt2`] with the keys of `set` given those values (added when absent) and the keys of
/// `remove` dropped.
fn tiny(set: Vec<(&'static str, Value)>, remove: &[&str]) -> GgufFile {
    let mut metadata = tiny_gpt2();
    metadata.retain(|(k, _)| !remove.contains(k) && set.iter().all(|(key, _)| key != k));
    metadata.extend(set);
    gguf(metadata)
}

#[test]
fn from_gguf_builds_a_small_gpt2_vocabulary() {
    let tokenizer = Tokenizer::from_gguf(&gguf(tiny_gpt2())).unwrap();
    assert_eq!(tokenizer.vocab_size(), 8);
    assert_eq!(tokenizer.bos_id(), Some(0));
    assert_eq!(tokenizer.eos_ids(), &[1]);
    assert_eq!(tokenizer.chat_template(), None);
    assert_eq!(tokenizer.encode("ab ab", true).unwrap(), [5, 7]);
    assert_eq!(
        tokenizer.encode("<s>ab<tool></s>", false).unwrap(),
        [0, 5, 2, 1]
    );
    // Control tokens are special, user-defined ones are not.
    assert_eq!(tokenizer.decode(&[0, 5, 2, 1], true).unwrap(), "ab<tool>");

    let add_bos = ("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let add_eos = ("tokenizer.ggml.add_eos_token", Value::Bool(true));
    let tokenizer = Tokenizer::from_gguf(&tiny(vec![add_bos.clone(), add_eos], &[])).unwrap();
    assert_eq!(tokenizer.encode("ab", true).unwrap(), [0, 5, 1]);
    assert_eq!(tokenizer.encode("ab", false).unwrap(), [5]);
    let tokenizer = Tokenizer::from_gguf(&tiny(vec![add_bos], &[])).unwrap();
    assert_eq!(tokenizer.encode("ab", true).unwrap(), [0, 5]);
}

/// `from_gguf` on `file` fails with an error on `field` whose message contains `needle`.
fn assert_gguf_error(file: &GgufFile, field: &str, needle: &str) {
    let err = Tokenizer::from_gguf(file).unwrap_err();
    assert_eq!(err.file, "tiny.gguf");
    assert_eq!(err.field.as_deref(), Some(field), "{err}");
    assert!(err.message.contains(needle), "{err}");
}

#[test]
fn from_gguf_errors_name_file_and_field() {
    let model = "tokenizer.ggml.model";
    let llama = tiny(vec![(model, Value::String("llama".into()))], &[]);
    assert_gguf_error(&llama, model, "unsupported tokenizer model \"llama\"");
    assert_gguf_error(&gguf(Vec::new()), model, "missing");
    let number = tiny(vec![(model, Value::U32(2))], &[]);
    assert_gguf_error(&number, model, "expected a string, found u32 2");

    let pre = "tokenizer.ggml.pre";
    let llama_bpe = tiny(vec![(pre, Value::String("llama-bpe".into()))], &[]);
    assert_gguf_error(&llama_bpe, pre, "unsupported pre-tokenizer \"llama-bpe\"");

    let tokens = "tokenizer.ggml.tokens";
    assert_gguf_error(&tiny(Vec::new(), &[tokens]), tokens, "missing");
    let twice = strings(&["<s>", "</s>", "<tool>", "a", "b", "ab", "a", "Ġab"]);
    let twice = tiny(vec![(tokens, twice)], &[]);
    assert_gguf_error(&twice, tokens, "token \"a\" appears twice, at ids 3 and 6");

    let merges = "tokenizer.ggml.merges";
    let unsplit = tiny(vec![(merges, strings(&["ab"]))], &[]);
    assert_gguf_error(&unsplit, merges, "merge 0 (\"ab\") is not two tokens");
    let unknown = tiny(vec![(merges, strings(&["a c"]))], &[]);
    assert_gguf_error(&unknown, merges, "Token `c` out of vocabulary");

    let types = "tokenizer.ggml.token_type";
    let short = tiny(vec![(types, Value::Array(vec![Value::I32(1)]))], &[]);
    assert_gguf_error(&short, types, "1 token types for 8 tokens");
    let floats = tiny(vec![(types, Value::Array(vec![Value::F32(1.0); 8]))], &[]);
    assert_gguf_error(&floats, types, "expected integers, found f32 at index 0");

    let eos = "tokenizer.ggml.eos_token_id";
    let past_end = tiny(vec![(eos, Value::U32(8))], &[]);
    assert_gguf_error(&past_end, eos, "token id 8 is not below the 8 tokens");
    let add_eos = "tokenizer.ggml.add_eos_token";
    let no_eos = tiny(vec![(add_eos, Value::Bool(true))], &[eos]);
    assert_gguf_error(
        &no_eos,
        add_eos,
        "true but `tokenizer.ggml.eos_token_id` is missing",
    );
}
