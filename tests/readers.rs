//! The config readers agree with each other: transformers v4 and v5 field names, and a GGUF
//! written by llama.cpp's own `gguf` package, describe the same model as the Hugging Face config.

mod common;

use common::{fixture_dir, HF_CASES};
use kiln_frontend::{hf, load_spec};
use serde_json::{json, Value};

/// Rewrites a v5 config (`rope_parameters`) with the v4 names (`rope_theta`, `rope_scaling`).
fn as_v4(mut config: Value) -> Value {
    let obj = config.as_object_mut().unwrap();
    let mut rope = obj.remove("rope_parameters").unwrap();
    let theta = rope.as_object_mut().unwrap().remove("rope_theta").unwrap();
    obj.insert("rope_theta".into(), theta);
    if rope["rope_type"] != "default" {
        // v4 configs often spell the kind `type`.
        let kind = rope.as_object_mut().unwrap().remove("rope_type").unwrap();
        rope.as_object_mut().unwrap().insert("type".into(), kind);
        obj.insert("rope_scaling".into(), rope);
    }
    config
}

#[test]
fn v4_and_v5_field_names_give_the_same_spec() {
    for case in HF_CASES {
        let path = fixture_dir(case).join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let v5 = hf::read_config(&text, "v5.json").unwrap();
        let v4_text = as_v4(serde_json::from_str(&text).unwrap()).to_string();
        assert!(!v4_text.contains("rope_parameters"));
        let v4 = hf::read_config(&v4_text, "v4.json").unwrap();
        assert_eq!(v4, v5, "{case}");
    }
}

#[test]
fn omitted_fields_take_the_transformers_defaults() {
    let config = json!({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 64
    });
    let spec = hf::read_config(&config.to_string(), "c.json").unwrap();
    assert_eq!(spec.attention.kv_heads, 4);
    assert_eq!(spec.attention.head_dim, 4);
    assert_eq!(spec.norm.eps, 1e-6);
    assert!(!spec.embeddings.tied && !spec.attention.qkv_bias);
    let kiln_frontend::spec::Position::Rope(rope) = spec.position else {
        panic!()
    };
    assert_eq!(rope.theta, 10000.0);
}

#[test]
fn gguf_metadata_describes_the_same_model_as_config_json() {
    let from_hf = load_spec(&fixture_dir("llama")).unwrap();
    let gguf_path = fixture_dir("llama").join("../../gguf/llama.gguf");
    let mut from_gguf = load_spec(&gguf_path).unwrap();
    // GGUF stores the epsilon as f32; the graphs compute in f32, so that is the same value.
    assert_eq!(from_gguf.norm.eps as f32, from_hf.norm.eps as f32);
    from_gguf.norm.eps = from_hf.norm.eps;
    // The GGUF fixture carries no tokenizer, so no special token ids.
    assert_eq!(from_gguf.tokens, Default::default());
    from_gguf.tokens = from_hf.tokens.clone();
    assert_eq!(from_gguf, from_hf);
}
