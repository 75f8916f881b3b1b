//! The kernels run: programs compiled by this backend are executed by the PTX emulator
//! (`ptx::emulate`) and compared with the reference interpreter on random inputs — random
//! graphs before and after elementwise fusion, attention of every mask kind, the tiny Llama's
//! `prefill`, `forward` and `decode` at both precisions, and every Hugging Face test fixture's
//! `prefill` and `decode`.
//!
//! Grids are capped at a few blocks, so every kernel's grid-stride loop is exercised; every
//! memory access is checked to lie inside a buffer, and temporaries start as NaN bytes so an
//! element never written shows.

use crate::ptx::emulate::{launch, Memory, Program};
use kiln_ir::interp::random::random_bindings;
use kiln_ir::interp::{interpret, Tensor, TensorMap};
use kiln_ir::testing::{random_graph, Profile};
use kiln_ir::{Bindings, DType, Graph};
use kiln_runtime::manifest::{BufferKind, ModelInfo};
use kiln_runtime::{Artifact, Poly};
use std::collections::HashMap;

/// The most blocks a launch gets here.
const GRID_CAP: u64 = 3;

fn bytes_of(t: &Tensor) -> Vec<u8> {
    (0..t.numel())
        .flat_map(|i| {
            let v = t.data.get_f64(i);
            match t.dtype {
                DType::F32 => (v as f32).to_le_bytes().to_vec(),
                DType::BF16 => (((v as f32).to_bits() >> 16) as u16).to_le_bytes().to_vec(),
                DType::I64 => (v as i64).to_le_bytes().to_vec(),
                DType::I32 => (v as i32).to_le_bytes().to_vec(),
                DType::Bool => vec![(v != 0.0) as u8],
                other => panic!("no {other} test tensors"),
            }
        })
        .collect()
}

fn tensor_of(bytes: &[u8], dtype: DType, shape: &[usize]) -> Tensor {
    let size = crate::kernels::dtype::elem_bytes(dtype).unwrap() as usize;
    let values = bytes.chunks(size).map(|c| match dtype {
        DType::F32 => f32::from_le_bytes(c.try_into().unwrap()) as f64,
        DType::BF16 => {
            f32::from_bits((u16::from_le_bytes(c.try_into().unwrap()) as u32) << 16) as f64
        }
        DType::I64 => i64::from_le_bytes(c.try_into().unwrap()) as f64,
        DType::I32 => i32::from_le_bytes(c.try_into().unwrap()) as f64,
        _ => c[0] as f64,
    });
    Tensor::from_f64(dtype, shape, values.collect::<Vec<_>>())
}

fn ir_dtype(e: kiln_runtime::manifest::ElemType) -> DType {
    use kiln_runtime::manifest::ElemType as E;
    match e {
        E::F32 => DType::F32,
        E::F16 => DType::F16,
        E::Bf16 => DType::BF16,
        E::I32 => DType::I32,
        E::I64 => DType::I64,
        E::Bool => DType::Bool,
    }
}

/// Runs program `name` of `artifact` in the emulator.
fn emulate(artifact: &Artifact, name: &str, inputs: &TensorMap, weights: &TensorMap) -> TensorMap {
    let ptx = std::str::from_utf8(&artifact.object).unwrap();
    let entries: HashMap<&str, Program> = ptx
        .split(".visible .entry ")
        .skip(1)
        .map(|e| (e.split('(').next().unwrap(), Program::parse(e)))
        .collect();
    let program = artifact.manifest.program(name).unwrap();
    let mut symbols = vec![0i64; program.symbols.len()];
    for io in &program.inputs {
        for (poly, &size) in io.shape.iter().zip(&inputs[&io.name].shape) {
            if let [t] = poly.terms.as_slice() {
                if t.coeff == 1 && t.symbols.len() == 1 {
                    symbols[t.symbols[0] as usize] = size as i64;
                }
            }
        }
    }
    let eval = |p: &Poly| p.eval(&symbols).max(0) as usize;
    let mut memory = Memory::default();
    let mut addresses = Vec::new();
    for b in &program.buffers {
        let bytes = match &b.kind {
            BufferKind::Input(i) => bytes_of(&inputs[&program.inputs[*i].name]),
            BufferKind::Weight(i) => bytes_of(&weights[&artifact.manifest.weights[*i].name]),
            BufferKind::Constant(i) => {
                let c = &artifact.manifest.constants[*i];
                artifact.data[c.offset..c.offset + c.len].to_vec()
            }
            BufferKind::Temp | BufferKind::Intermediate { .. } => {
                vec![0xff; eval(&b.numel) * b.dtype.size()]
            }
        };
        addresses.push(memory.place(&bytes));
    }
    let syms: Vec<u8> = symbols.iter().flat_map(|s| s.to_le_bytes()).collect();
    let syms = memory.place(&syms);
    for step in &program.steps {
        let l = step.launch.as_ref().unwrap();
        let table: Vec<u8> = l
            .buffers
            .iter()
            .flat_map(|&b| addresses[b].to_le_bytes())
            .collect();
        let params = HashMap::from([
            ("bufs".to_string(), memory.place(&table)),
            ("syms".to_string(), syms),
        ]);
        let blocks: i64 = l.blocks.iter().map(|f| f.count(&symbols)).product();
        if blocks > 0 {
            let entry = &entries[step.kernel.as_str()];
            launch(
                entry,
                &mut memory,
                (blocks as u64).min(GRID_CAP),
                l.threads as u64,
                &params,
            );
        }
    }
    program
        .outputs
        .iter()
        .map(|io| {
            let shape: Vec<usize> = io.shape.iter().map(eval).collect();
            let n: usize = shape.iter().product();
            let bytes = memory.read(addresses[io.buffer], (n * io.dtype.size()) as u64);
            (
                io.name.clone(),
                tensor_of(bytes, ir_dtype(io.dtype), &shape),
            )
        })
        .collect()
}

/// `‖got − want‖ / ‖want‖` for floats (NaN must meet NaN), exact equality otherwise.
fn check_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!(
            "{name}: shape {:?}, want {:?}",
            got.shape, want.shape
        ));
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for i in 0..want.numel() {
        let (g, w) = (got.data.get_f64(i), want.data.get_f64(i));
        if w.is_nan() != g.is_nan() || (w.is_infinite() && g != w) {
            return Err(format!("{name}[{i}] = {g}, want {w}"));
        }
        if w.is_finite() {
            diff += (g - w) * (g - w);
            norm += w * w;
        }
    }
    let err = diff.sqrt() / norm.sqrt().max(1e-30);
    let exact = !want.dtype.is_float();
    if (exact && diff > 0.0) || err > tol {
        return Err(format!("{name}: relative error {err:e} > {tol:e}"));
    }
    Ok(())
}

fn model() -> ModelInfo {
    ModelInfo {
        family: "test".into(),
        ..ModelInfo::default()
    }
}

/// Compiles `g`, runs it under `env` in the emulator and in the interpreter, and compares.
fn check(
    g: &Graph,
    reference: &Graph,
    env: &Bindings,
    tol: f64,
    int_bound: u64,
) -> Result<(), String> {
    let artifact = crate::compile(std::slice::from_ref(g), model()).map_err(|e| e.0)?;
    let (inputs, weights) = random_bindings(g, env, int_bound, 7).map_err(|e| e.to_string())?;
    let want = interpret(reference, &inputs, &weights).map_err(|e| e.to_string())?;
    let got = emulate(&artifact, &g.name, &inputs, &weights);
    for (name, w) in &want {
        check_close(name, &got[name], w, tol)?;
    }
    Ok(())
}

fn env(pairs: &[(&str, usize)]) -> Bindings {
    pairs.iter().map(|(s, v)| (s.to_string(), *v)).collect()
}

#[test]
fn random_graphs_match_the_interpreter() {
    use kiln_passes::elementwise_fusion::ElementwiseFusion;
    use kiln_passes::Pass;
    let profile = Profile {
        scatter: true,
        half_floats: false,
    };
    let mut failures = Vec::new();
    for seed in 0..24 {
        let g = random_graph(seed, profile);
        let mut fused = g.clone();
        ElementwiseFusion.run(&mut fused).unwrap();
        for (which, compiled) in [("plain", &g), ("fused", &fused)] {
            for e in [
                env(&[("batch", 2), ("seq", 3)]),
                env(&[("batch", 1), ("seq", 5)]),
            ] {
                if let Err(err) = check(compiled, &g, &e, 1e-4, 4) {
                    failures.push(format!("seed {seed} {which} {e:?}: {err}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn attention_of_every_mask_matches_the_interpreter() {
    let cases = [
        ("causal", "i64", 4, 2, 16, 16),
        ("window(3)", "i64", 4, 2, 8, 40),
        ("prefix(4)", "i32", 3, 3, 36, 12),
        ("none", "", 2, 1, 8, 8),
    ];
    for (mask, pos, heads, kv, d, dv) in cases {
        let group = heads / kv;
        let mut text = "graph attention\nsym b <= 4\nsym s <= 80\nsym t <= 80\n".to_string();
        text += &format!("input %q : f32[b, {heads}, s, {d}]\n");
        text += &format!("input %k : f32[b, {kv}, t, {d}]\ninput %v : f32[b, {kv}, t, {dv}]\n");
        let mut operands = "%q, %k, %v".to_string();
        if !pos.is_empty() {
            text += &format!("input %pos : {pos}[b, s]\n");
            operands += ", %pos";
        }
        let attrs = format!("mask={mask} bias=none group={group} scale=0.3 tile_q=4 tile_k=8");
        text += &format!(
            "%y = flash_attention {operands} {attrs} : f32[b, {heads}, s, {dv}]\noutput y = %y\n"
        );
        // The backward: log-sum-exp and the three gradients for a cotangent `%dy`.
        text += &format!(
            "input %dy : f32[b, {heads}, s, {dv}]\n\
             %l = flash_attention_lse {operands} {attrs} : f32[b, {heads}, s]\n\
             %gq = flash_attention_grad_q {operands}, %y, %dy, %l {attrs} : f32[b, {heads}, s, {d}]\n\
             %gk = flash_attention_grad_k {operands}, %y, %dy, %l {attrs} : f32[b, {kv}, t, {d}]\n\
             %gv = flash_attention_grad_v {operands}, %y, %dy, %l {attrs} : f32[b, {kv}, t, {dv}]\n\
             output lse = %l\noutput dq = %gq\noutput dk = %gk\noutput dv = %gv\n"
        );
        let g = kiln_ir::text::parse(&text).unwrap();
        // Positions drawn below 40 over 37 keys: some queries see every key, some fewer.
        let e = env(&[("b", 2), ("s", 5), ("t", 37)]);
        check(&g, &g, &e, 1e-5, 40).unwrap_or_else(|err| panic!("mask {mask}: {err}"));
    }
}

/// `program` of `spec` after the pipeline at `precision`, emulated against the interpreter.
fn check_model(
    spec: &kiln_frontend::ModelSpec,
    program: kiln_frontend::Program,
    precision: kiln_passes::Precision,
    env: &Bindings,
) -> Result<(), String> {
    use kiln_frontend::{build, BuildOptions};
    use kiln_passes::{Pipeline, PipelineOptions};
    let options = PipelineOptions {
        precision,
        ..PipelineOptions::default()
    };
    let mut g = build(spec, program, BuildOptions::for_spec(spec)).map_err(|e| e.to_string())?;
    Pipeline::with_options(&options)
        .run(&mut g, |_, _| {})
        .map_err(|e| e.to_string())?;
    check(&g, &g, env, 1e-4, 16).map_err(|e| format!("{program} at {precision}: {e}"))
}

/// The tiny Llama's three programs at both precisions.
#[test]
fn tiny_llama_programs_match_the_interpreter() {
    use kiln_frontend::{hf, Program};
    use kiln_passes::Precision;
    let text = include_str!("../../../../src/embedded/tiny_llama.json");
    let spec = hf::read_config(text, "tiny_llama.json").unwrap();
    for precision in [Precision::F32, Precision::Bf16Weights] {
        for (program, e) in [
            (Program::Prefill, env(&[("batch", 1), ("seq", 5)])),
            (Program::Forward, env(&[("batch", 2), ("seq", 3)])),
            (Program::Decode, env(&[("batch", 2), ("past", 3)])),
        ] {
            check_model(&spec, program, precision, &e).unwrap();
        }
    }
}

/// Every Hugging Face test fixture's `prefill` and `decode` (sliding windows, biases, GELU,
/// MQA, scaled RoPE).
#[test]
fn fixture_models_match_the_interpreter() {
    use kiln_frontend::{load_spec, Program};
    use kiln_passes::Precision;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 6,
        "fixtures not found under {}",
        root.display()
    );
    for dir in dirs {
        let spec = load_spec(&dir).unwrap();
        for (program, e) in [
            (Program::Prefill, env(&[("batch", 1), ("seq", 6)])),
            (Program::Decode, env(&[("batch", 1), ("past", 5)])),
        ] {
            check_model(&spec, program, Precision::F32, &e)
                .unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        }
    }
}
