//! The interpreter's semantics op by op against PyTorch: each case of
//! `tests/fixtures/ops.safetensors` (written by `tools/fixtures/make_op_fixtures.py`) holds
//! inputs and torch's result; the same op is written in kiln's text form, interpreted, and
//! compared element by element.

mod common;

use common::read_safetensors;
use kiln_ir::interp::{interpret, Tensor, TensorMap};
use kiln_ir::text;

fn ty(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape.iter().map(ToString::to_string).collect();
    format!("{}[{}]", t.dtype, dims.join(", "))
}

/// The body of each case's graph, given its output type.
fn body(case: &str, out: &str) -> String {
    let unary = [
        "neg", "abs", "exp", "log", "sqrt", "rsqrt", "recip", "tanh", "erf", "sigmoid", "sin",
        "cos",
    ];
    let binary = ["add", "sub", "mul", "div", "max", "min", "pow"];
    match case {
        c if unary.contains(&c) => format!("%0 = {c} %x : {out}"),
        c if binary.contains(&c) => format!("%0 = {c} %x, %y : {out}"),
        "reduce_sum" => format!("%0 = reduce_sum %x axes=[1] : {out}"),
        "reduce_max" => format!("%0 = reduce_max %x axes=[0,2] : {out}"),
        "reduce_mean" => format!("%0 = reduce_mean %x axes=[2] : {out}"),
        "matmul" | "matmul_broadcast" => format!("%0 = matmul %x, %y : {out}"),
        "gather" => format!("%0 = gather %x, %idx axis=1 : {out}"),
        "scatter" | "scatter_add" => format!("%0 = {case} %x, %idx, %upd axis=0 : {out}"),
        "cast_i64" => format!("%0 = cast %x : {out}"),
        "cast_bf16" => format!("%1 = cast %x : bf16[4, 6]\n%0 = cast %1 : {out}"),
        "cast_f16" => format!("%1 = cast %x : f16[4, 6]\n%0 = cast %1 : {out}"),
        "softmax" => format!(
            "%1 = reduce_max %x axes=[2] : f32[2, 3, 1]\n%2 = broadcast %1 : {out}\n%3 = sub %x, %2 : {out}\n\
             %4 = exp %3 : {out}\n%5 = reduce_sum %4 axes=[2] : f32[2, 3, 1]\n%6 = broadcast %5 : {out}\n\
             %0 = div %4, %6 : {out}"
        ),
        other => panic!("no kiln graph for case `{other}`"),
    }
}

#[test]
fn every_op_matches_pytorch() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops.safetensors");
    let fixture = read_safetensors(&path);
    let cases: std::collections::BTreeSet<&str> = fixture
        .keys()
        .filter_map(|k| k.strip_suffix(".out"))
        .collect();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    for case in cases {
        let expected = &fixture[&format!("{case}.out")];
        let mut inputs = TensorMap::new();
        let mut lines = vec!["graph op".to_string()];
        for name in ["x", "y", "idx", "upd"] {
            if let Some(t) = fixture.get(&format!("{case}.{name}")) {
                lines.push(format!("input %{name} : {}", ty(t)));
                inputs.insert(name.to_string(), t.clone());
            }
        }
        lines.push(body(case, &ty(expected)));
        lines.push("output out = %0".into());
        let g = text::parse(&lines.join("\n")).unwrap_or_else(|e| panic!("{case}: {e}"));
        let got = &interpret(&g, &inputs, &TensorMap::new()).unwrap()["out"];
        assert_eq!(got.shape, expected.shape, "{case}");
        for (i, (a, b)) in got.to_f64().iter().zip(expected.to_f64()).enumerate() {
            let exact = case.starts_with("cast");
            let tol = if exact { 0.0 } else { 2e-6 * b.abs() + 1e-7 };
            assert!((a - b).abs() <= tol, "{case}[{i}]: kiln {a}, torch {b}");
        }
    }
}
