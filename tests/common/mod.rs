//! Shared test helpers: fixture paths, safetensors ↔ interpreter tensors, error measures; `cpu`
//! runs graphs on the CPU backend next to the interpreter.
#![allow(dead_code)]

pub mod cpu;

use kiln_ir::interp::{Tensor, TensorMap};
use kiln_ir::DType;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// The repository root: `KILN_REPO` when set (a test binary run on another machine), else the
/// one the tests were built in.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("KILN_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Runs the `kiln` binary with `args`: whether it succeeded, its stdout and its stderr (which
/// must not show a panic).
pub fn kiln_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
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

pub fn fixture_dir(case: &str) -> PathBuf {
    repo_dir().join("tests/fixtures/hf").join(case)
}

pub const HF_CASES: &[&str] = &[
    "llama",
    "llama_mqa_llama3",
    "llama_yarn_gelu",
    "llama_linear",
    "mistral",
    "qwen2",
];

/// Every tensor of a safetensors file (f32, i64), as interpreter tensors.
pub fn read_safetensors(path: &std::path::Path) -> TensorMap {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                Dtype::F32 => Tensor::f32(
                    &shape,
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::I64 => Tensor::i64(
                    &shape,
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, t)
        })
        .collect()
}

/// `max |a − b| / max |b|`: the relative error the tests bound.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    let (a, b) = (a.to_f64(), b.to_f64());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / scale
}

/// Rows `range` of axis 1 of a `[batch, seq, ...]` tensor, and batch row `b` only.
pub fn take_rows(t: &Tensor, b: usize, range: std::ops::Range<usize>) -> Tensor {
    let (seq, inner): (usize, usize) = (t.shape[1], t.shape[2..].iter().product());
    let start = (b * seq + range.start) * inner;
    let end = (b * seq + range.end) * inner;
    let mut shape = t.shape.clone();
    shape[0] = 1;
    shape[1] = range.len();
    let idx: Vec<usize> = (start..end).collect();
    Tensor::new(t.dtype, shape, t.data.take(&idx))
}

/// The last position of every sequence of `[batch, seq, ..]` values, as `[batch, 1, ..]`.
pub fn last_positions(t: &Tensor) -> Tensor {
    let (batch, seq, inner) = (
        t.shape[0],
        t.shape[1],
        t.shape[2..].iter().product::<usize>(),
    );
    let idx: Vec<usize> = (0..batch)
        .flat_map(|b| ((b * seq + seq - 1) * inner..(b * seq + seq) * inner).collect::<Vec<_>>())
        .collect();
    let mut shape = t.shape.clone();
    shape[1] = 1;
    Tensor::new(t.dtype, shape, t.data.take(&idx))
}

pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
    Tensor::from_f64(
        dtype,
        shape,
        std::iter::repeat_n(0.0, shape.iter().product()),
    )
}
