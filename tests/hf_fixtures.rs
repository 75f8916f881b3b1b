//! The frontend's semantics against Hugging Face transformers: the interpreter, running the
//! built `forward` graph on each fixture's weights, reproduces the logits transformers computed
//! at every position, and `prefill` those of the last position; the `decode` graph, run token
//! by token from an empty cache, reproduces them and `prefill`'s cache.

mod common;

use common::*;
use kiln_frontend::{build, load_spec, BuildOptions, Program};
use kiln_ir::interp::{interpret, Tensor, TensorMap};
use kiln_ir::DType;

const TOLERANCE: f64 = 1e-4;

fn prefill_matches_transformers(case: &str) {
    let dir = fixture_dir(case);
    let spec = load_spec(&dir).unwrap();
    let weights = read_safetensors(&dir.join("model.safetensors"));
    let reference = read_safetensors(&dir.join("reference.safetensors"));
    let opts = BuildOptions::for_spec(&spec);
    let batch = reference["input_ids"].shape[0];
    let inputs: TensorMap = [
        ("input_ids".to_string(), reference["input_ids"].clone()),
        (
            "position_ids".to_string(),
            reference["position_ids"].clone(),
        ),
        ("left_padding".to_string(), zeros(DType::I64, &[batch])),
    ]
    .into();
    let run = |program| {
        let g = build(&spec, program, opts).unwrap();
        kiln_ir::verify(&g).unwrap();
        interpret(&g, &inputs, &weights).unwrap()
    };
    let all = &reference["logits"];
    let err = relative_error(&run(Program::Forward)["logits"], all);
    println!("{case}: forward logits relative error {err:.3e}");
    assert!(
        err <= TOLERANCE,
        "{case}: relative error {err:.3e} > {TOLERANCE:e}"
    );
    let err = relative_error(&run(Program::Prefill)["logits"], &last_positions(all));
    println!("{case}: prefill (last position) logits relative error {err:.3e}");
    assert!(
        err <= TOLERANCE,
        "{case}: relative error {err:.3e} > {TOLERANCE:e}"
    );
}

/// Decodes the fixture's prompt one token at a time from an empty cache: every step's logits
/// match transformers' at that position, and the final cache equals what prefill returns.
fn decode_matches_prefill(case: &str) {
    let dir = fixture_dir(case);
    let spec = load_spec(&dir).unwrap();
    let weights = read_safetensors(&dir.join("model.safetensors"));
    let reference = read_safetensors(&dir.join("reference.safetensors"));
    let opts = BuildOptions::for_spec(&spec);
    let decode = build(&spec, Program::Decode, opts).unwrap();
    let prefill = build(&spec, Program::Prefill, opts).unwrap();
    let (ids, positions) = (&reference["input_ids"], &reference["position_ids"]);
    let (batch, seq) = (ids.shape[0], ids.shape[1]);
    let att = &spec.attention;
    let mut cache: TensorMap = (0..spec.num_layers)
        .flat_map(|l| ["key", "value"].map(|kind| format!("past_{kind}_{l}")))
        .map(|name| {
            (
                name,
                zeros(DType::F32, &[batch, att.kv_heads, 0, att.head_dim]),
            )
        })
        .collect();
    let mut worst: f64 = 0.0;
    for step in 0..seq {
        let mut inputs = cache.clone();
        inputs.insert("input_ids".into(), take_columns(ids, step));
        inputs.insert("position_ids".into(), take_columns(positions, step));
        inputs.insert("left_padding".into(), zeros(DType::I64, &[batch]));
        let out = interpret(&decode, &inputs, &weights).unwrap();
        for b in 0..batch {
            let expected = take_rows(&reference["logits"], b, step..step + 1);
            worst = worst.max(relative_error(
                &take_rows(&out["logits"], b, 0..1),
                &expected,
            ));
        }
        for l in 0..spec.num_layers {
            for kind in ["key", "value"] {
                cache.insert(
                    format!("past_{kind}_{l}"),
                    out[&format!("{kind}_{l}")].clone(),
                );
            }
        }
    }
    println!("{case}: decode logits relative error {worst:.3e} (worst step)");
    assert!(
        worst <= TOLERANCE,
        "{case}: decode relative error {worst:.3e}"
    );
    let inputs: TensorMap = [
        ("input_ids".to_string(), ids.clone()),
        ("position_ids".to_string(), positions.clone()),
        ("left_padding".to_string(), zeros(DType::I64, &[batch])),
    ]
    .into();
    let full = interpret(&prefill, &inputs, &weights).unwrap();
    for l in 0..spec.num_layers {
        for kind in ["key", "value"] {
            let err = relative_error(
                &cache[&format!("past_{kind}_{l}")],
                &full[&format!("{kind}_{l}")],
            );
            assert!(
                err <= 1e-5,
                "{case}: {kind} cache of layer {l} differs from prefill's by {err:.3e}"
            );
        }
    }
}

/// Column `step` of a `[batch, seq]` tensor, as `[batch, 1]`.
fn take_columns(t: &kiln_ir::interp::Tensor, step: usize) -> kiln_ir::interp::Tensor {
    let (batch, seq) = (t.shape[0], t.shape[1]);
    let idx: Vec<usize> = (0..batch).map(|b| b * seq + step).collect();
    kiln_ir::interp::Tensor::new(t.dtype, vec![batch, 1], t.data.take(&idx))
}

#[test]
fn decode_matches_prefill_on_every_fixture() {
    for case in HF_CASES {
        decode_matches_prefill(case);
    }
}

#[test]
fn rope_tables_match_transformers() {
    for case in HF_CASES {
        let dir = fixture_dir(case);
        let spec = load_spec(&dir).unwrap();
        let reference = read_safetensors(&dir.join("reference.safetensors"));
        let kiln_frontend::spec::Position::Rope(rope) = &spec.position else {
            panic!("{case}: not RoPE")
        };
        let tables = kiln_frontend::rope::tables(rope, spec.attention.head_dim, spec.max_positions);
        let expected = reference["rope_inv_freq"].to_f64();
        assert_eq!(tables.inv_freq.len(), expected.len(), "{case}");
        for (i, (a, b)) in tables.inv_freq.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{case}: inv_freq[{i}] = {a}, transformers {b}"
            );
        }
        let scaling = reference["rope_attention_scaling"].to_f64()[0];
        assert!(
            (tables.attention_scaling - scaling).abs() < 1e-6,
            "{case}: scaling {} vs {scaling}",
            tables.attention_scaling
        );
    }
}

#[test]
fn prefill_matches_transformers_on_every_fixture() {
    for case in HF_CASES {
        prefill_matches_transformers(case);
    }
}

/// A left-padded batch against transformers: row 0 is the fixture's first prompt, row 1 the
/// first `len` tokens of its second, padded on the left to the same length. A causal model's
/// logits for a prompt's prefix are the full prompt's at those positions, so row 1's real
/// positions must match the reference's first `len` positions of its row, and row 0 all of its
/// own, whatever the filler tokens are.
fn padded_rows_match_transformers(case: &str) {
    let dir = fixture_dir(case);
    let spec = load_spec(&dir).unwrap();
    let weights = read_safetensors(&dir.join("model.safetensors"));
    let reference = read_safetensors(&dir.join("reference.safetensors"));
    let (ids, positions) = (&reference["input_ids"], &reference["position_ids"]);
    let (batch, seq) = (ids.shape[0], ids.shape[1]);
    assert!(
        batch >= 2 && seq >= 3,
        "{case}: the fixture has two prompts"
    );
    let forward = build(&spec, Program::Forward, BuildOptions::for_spec(&spec)).unwrap();
    let all = &reference["logits"];
    for len in [1, seq / 2, seq - 1] {
        let pad = seq - len;
        let (ids, positions) = (ids.to_f64(), positions.to_f64());
        let row1_ids = (0..pad)
            .map(|_| 1.0)
            .chain(ids[seq..seq + len].iter().copied());
        let row1_positions = (0..pad)
            .map(|_| 0.0)
            .chain(positions[seq..seq + len].iter().copied());
        let ids: Vec<f64> = ids[..seq].iter().copied().chain(row1_ids).collect();
        let positions: Vec<f64> = positions[..seq]
            .iter()
            .copied()
            .chain(row1_positions)
            .collect();
        let inputs: TensorMap = [
            (
                "input_ids".to_string(),
                Tensor::from_f64(DType::I64, &[2, seq], ids),
            ),
            (
                "position_ids".to_string(),
                Tensor::from_f64(DType::I64, &[2, seq], positions),
            ),
            (
                "left_padding".to_string(),
                Tensor::from_f64(DType::I64, &[2], [0.0, pad as f64]),
            ),
        ]
        .into();
        let out = &interpret(&forward, &inputs, &weights).unwrap()["logits"];
        let err = relative_error(&take_rows(out, 0, 0..seq), &take_rows(all, 0, 0..seq)).max(
            relative_error(&take_rows(out, 1, pad..seq), &take_rows(all, 1, 0..len)),
        );
        println!("{case}: {len} of {seq} tokens padded by {pad}: relative error {err:.3e}");
        assert!(
            err <= TOLERANCE,
            "{case}: padded by {pad}: relative error {err:.3e} > {TOLERANCE:e}"
        );
    }
}

#[test]
fn padded_rows_match_transformers_on_every_fixture() {
    for case in HF_CASES {
        padded_rows_match_transformers(case);
    }
}
