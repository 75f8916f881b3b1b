//! The memory a long prefill needs once attention is fused: the tiny Llama's prefill, compiled
//! through the standard pipeline, is evaluated from the manifest at 512, 1024 and 2048 tokens.
//! Its buffers grow linearly (no buffer holds `S×S` elements), where the same program without
//! `attention-fusion` grows quadratically; and a 2048-token prompt is prefilled.

mod common;

use common::cpu::load;
use kiln_frontend::{build, hf, BuildOptions, Program};
use kiln_ir::interp::random::random_bindings;
use kiln_ir::{Bindings, Graph};
use kiln_passes::canonicalize::Canonicalize;
use kiln_passes::gqa_share::GqaShare;
use kiln_passes::{Pass, Pipeline};
use kiln_runtime::manifest::{BufferKind, ProgramDesc};

const TINY_LLAMA: &str = include_str!("../src/embedded/tiny_llama.json");

/// The tiny Llama's prefill for prompts up to 2048 tokens, after `passes`.
fn tiny_prefill(passes: &[&dyn Pass]) -> Graph {
    let mut spec = hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap();
    spec.max_positions = 2048;
    let opts = BuildOptions {
        max_batch: 1,
        max_seq: 2048,
        ..BuildOptions::for_spec(&spec)
    };
    let mut g = build(&spec, Program::Prefill, opts).unwrap();
    for pass in passes {
        pass.run(&mut g).unwrap();
    }
    g
}

fn compiled_prefill(g: Graph) -> (kiln_runtime::Artifact, ProgramDesc) {
    let artifact = common::cpu::compile(&[g]).unwrap();
    let desc = artifact.manifest.program("prefill").unwrap().clone();
    (artifact, desc)
}

/// Bytes of the buffers the steps write (outputs and intermediates, before the memory plan
/// shares the arena) and of the largest one, at `batch = 1` and `seq = n`.
fn temp_bytes(desc: &ProgramDesc, n: i64) -> (i64, i64) {
    let symbols: Vec<i64> = desc
        .symbols
        .iter()
        .map(|s| if s.name == "seq" { n } else { 1 })
        .collect();
    let sizes: Vec<i64> = desc
        .buffers
        .iter()
        .filter(|b| matches!(b.kind, BufferKind::Temp | BufferKind::Intermediate { .. }))
        .map(|b| b.numel.eval(&symbols) * b.dtype.size() as i64)
        .collect();
    (sizes.iter().sum(), sizes.into_iter().max().unwrap_or(0))
}

#[test]
fn prefill_memory_grows_linearly_with_the_prompt() {
    let mut g = tiny_prefill(&[]);
    Pipeline::standard().run(&mut g, |_, _| {}).unwrap();
    let (_, fused) = compiled_prefill(g);
    let (_, unfused) = compiled_prefill(tiny_prefill(&[&Canonicalize, &GqaShare]));
    let mut report = Vec::new();
    for n in [512, 1024, 2048] {
        let (total, largest) = temp_bytes(&fused, n);
        let (double, _) = temp_bytes(&fused, 2 * n);
        let (unfused_total, unfused_largest) = temp_bytes(&unfused, n);
        report.push(format!(
            "seq {n}: fused {total} bytes (largest buffer {largest}), unfused {unfused_total} \
             (largest {unfused_largest})"
        ));
        let growth = double as f64 / total as f64;
        assert!(
            growth <= 2.0 && growth > 1.9,
            "seq {n} → {}: ×{growth:.3}\n{}",
            2 * n,
            report.join("\n")
        );
        // Every buffer is linear in seq: it holds fewer elements than S·S even at batch 1.
        for b in &fused.buffers {
            let numel = |m: i64| {
                let syms: Vec<i64> = fused
                    .symbols
                    .iter()
                    .map(|s| if s.name == "seq" { m } else { 1 })
                    .collect();
                b.numel.eval(&syms)
            };
            assert!(
                numel(2 * n) <= 2 * numel(n),
                "a buffer grows faster than seq: {b:?}"
            );
            assert!(numel(n) < n * n, "a buffer holds S×S elements: {b:?}");
        }
        assert!(
            unfused_largest >= n * n * 4,
            "the unfused program holds scores per head"
        );
    }
    println!("{}", report.join("\n"));
}

#[test]
fn a_2048_token_prompt_is_prefilled() {
    let mut g = tiny_prefill(&[]);
    Pipeline::standard().run(&mut g, |_, _| {}).unwrap();
    let env: Bindings = [("batch".into(), 1), ("seq".into(), 2048)].into();
    let (mut inputs, weights) = random_bindings(&g, &env, common::cpu::VOCAB as u64, 7).unwrap();
    let positions = kiln_ir::interp::Tensor::i64(&[1, 2048], (0..2048).collect());
    inputs.insert("position_ids".into(), positions);
    let (artifact, _) = compiled_prefill(g);
    let model = load(artifact, &weights);
    let mut runner = model.runner("prefill").unwrap();
    let outputs = common::cpu::run(&mut runner, &inputs);
    let logits = outputs["logits"].to_f64();
    assert!(!logits.is_empty() && logits.iter().all(|x| x.is_finite()));
}
