//! The KV cache grows in place: the tiny Llama's `decode` names one buffer at capacity for each
//! `past_X` input and its `X` output, runs no copy of the old rows (on the CPU and the GPU
//! targets alike), gives the same bits as the same program compiled with dense caches at every
//! step up to the capacity (batch 1 and 2, f32 and bf16 weights), and refuses a step past the
//! capacity with an error naming the input and the capacity.

mod common;

use common::cpu::runtime_tensor;
use kiln::compile::{model_info, optimized_programs, Target};
use kiln_frontend::{BuildOptions, ModelSpec, Program};
use kiln_ir::interp::random::random_bindings;
use kiln_ir::{Graph, Op};
use kiln_passes::{PipelineOptions, Precision};
use kiln_runtime::manifest::{Capacity, ProgramDesc};
use kiln_runtime::{Artifact, Model, Runner, Tensor};

/// Positions the test programs are compiled for: the caches' capacity.
const MAX_SEQ: usize = 16;

fn tiny_llama() -> ModelSpec {
    let text = include_str!("../src/embedded/tiny_llama.json");
    kiln_frontend::hf::read_config(text, "tiny_llama.json").unwrap()
}

fn decode_graph(target: Target, precision: Precision) -> Graph {
    let opts = BuildOptions {
        max_batch: 2,
        max_seq: MAX_SEQ,
        ..BuildOptions::for_spec(&tiny_llama())
    };
    let options = PipelineOptions {
        precision,
        ..PipelineOptions::default()
    };
    let mut graphs =
        optimized_programs(target, &tiny_llama(), &[Program::Decode], opts, &options).unwrap();
    graphs.remove(0)
}

/// `g` with each cache input also returned as an output, which keeps the compiler from
/// appending to it in place: the caches stay dense, as before in-place appends.
fn with_dense_caches(g: &Graph) -> Graph {
    let mut dense = g.clone();
    for &id in g.inputs() {
        if let Op::Input { name } = &g.node(id).op {
            if name.starts_with("past_") {
                dense.output(&format!("echo_{name}"), id).unwrap();
            }
        }
    }
    dense
}

fn load(g: &Graph, weights: &kiln_ir::interp::TensorMap) -> Model {
    let artifact = kiln_backend_cpu::compile(std::slice::from_ref(g), model_info(&tiny_llama()));
    let artifact = Artifact::from_bytes(&artifact.unwrap().to_bytes(), "decode.kiln").unwrap();
    let tensors = common::cpu::in_manifest_order(&artifact, weights);
    Model::new(artifact, "decode.kiln", tensors, 2).unwrap()
}

fn caches(desc: &ProgramDesc) -> Vec<String> {
    let names = desc.inputs.iter().map(|i| i.name.clone());
    names.filter(|n| n.starts_with("past_")).collect()
}

/// Sets the step's token ids and positions (every sequence at `past`).
fn set_step(runner: &mut Runner, batch: usize, past: usize) {
    let ids: Vec<i64> = (0..batch)
        .map(|b| ((past * 7 + b * 13) % 256) as i64)
        .collect();
    let positions = vec![past as i64; batch];
    let runner_set = |r: &mut Runner, n: &str, t| r.set_input(n, t).unwrap();
    runner_set(runner, "input_ids", Tensor::i64(&[batch, 1], &ids));
    runner_set(runner, "position_ids", Tensor::i64(&[batch, 1], &positions));
}

/// Decodes from a random cache of 3 positions to the capacity with the in-place and the dense
/// program side by side, comparing every output's bits at every step; then one step more.
fn in_place_matches_dense(precision: Precision, batch: usize) {
    let g = decode_graph(Target::Cpu, precision);
    let env = [("batch".to_string(), batch), ("past".to_string(), 3)].into();
    let (inputs, weights) = random_bindings(&g, &env, 256, 11).unwrap();
    let (in_place, dense) = (load(&g, &weights), load(&with_dense_caches(&g), &weights));
    let (mut a, mut b) = (
        in_place.runner("decode").unwrap(),
        dense.runner("decode").unwrap(),
    );
    let names = caches(a.desc());
    for name in &names {
        let io = a.desc().inputs.iter().find(|i| &i.name == name).unwrap();
        let expected = Capacity {
            axis: 2,
            entries: MAX_SEQ,
        };
        assert_eq!(io.capacity, Some(expected), "{name}");
        let dense_io = b.desc().inputs.iter().find(|i| &i.name == name).unwrap();
        assert_eq!(dense_io.capacity, None, "{name}");
        let cache = runtime_tensor(&inputs[name]);
        a.set_input(name, cache.clone()).unwrap();
        b.set_input(name, cache).unwrap();
    }
    for past in 3..MAX_SEQ {
        set_step(&mut a, batch, past);
        set_step(&mut b, batch, past);
        a.run().unwrap();
        b.run().unwrap();
        for out in a.desc().outputs.iter().map(|o| o.name.clone()) {
            let (x, y) = (a.output(&out).unwrap(), b.output(&out).unwrap());
            assert_eq!(x.shape, y.shape, "{out} at past {past}");
            assert!(
                x.bytes() == y.bytes(),
                "{precision:?}, batch {batch}: {out} differs at past {past}"
            );
        }
        for name in &names {
            let output = &name["past_".len()..];
            a.feed_back(name, output).unwrap();
            let grown = b.take_output(output).unwrap();
            b.set_input(name, grown).unwrap();
        }
    }
    // Every cache now holds MAX_SEQ positions: the next step would write past the capacity.
    set_step(&mut a, batch, MAX_SEQ);
    let e = a.run().unwrap_err().to_string();
    assert!(
        e.contains("`past_key_0`") && e.contains(&format!("capacity of {MAX_SEQ}")),
        "{e}"
    );
    // A dense cache longer than the capacity is refused when set.
    let shape = [batch, 2, MAX_SEQ + 1, 16];
    let e = a
        .set_input(
            "past_value_1",
            Tensor::zeros(kiln_runtime::ElemType::F32, &shape),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`past_value_1`") && e.contains("capacity of 16"),
        "{e}"
    );
}

#[test]
fn in_place_decode_matches_dense_caches_bit_for_bit_up_to_the_capacity() {
    for precision in [Precision::F32, Precision::Bf16Weights] {
        for batch in [1, 2] {
            in_place_matches_dense(precision, batch);
        }
    }
}

/// Bytes the steps whose label names a concat move at `past` (batch 1).
fn concat_bytes(desc: &ProgramDesc, past: i64) -> i64 {
    let symbols: Vec<i64> = desc
        .symbols
        .iter()
        .map(|s| if s.name == "past" { past } else { 1 })
        .collect();
    let steps = desc.steps.iter().filter(|s| s.label.contains("concat"));
    steps
        .map(|s| {
            let items: i64 = s.work.iter().map(|f| f.count(&symbols)).product();
            items * s.item_bytes.eval(&symbols)
        })
        .sum()
}

#[test]
fn decode_copies_no_old_cache_rows() {
    for target in [Target::Cpu, Target::Cuda] {
        let g = decode_graph(target, Precision::F32);
        let artifact = match target {
            Target::Cpu => kiln_backend_cpu::compile(&[g], model_info(&tiny_llama())).unwrap(),
            Target::Cuda => kiln_backend_cuda::compile(&[g], model_info(&tiny_llama())).unwrap(),
        };
        let desc = artifact.manifest.program("decode").unwrap();
        for output in desc
            .outputs
            .iter()
            .filter(|o| !["logits", "next_tokens"].contains(&o.name.as_str()))
        {
            let input = desc.aliased_input(output).map(|i| &desc.inputs[i].name);
            assert_eq!(input, Some(&format!("past_{}", output.name)), "{target:?}");
        }
        // The concat copies left are the value's new row (the key's is written in place) and
        // RoPE's table, neither growing with the cache.
        assert_eq!(
            concat_bytes(desc, 1),
            concat_bytes(desc, 100),
            "{target:?}: the concat steps' bytes grow with the cache"
        );
    }
}
