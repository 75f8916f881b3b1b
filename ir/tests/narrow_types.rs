//! The interpreter's 16-bit floats: every op with an `f16` or `bf16` result equals the same op
//! computed in f32 on the same values and rounded once to the narrow type (nearest even), so the
//! rounding a pass introduces is what the interpreter shows; a matmul of narrow operands that
//! declares an `f32` result accumulates and returns f32 (no narrow rounding), and the typing
//! rules accept no other change of type.

use kiln_ir::interp::interpret;
use kiln_ir::interp::random::random_bindings;
use kiln_ir::{text, verify, Bindings, DType};

/// `%0` (the op on `%a`, `%b` of `ty`) against the reference computed in f32 and rounded; in
/// `op`, `T` stands for the `[3, 5]` type and `R` for the `[3, 1]` type.
fn check(op: &str, ty: DType) {
    let shape = |d: DType| format!("{d}[3, 5]");
    let (n, f) = (shape(ty), shape(DType::F32));
    let (rn, rf) = (format!("{ty}[3, 1]"), "f32[3, 1]".to_string());
    let inputs = format!(
        "input %x : {f}\ninput %y : {f}\n%a = cast %x : {n}\n%b = cast %y : {n}\n\
         %wa = cast %a : {f}\n%wb = cast %b : {f}\n"
    );
    let narrow_op = op.replace('T', &n).replace('R', &rn);
    let narrow = format!("graph g\n{inputs}{narrow_op}\noutput z = %0\n");
    let wide = op
        .replace("%a", "%wa")
        .replace("%b", "%wb")
        .replace('T', &f)
        .replace('R', &rf);
    let result = if op.ends_with('R') { &rn } else { &n };
    let reference = format!("graph g\n{inputs}{wide}\n%r = cast %0 : {result}\noutput z = %r\n");
    let (narrow, reference) = (
        text::parse(&narrow).unwrap(),
        text::parse(&reference).unwrap(),
    );
    for seed in 0..4 {
        let (inputs, weights) = random_bindings(&narrow, &Bindings::new(), 3, seed).unwrap();
        let got = &interpret(&narrow, &inputs, &weights).unwrap()["z"];
        let want = &interpret(&reference, &inputs, &weights).unwrap()["z"];
        let same = got
            .to_f64()
            .iter()
            .zip(want.to_f64())
            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        assert!(same, "{op} in {ty}, seed {seed}: {got:?} vs {want:?}");
    }
}

#[test]
fn every_op_rounds_its_narrow_result() {
    let ops = [
        "neg", "abs", "exp", "log", "sqrt", "rsqrt", "recip", "tanh", "erf", "sigmoid", "sin",
        "cos",
    ]
    .map(|u| format!("%0 = {u} %a : T"))
    .into_iter()
    .chain(
        ["add", "sub", "mul", "div", "max", "min", "pow"].map(|b| format!("%0 = {b} %a, %b : T")),
    )
    .chain(["reduce_sum", "reduce_max", "reduce_mean"].map(|r| format!("%0 = {r} %a axes=[1] : R")))
    .chain([
        "%c = lt %a, %b : bool[3, 5]\n%0 = select %c, %a, %b : T".to_string(),
        "%s = slice %a axis=1 start=0 end=1 : R\n%0 = broadcast %s : T".to_string(),
    ]);
    for ty in [DType::BF16, DType::F16] {
        for op in ops.clone() {
            check(&op, ty);
        }
    }
}

#[test]
fn matmul_of_narrow_operands_accumulates_in_f32() {
    let graph = |result: &str| {
        format!(
            "graph g\ninput %x : f32[3, 40]\ninput %y : f32[40, 5]\n\
             %a = cast %x : bf16[3, 40]\n%b = cast %y : bf16[40, 5]\n\
             %wa = cast %a : f32[3, 40]\n%wb = cast %b : f32[40, 5]\n{result}output z = %0\n"
        )
    };
    let widening = text::parse(&graph("%0 = matmul %a, %b : f32[3, 5]\n")).unwrap();
    let in_f32 = text::parse(&graph("%0 = matmul %wa, %wb : f32[3, 5]\n")).unwrap();
    let narrow = text::parse(&graph("%0 = matmul %a, %b : bf16[3, 5]\n")).unwrap();
    let rounded = text::parse(&graph(
        "%m = matmul %wa, %wb : f32[3, 5]\n%0 = cast %m : bf16[3, 5]\n",
    ))
    .unwrap();
    let (inputs, _) = random_bindings(&widening, &Bindings::new(), 3, 7).unwrap();
    let run = |g| interpret(g, &inputs, &Default::default()).unwrap()["z"].clone();
    assert_eq!(
        run(&widening),
        run(&in_f32),
        "f32 result of the exact products"
    );
    assert_eq!(
        run(&narrow),
        run(&rounded),
        "a bf16 result is that, rounded once"
    );
    assert_ne!(
        run(&widening).to_f64(),
        run(&narrow).to_f64(),
        "f32 keeps more bits"
    );
    let text = text::print(&widening);
    assert!(text.contains("= matmul %0, %1 : f32[3, 5]"), "{text}");
    verify(&text::parse(&text).unwrap()).unwrap();
}

#[test]
fn matmul_declares_no_other_change_of_type() {
    for (a, b, result) in [
        ("f32", "f32", "bf16"),
        ("bf16", "bf16", "f16"),
        ("bf16", "f16", "f32"),
        ("i64", "i64", "f32"),
    ] {
        let g = format!(
            "graph g\ninput %a : {a}[2, 3]\ninput %b : {b}[3, 4]\n\
             %0 = matmul %a, %b : {result}[2, 4]\noutput z = %0\n"
        );
        assert!(
            text::parse(&g).is_err(),
            "{a} × {b} → {result} was accepted"
        );
    }
}

/// An attention gradient declared at its operands' narrow type is its f32 value rounded once, as
/// a cast of it is (`kiln_ir::testing::bf16_attention_backward`: `dv_bf16` against `dv_cast`,
/// bit for bit on every mask kind); no other declared type is accepted.
#[test]
fn a_narrow_attention_gradient_is_the_rounded_f32_one() {
    for case in kiln_ir::testing::BF16_ATTENTION_CASES {
        let (mask, _, _, _, _, _, s, t, _) = case;
        let g = text::parse(&kiln_ir::testing::bf16_attention_backward(case)).unwrap();
        let env: Bindings = [("b", 2), ("s", s), ("t", t)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let (inputs, weights) = random_bindings(&g, &env, t as u64 + 8, 5).unwrap();
        let out = interpret(&g, &inputs, &weights).unwrap();
        let (narrow, cast) = (&out["dv_bf16"], &out["dv_cast"]);
        assert_eq!(narrow.dtype, DType::BF16, "{mask}");
        let bits = |x: &kiln_ir::interp::Tensor| -> Vec<u64> {
            x.to_f64().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(narrow), bits(cast), "{mask}");
    }
    let text = kiln_ir::testing::bf16_attention_backward(kiln_ir::testing::BF16_ATTENTION_CASES[0]);
    let line = text.lines().find(|l| l.starts_with("%gvn")).unwrap();
    for other in ["f16", "i64"] {
        let declared = text.replace(line, &line.replace(": bf16[", &format!(": {other}[")));
        assert!(text::parse(&declared).is_err(), "{other} was accepted");
    }
}
