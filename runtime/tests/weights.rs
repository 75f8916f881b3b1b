//! `load_weights` as a specification: the tiny Hugging Face llama fixture loads the same from its
//! safetensors file, from shards, from its llama.cpp GGUF twin, and from either file's bytes in
//! memory (`load_weights_from_bytes`), in f32 or rounded to the bf16 or f16 the manifest asks
//! for; every bad input is an error that names the tensor or file at fault.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use kiln_runtime::manifest::{ElemType, ModelInfo, TensorDesc};
use kiln_runtime::{load_weights, load_weights_from_bytes};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use tempfile::TempDir;

/// A tensor as a checkpoint holds it, in Hugging Face's layout.
#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

const HF_LLAMA: &str = "hf/llama/model.safetensors";
const GGUF_LLAMA: &str = "gguf/llama.gguf";

/// The tensors of the tiny llama fixture, by name, read with the safetensors crate.
fn llama() -> Vec<Tensor> {
    let bytes = std::fs::read(fixture(HF_LLAMA)).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Tensor> = file
        .iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            Tensor {
                name: name.to_string(),
                shape: view.shape().to_vec(),
                values: view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            }
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    tensors
}

/// The tensors of the tiny llama but `name`.
fn llama_without(name: &str) -> Vec<Tensor> {
    llama().into_iter().filter(|t| t.name != name).collect()
}

/// The tiny llama's model info, from its config.
fn model(tied_embeddings: bool) -> ModelInfo {
    let text = std::fs::read_to_string(fixture("hf/llama/config.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    let int = |key: &str| config[key].as_u64().unwrap() as usize;
    ModelInfo {
        family: "llama".into(),
        vocab_size: int("vocab_size"),
        num_layers: int("num_hidden_layers"),
        heads: int("num_attention_heads"),
        kv_heads: int("num_key_value_heads"),
        head_dim: int("head_dim"),
        max_positions: int("max_position_embeddings"),
        tied_embeddings,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        chat_template: None,
    }
}

/// What a manifest would list for `tensors`.
fn expect(tensors: &[Tensor]) -> Vec<TensorDesc> {
    tensors
        .iter()
        .map(|t| TensorDesc {
            name: t.name.clone(),
            dtype: ElemType::F32,
            shape: t.shape.clone(),
        })
        .collect()
}

/// Writes a safetensors file of `(name, dtype, shape, bytes)` entries.
fn write_safetensors(path: &Path, entries: &[(&str, Dtype, &[usize], Vec<u8>)]) {
    let views = entries.iter().map(|(name, dtype, shape, bytes)| {
        (
            *name,
            TensorView::new(*dtype, shape.to_vec(), bytes).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `tensors` as F32 to a safetensors file.
fn write_f32(path: &Path, tensors: &[Tensor]) {
    let entries: Vec<_> = tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                Dtype::F32,
                t.shape.as_slice(),
                f32_bytes(&t.values),
            )
        })
        .collect();
    write_safetensors(path, &entries);
}

/// Writes `tensors` as a sharded checkpoint in `dir`: even-numbered tensors in one shard, the
/// others in a second, and an index.
fn write_sharded(dir: &Path, tensors: &[Tensor]) {
    let shards = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (s, shard) in shards.iter().enumerate() {
        let part: Vec<Tensor> = tensors.iter().skip(s).step_by(2).cloned().collect();
        for t in &part {
            weight_map.insert(t.name.clone(), json!(shard));
        }
        write_f32(&dir.join(shard), &part);
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// Loading `expected` from `path` gives exactly `want`, in order.
fn check(path: &Path, expected: &[TensorDesc], model: &ModelInfo, want: &[Tensor]) {
    let loaded = load_weights(path, expected, model)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    assert_eq!(loaded.tensors.len(), want.len());
    for (got, want) in loaded.tensors.iter().zip(want) {
        assert!(got.as_f32() == want.values, "{}: values differ", want.name);
    }
}

/// Loading `expected` from `path` fails with a message holding every one of `fragments`.
fn check_error(path: &Path, expected: &[TensorDesc], model: &ModelInfo, fragments: &[&str]) {
    let message = match load_weights(path, expected, model) {
        Ok(_) => panic!("loading {} succeeded", path.display()),
        Err(e) => e.to_string(),
    };
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "`{message}` does not mention `{fragment}`"
        );
    }
}

// Loading.

#[test]
fn safetensors_file_loads_in_the_manifest_order() {
    let mut tensors = llama();
    tensors.reverse();
    check(
        &fixture(HF_LLAMA),
        &expect(&tensors),
        &model(false),
        &tensors,
    );
}

#[test]
fn model_directory_loads_its_model_safetensors() {
    let tensors = llama();
    check(
        &fixture("hf/llama"),
        &expect(&tensors),
        &model(false),
        &tensors,
    );
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let dir = TempDir::new().unwrap();
    let tensors = llama();
    write_sharded(dir.path(), &tensors);
    let index = dir.path().join("model.safetensors.index.json");
    for path in [dir.path(), index.as_path()] {
        check(path, &expect(&tensors), &model(false), &tensors);
    }
}

#[test]
fn f16_and_bf16_are_widened_to_f32() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("half.safetensors");
    let values = [0.5f32, -1.25, 3.0, 65504.0];
    let f16s: Vec<u8> = values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    write_safetensors(
        &path,
        &[
            ("a", Dtype::F16, &[2, 2], f16s),
            ("b", Dtype::BF16, &[4], bf16s),
        ],
    );
    let want = [
        Tensor {
            name: "a".into(),
            shape: vec![2, 2],
            values: values.to_vec(),
        },
        Tensor {
            name: "b".into(),
            shape: vec![4],
            values: vec![0.5, -1.25, 3.0, 65536.0],
        },
    ];
    check(&path, &expect(&want), &model(false), &want);
}

#[test]
fn gguf_loads_the_hugging_face_weights_it_was_converted_from() {
    // llama.gguf is tools/fixtures/make_gguf.py run on hf/llama: F32, q/k rows permuted.
    let tensors = llama();
    check(
        &fixture(GGUF_LLAMA),
        &expect(&tensors),
        &model(false),
        &tensors,
    );
}

#[test]
fn a_stored_copy_of_tied_embeddings_is_ignored() {
    let tensors = llama_without("lm_head.weight");
    check(
        &fixture(HF_LLAMA),
        &expect(&tensors),
        &model(true),
        &tensors,
    );
}

#[test]
fn bytes_in_memory_load_like_the_file() {
    let mut tensors = llama();
    tensors.reverse();
    for file in [HF_LLAMA, GGUF_LLAMA] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let loaded = load_weights_from_bytes(&bytes, file, &expect(&tensors), &model(false))
            .unwrap_or_else(|e| panic!("loading the bytes of {file}: {e}"));
        let from_path = load_weights(&fixture(file), &expect(&tensors), &model(false)).unwrap();
        assert_eq!(loaded, from_path, "{file}");
        // The bytes need no alignment: load them again one byte off.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let loaded = load_weights_from_bytes(&shifted[1..], file, &expect(&tensors), &model(false))
            .unwrap_or_else(|e| panic!("loading the unaligned bytes of {file}: {e}"));
        assert_eq!(loaded, from_path, "{file}, unaligned");
    }
}

// Errors.

#[test]
fn an_untied_model_does_not_ignore_lm_head() {
    let expected = expect(&llama_without("lm_head.weight"));
    let path = fixture(HF_LLAMA);
    check_error(
        &path,
        &expected,
        &model(false),
        &[HF_LLAMA, "`lm_head.weight`", "not a weight"],
    );
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let mut expected = expect(&llama());
    expected.push(TensorDesc {
        name: "model.layers.0.self_attn.q_proj.bias".into(),
        dtype: ElemType::F32,
        shape: vec![64],
    });
    let bias = "`model.layers.0.self_attn.q_proj.bias`: missing";
    for file in [HF_LLAMA, GGUF_LLAMA] {
        check_error(&fixture(file), &expected, &model(false), &[file, bias]);
    }
}

#[test]
fn extra_tensor_is_named() {
    let expected = expect(&llama_without("model.layers.1.mlp.up_proj.weight"));
    for file in [HF_LLAMA, GGUF_LLAMA] {
        let fragments = [file, "`model.layers.1.mlp.up_proj.weight`", "not a weight"];
        check_error(&fixture(file), &expected, &model(false), &fragments);
    }
}

#[test]
fn wrong_shape_names_both_shapes() {
    let mut expected = expect(&llama());
    let k = expected
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    k.shape = vec![64, 32];
    let fragments = [
        "`model.layers.0.self_attn.k_proj.weight`",
        "expected shape [64, 32], found [32, 64]",
    ];
    for file in [HF_LLAMA, GGUF_LLAMA] {
        check_error(&fixture(file), &expected, &model(false), &fragments);
    }
}

#[test]
fn integer_tensor_is_mis_typed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("ints.safetensors");
    write_safetensors(&path, &[("ids", Dtype::I32, &[2], vec![0; 8])]);
    let expected = [TensorDesc {
        name: "ids".into(),
        dtype: ElemType::F32,
        shape: vec![2],
    }];
    check_error(
        &path,
        &expected,
        &model(false),
        &["`ids`", "mis-typed", "I32"],
    );
}

#[test]
fn an_integer_weight_in_the_manifest_is_refused() {
    let mut expected = expect(&llama());
    expected[3].dtype = ElemType::I32;
    let name = format!("`{}`", expected[3].name);
    check_error(
        &fixture(HF_LLAMA),
        &expected,
        &model(false),
        &[&name, "i32", "only f32, bf16 and f16"],
    );
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let expected = expect(&llama());
    for (fixture_path, name) in [(HF_LLAMA, "cut.safetensors"), (GGUF_LLAMA, "cut.gguf")] {
        let bytes = std::fs::read(fixture(fixture_path)).unwrap();
        for len in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes[..len]).unwrap();
            check_error(&path, &expected, &model(false), &[name]);
        }
    }
}

#[test]
fn bad_bytes_in_memory_are_errors_naming_the_source() {
    let expected = expect(&llama());
    for file in [HF_LLAMA, GGUF_LLAMA] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        for len in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            let message = match load_weights_from_bytes(
                &bytes[..len],
                "<embedded>",
                &expected,
                &model(false),
            ) {
                Ok(_) => panic!("loading {len} bytes of {file} succeeded"),
                Err(e) => e.to_string(),
            };
            assert!(message.starts_with("<embedded>"), "`{message}`");
        }
    }
    let mut expected = expected;
    expected.pop();
    let message = load_weights_from_bytes(
        &std::fs::read(fixture(HF_LLAMA)).unwrap(),
        "<embedded>",
        &expected,
        &model(false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("<embedded>") && message.contains("not a weight"),
        "`{message}`"
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = TempDir::new().unwrap();
    write_sharded(dir.path(), &llama());
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let fragments = [shard.to_str().unwrap(), "No such file"];
    check_error(dir.path(), &expect(&llama()), &model(false), &fragments);
}

#[test]
fn index_that_misplaces_a_tensor_is_an_error() {
    let dir = TempDir::new().unwrap();
    let tensors = llama();
    write_sharded(dir.path(), &tensors);
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    // The first tensor is in shard 1.
    json["weight_map"][&tensors[0].name] = json!("model-00002-of-00002.safetensors");
    std::fs::write(&index, json.to_string()).unwrap();
    let fragments = [
        index.to_str().unwrap(),
        &format!("`{}`", tensors[0].name),
        "model-00002-of-00002.safetensors, which does not hold it",
    ];
    check_error(dir.path(), &expect(&tensors), &model(false), &fragments);
}

#[test]
fn bad_index_json_is_named() {
    let dir = TempDir::new().unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    for text in ["{", "{\"weight_map\": [1, 2]}", "{}"] {
        std::fs::write(&index, text).unwrap();
        let fragments = [index.to_str().unwrap(), "not a valid safetensors index"];
        check_error(&index, &expect(&llama()), &model(false), &fragments);
    }
}

#[test]
fn directory_without_a_checkpoint_is_an_error() {
    let dir = TempDir::new().unwrap();
    let fragments = [
        dir.path().to_str().unwrap(),
        "holds neither model.safetensors",
    ];
    check_error(dir.path(), &expect(&llama()), &model(false), &fragments);
}

#[test]
fn gguf_tensor_without_a_hugging_face_name_is_named() {
    // Renames `output.weight` in place (same length) to a name llama.cpp does not use.
    let mut bytes = std::fs::read(fixture(GGUF_LLAMA)).unwrap();
    let mut stored_name = 13u64.to_le_bytes().to_vec();
    stored_name.extend_from_slice(b"output.weight");
    let at = bytes
        .windows(stored_name.len())
        .position(|w| w == stored_name)
        .unwrap();
    bytes[at + 8..at + 8 + 13].copy_from_slice(b"outpux.weight");
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("renamed.gguf");
    std::fs::write(&path, bytes).unwrap();
    let fragments = ["renamed.gguf", "`outpux.weight`", "no Hugging Face name"];
    check_error(&path, &expect(&llama()), &model(false), &fragments);
}

// Narrow weights.

/// `expected` with every weight in `dtype`.
fn as_type(expected: &[TensorDesc], dtype: ElemType) -> Vec<TensorDesc> {
    let mut expected = expected.to_vec();
    expected.iter_mut().for_each(|t| t.dtype = dtype);
    expected
}

/// The 16-bit patterns of a loaded tensor.
fn halves(t: &kiln_runtime::Tensor) -> Vec<u16> {
    t.bytes()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Loading `path` as `dtype` gives `want`'s values rounded by `round` (the `half` crate's
/// conversion, round to nearest even).
fn check_narrow(path: &Path, dtype: ElemType, want: &[Tensor], round: fn(f32) -> u16) {
    let expected = as_type(&expect(want), dtype);
    let loaded = load_weights(path, &expected, &model(false))
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    for (got, want) in loaded.tensors.iter().zip(want) {
        assert_eq!(
            (got.dtype, &got.shape),
            (dtype, &want.shape),
            "{}",
            want.name
        );
        let rounded: Vec<u16> = want.values.iter().map(|&v| round(v)).collect();
        assert!(halves(got) == rounded, "{}: values differ", want.name);
    }
}

fn bf16_bits(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

fn f16_bits(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

#[test]
fn every_source_format_loads_as_bf16_and_f16() {
    // The tiny llama as F32 safetensors, as its GGUF twin (F32), and re-stored as BF16 and F16
    // safetensors: each loads as the f32 values rounded to the manifest's type.
    let tensors = llama();
    let dir = TempDir::new().unwrap();
    for (dtype, round) in [
        (ElemType::Bf16, bf16_bits as fn(f32) -> u16),
        (ElemType::F16, f16_bits),
    ] {
        check_narrow(&fixture(HF_LLAMA), dtype, &tensors, round);
        check_narrow(&fixture(GGUF_LLAMA), dtype, &tensors, round);
    }
    for (st_dtype, round) in [
        (Dtype::BF16, bf16_bits as fn(f32) -> u16),
        (Dtype::F16, f16_bits),
    ] {
        let path = dir.path().join("half.safetensors");
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| {
                t.values
                    .iter()
                    .flat_map(|&v| round(v).to_le_bytes())
                    .collect()
            })
            .collect();
        let entries: Vec<_> = tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| (t.name.as_str(), st_dtype, t.shape.as_slice(), b.clone()))
            .collect();
        write_safetensors(&path, &entries);
        // The file's own values, rounded once: loading them as any type is exact.
        let stored: Vec<Tensor> = tensors
            .iter()
            .map(|t| Tensor {
                values: t
                    .values
                    .iter()
                    .map(|&v| match st_dtype {
                        Dtype::BF16 => bf16::from_f32(v).to_f32(),
                        _ => f16::from_f32(v).to_f32(),
                    })
                    .collect(),
                ..t.clone()
            })
            .collect();
        check(&path, &expect(&stored), &model(false), &stored);
        check_narrow(&path, ElemType::Bf16, &stored, bf16_bits);
        check_narrow(&path, ElemType::F16, &stored, f16_bits);
    }
}

#[test]
fn bf16_rounds_to_nearest_even() {
    // Ties between neighbouring bf16 values (8 significant bits) go to the even one; anything
    // past a tie goes to the nearer.
    let one_ulp = 2f32.powi(-7);
    let values = [
        1.0 + one_ulp / 2.0,        // tie: 1.0 (even) over 1 + ulp
        1.0 + 3.0 * one_ulp / 2.0,  // tie: 1 + 2 ulp (even) over 1 + ulp
        1.0 + one_ulp / 2.0 + 1e-6, // past the tie: 1 + ulp
        -(1.0 + one_ulp / 2.0),     // the sign does not matter
    ];
    let want = [1.0, 1.0 + 2.0 * one_ulp, 1.0 + one_ulp, -1.0];
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("ties.safetensors");
    write_safetensors(&path, &[("t", Dtype::F32, &[4], f32_bytes(&values))]);
    let t = Tensor {
        name: "t".into(),
        shape: vec![4],
        values: values.to_vec(),
    };
    let expected = as_type(&expect(&[t]), ElemType::Bf16);
    let loaded = load_weights(&path, &expected, &model(false)).unwrap();
    let got: Vec<f32> = halves(&loaded.tensors[0])
        .into_iter()
        .map(|b| bf16::from_bits(b).to_f32())
        .collect();
    assert_eq!(got, want);
}
