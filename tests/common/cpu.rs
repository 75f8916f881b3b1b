//! The CPU backend next to the interpreter: compile graphs into an artifact (through its bytes,
//! as a file would carry it), load it with weights, move tensors between the interpreter and the
//! runtime, and compare results within a stated tolerance.

use kiln_backend_cpu::CompileError;
use kiln_ir::interp::random::random_bindings;
use kiln_ir::interp::{self, interpret, Data, TensorMap};
use kiln_ir::{Bindings, DType, Graph};
use kiln_runtime::manifest::{ElemType, ModelInfo};
use kiln_runtime::{Artifact, Model, Runner, Tensor};

/// The vocabulary size of every test artifact (the runtime checks `input_ids` against it).
pub const VOCAB: usize = 16;

pub fn model_info() -> ModelInfo {
    ModelInfo {
        family: "test".into(),
        vocab_size: VOCAB,
        num_layers: 1,
        heads: 1,
        kv_heads: 1,
        head_dim: 4,
        max_positions: 64,
        tied_embeddings: false,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        chat_template: None,
    }
}

/// Compiles `graphs` into one artifact and reads it back from its bytes.
pub fn compile(graphs: &[Graph]) -> Result<Artifact, CompileError> {
    let artifact = kiln_backend_cpu::compile(graphs, model_info())?;
    Ok(Artifact::from_bytes(&artifact.to_bytes(), "test.kiln").unwrap())
}

/// Loads `artifact` with the named `weights`, passed in the manifest's order.
pub fn load(artifact: Artifact, weights: &TensorMap) -> Model {
    let tensors = in_manifest_order(&artifact, weights);
    Model::new(artifact, "test.kiln", tensors, 2).unwrap()
}

/// The named `weights` as runtime tensors, in the order `artifact`'s manifest lists them.
pub fn in_manifest_order(artifact: &Artifact, weights: &TensorMap) -> Vec<Tensor> {
    artifact
        .manifest
        .weights
        .iter()
        .map(|w| runtime_tensor(&weights[&w.name]))
        .collect()
}

fn elem_type(dtype: DType) -> ElemType {
    kiln_backend_cpu::lower::elem_type(dtype)
}

/// An interpreter tensor as the runtime holds it (f32, bf16, i64, i32 or bool).
pub fn runtime_tensor(t: &interp::Tensor) -> Tensor {
    let bytes: Vec<u8> = match (&t.data, t.dtype) {
        (Data::Float(v), DType::F32) => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        // The interpreter holds bf16 values exactly: each is the high half of its f32.
        (Data::Float(v), DType::BF16) => v
            .iter()
            .flat_map(|&x| (((x as f32).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        (Data::Int(v), DType::I64) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (Data::Int(v), DType::I32) => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        (Data::Bool(v), _) => v.iter().map(|&x| x as u8).collect(),
        (_, other) => panic!("no runtime tensors of {other}"),
    };
    Tensor::from_bytes(elem_type(t.dtype), &t.shape, &bytes)
}

/// A runtime tensor as the interpreter holds it.
pub fn interp_tensor(t: &Tensor) -> interp::Tensor {
    let bytes = t.bytes();
    let (dtype, data) = match t.dtype {
        ElemType::F32 => (
            DType::F32,
            Data::Float(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
            ),
        ),
        ElemType::Bf16 => (
            DType::BF16,
            Data::Float(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64())
                    .collect(),
            ),
        ),
        ElemType::I64 => (
            DType::I64,
            Data::Int(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
        ),
        ElemType::I32 => (
            DType::I32,
            Data::Int(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
        ),
        ElemType::Bool => (
            DType::Bool,
            Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        ),
        other => panic!("no interpreter tensors of {}", other.name()),
    };
    interp::Tensor::new(dtype, t.shape.clone(), data)
}

/// Sets `inputs`, runs, and returns every output of the runner's program.
pub fn run(runner: &mut Runner, inputs: &TensorMap) -> TensorMap {
    for (name, t) in inputs {
        runner.set_input(name, runtime_tensor(t)).unwrap();
    }
    runner.run().unwrap();
    let names: Vec<String> = runner
        .desc()
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .collect();
    names
        .into_iter()
        .map(|name| {
            let t = interp_tensor(&runner.output(&name).unwrap());
            (name, t)
        })
        .collect()
}

/// How close a compiled result must be to the interpreter's. Integer and bool results are always
/// compared exactly; in every mode a NaN must meet a NaN and an infinity the same infinity.
#[derive(Clone, Copy, Debug)]
pub enum Tol {
    /// The same bits (copies and layout ops).
    Exact,
    /// `|got − want| ≤ tol·|want|` element by element, or one step apart among subnormals
    /// (elementwise ops).
    Rel(f64),
    /// `max |got − want| ≤ tol·max |want|` (sums, whose elements may cancel to near zero).
    Norm(f64),
}

/// Checks `got` against the reference `want`; the error names `what` and the first element off.
pub fn compare(
    what: &str,
    got: &interp::Tensor,
    want: &interp::Tensor,
    tol: Tol,
) -> Result<(), String> {
    if got.dtype != want.dtype || got.shape != want.shape {
        return Err(format!(
            "{what}: got {}{:?}, expected {}{:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    let (Data::Float(g), Data::Float(w)) = (&got.data, &want.data) else {
        return if got.data == want.data {
            Ok(())
        } else {
            let (g, w) = (got.to_f64(), want.to_f64());
            let i = g.iter().zip(&w).position(|(a, b)| a != b).unwrap();
            Err(format!("{what}[{i}]: got {}, expected {}", g[i], w[i]))
        };
    };
    let scale = w
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f64, |m, &x| m.max(x.abs()));
    for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
        let ok = if !b.is_finite() || !a.is_finite() {
            a == b || (a.is_nan() && b.is_nan())
        } else {
            let diff = (a - b).abs();
            match tol {
                Tol::Exact => a.to_bits() == b.to_bits(),
                Tol::Rel(t) => diff <= t * b.abs() + f32::from_bits(1) as f64,
                Tol::Norm(t) => diff <= t * scale,
            }
        };
        if !ok {
            return Err(format!("{what}[{i}]: got {a:e}, expected {b:e} ({tol:?})"));
        }
    }
    Ok(())
}

/// Interprets `g` and runs it compiled at each of `envs` in turn on one runner, on random inputs
/// (integers in `0..ints`) and weights, comparing every output within `tol`.
pub fn check(g: &Graph, envs: &[Bindings], ints: u64, tol: Tol) -> Result<(), String> {
    check_compiled(g, g, envs, ints, tol)
}

/// As [`check`], running `compiled` (a rewrite of `g` with the same signature) on the CPU.
pub fn check_compiled(
    g: &Graph,
    compiled: &Graph,
    envs: &[Bindings],
    ints: u64,
    tol: Tol,
) -> Result<(), String> {
    let (_, weights) = random_bindings(g, &envs[0], ints, 0).map_err(|e| e.to_string())?;
    let artifact = compile(std::slice::from_ref(compiled)).map_err(|e| e.to_string())?;
    let model = load(artifact, &weights);
    let mut runner = model.runner(&g.name).unwrap();
    for (i, env) in envs.iter().enumerate() {
        let at = format!("{env:?}");
        let (inputs, _) = random_bindings(g, env, ints, 1 + i as u64).map_err(|e| e.to_string())?;
        let want = interpret(g, &inputs, &weights).map_err(|e| format!("{at}: {e}"))?;
        let got = run(&mut runner, &inputs);
        for (name, w) in &want {
            compare(&format!("{at} {name}"), &got[name], w, tol)?;
        }
    }
    Ok(())
}
