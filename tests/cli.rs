//! The `kiln` binary: `kiln ir` on every kind of model path, and bad input answered with an error
//! that names the file, the field and what was expected — a non-zero exit, never a panic.

mod common;

use common::fixture_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

fn kiln(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "kiln panicked: {stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

fn scratch(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The fixture config with `edit` applied, written to a scratch file.
fn edited_config(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let text = std::fs::read_to_string(fixture_dir("llama").join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(config.as_object_mut().unwrap());
    scratch(name, config.to_string().as_bytes())
}

/// Runs `kiln ir PATH` and checks it fails with every fragment in its message.
fn rejects(path: &Path, fragments: &[&str]) {
    let (ok, _, stderr) = kiln(&["ir", path.to_str().unwrap()]);
    assert!(!ok, "accepted {}", path.display());
    assert!(
        stderr.contains(&path.display().to_string()),
        "error does not name the file: {stderr}"
    );
    for f in fragments {
        assert!(stderr.contains(f), "error lacks `{f}`: {stderr}");
    }
}

#[test]
fn malformed_json_is_rejected() {
    rejects(
        &scratch("broken.json", b"{\"model_type\": \"llama\","),
        &["not valid JSON", "line 1"],
    );
}

#[test]
fn missing_field_is_rejected() {
    let path = edited_config("missing.json", |c| {
        c.remove("hidden_size");
    });
    rejects(
        &path,
        &[
            "field `hidden_size`",
            "missing (expected a positive integer)",
        ],
    );
}

#[test]
fn wrongly_typed_field_is_rejected() {
    let path = edited_config("typed.json", |c| {
        c.insert("num_hidden_layers".into(), "two".into());
    });
    rejects(
        &path,
        &[
            "field `num_hidden_layers`",
            "expected a non-negative integer, found the string \"two\"",
        ],
    );
    let path = edited_config("typed_rope.json", |c| {
        c["rope_parameters"]["rope_theta"] = "big".into();
    });
    rejects(
        &path,
        &["field `rope_parameters.rope_theta`", "expected a number"],
    );
}

#[test]
fn hidden_size_not_divisible_by_heads_is_rejected() {
    let path = edited_config("indivisible.json", |c| {
        c.insert("hidden_size".into(), 66.into());
        c.remove("head_dim");
    });
    rejects(
        &path,
        &[
            "field `hidden_size`",
            "66 is not divisible by num_attention_heads = 4",
        ],
    );
}

#[test]
fn kv_heads_not_dividing_heads_is_rejected() {
    let path = edited_config("kv.json", |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    rejects(
        &path,
        &[
            "field `num_key_value_heads`",
            "3 key/value heads do not divide num_attention_heads = 4",
        ],
    );
}

#[test]
fn unknown_model_type_is_rejected() {
    let path = edited_config("unknown.json", |c| {
        c.insert("model_type".into(), "gpt9".into());
    });
    rejects(
        &path,
        &[
            "field `model_type`",
            "unknown model type `gpt9` (expected one of llama, mistral, qwen2)",
        ],
    );
}

#[test]
fn truncated_gguf_is_rejected() {
    let bytes = std::fs::read(fixture_dir("llama").join("../../gguf/llama.gguf")).unwrap();
    rejects(
        &scratch("truncated.gguf", &bytes[..1000]),
        &["truncated at byte"],
    );
    rejects(
        &scratch("header_only.gguf", &bytes[..200]),
        &["only 184 bytes remain in the file"],
    );
}

#[test]
fn non_gguf_file_is_rejected() {
    rejects(
        &scratch("fake.gguf", b"PK\x03\x04 this is a zip file"),
        &["not a GGUF file"],
    );
}

#[test]
fn directory_without_config_is_rejected() {
    let dir = scratch("marker", b"").parent().unwrap().join("empty_model");
    std::fs::create_dir_all(&dir).unwrap();
    rejects(&dir, &["config.json", "cannot read"]);
}

#[test]
fn unknown_pass_is_rejected_with_the_pipeline() {
    let (ok, _, stderr) = kiln(&["ir", "--after", "fuse-everything"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown pass `fuse-everything` (expected build or one of: canonicalize)"),
        "{stderr}"
    );
}

#[test]
fn gguf_and_config_json_give_identical_ir() {
    let (ok, from_hf, stderr) = kiln(&[
        "ir",
        fixture_dir("llama").to_str().unwrap(),
        "--program",
        "decode",
    ]);
    assert!(ok, "{stderr}");
    let gguf = fixture_dir("llama").join("../../gguf/llama.gguf");
    let (ok, from_gguf, stderr) = kiln(&["ir", gguf.to_str().unwrap(), "--program", "decode"]);
    assert!(ok, "{stderr}");
    assert_eq!(from_hf, from_gguf);
    assert!(from_hf.starts_with("graph decode\n"));
}

#[test]
fn print_after_all_shows_every_stage_and_dot_renders() {
    let (ok, out, _) = kiln(&["ir", "--print-after-all"]);
    assert!(ok);
    assert!(
        out.contains("// ----- after build -----")
            && out.contains("// ----- after canonicalize -----")
    );
    let (ok, out, _) = kiln(&["ir", "--format", "dot", "--after", "build"]);
    assert!(ok);
    assert!(out.starts_with("digraph \"prefill\" {") && out.trim_end().ends_with('}'));
}
