//! `mixed-precision` as a specification: small IR texts under each policy (snapshot, and the
//! interpreter against f32 within the policy's tolerance), the tiny Llama's decode and prefill
//! under each policy, and two exactness properties on generated graphs:
//! - `bf16-weights` computes exactly what the f32 graph computes on bf16-rounded weights;
//! - `bf16` and `f16` compute exactly what the f32 graph computes when every matmul operand is
//!   rounded to the narrow type (and the weights are), so the widening matmul, cast cancelling
//!   and moving casts through views change nothing else.
//!
//! Tolerances (relative error `max |a − b| / max(1, max |a|)` against the f32 graph, inputs and
//! weights uniform in [-1, 1)): `f32` 0; `bf16-weights` and `bf16` 5e-2 and `f16` 6e-3, about 12
//! units of rounding of the narrow type (2⁻⁸ for bf16, 2⁻¹¹ for f16). Measured on the tiny
//! Llama's logits, worst of 8 seeds: `bf16-weights` 1.0e-2 (decode) and 1.6e-2 (prefill), `bf16`
//! 1.1e-2 and 3.2e-2, `f16` 1.8e-3 and 2.7e-3 (also in `docs/passes.md`).

use kiln_ir::interp::random::random_bindings;
use kiln_ir::interp::{eval_op, interpret, Tensor, TensorMap};
use kiln_ir::testing::{random_graph, Profile};
use kiln_ir::{text, Bindings, DType, Graph, NodeId, Op};
use kiln_passes::mixed_precision::MixedPrecision;
use kiln_passes::{check_equivalent, stored_as, Pass, Precision};
use proptest::prelude::*;

/// The bound on relative error against the f32 graph each policy is tested to.
fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::F32 => 0.0,
        Precision::Bf16Weights | Precision::Bf16 => 5e-2,
        Precision::F16 => 6e-3,
    }
}

fn bindings(env: &[(&str, usize)]) -> Bindings {
    env.iter().map(|(s, v)| (s.to_string(), *v)).collect()
}

fn run(g: &Graph, precision: Precision) -> Graph {
    let mut after = g.clone();
    MixedPrecision { precision }.run(&mut after).unwrap();
    kiln_ir::verify(&after).unwrap();
    after
}

/// Parses `input`, runs the pass under `precision`, checks the result against f32 within the
/// policy's tolerance, and returns the printed result.
fn check(input: &str, precision: Precision, env: &[(&str, usize)]) -> String {
    let before = text::parse(input).unwrap();
    let after = run(&before, precision);
    check_equivalent(
        &before,
        &after,
        &bindings(env),
        4,
        0..4,
        tolerance(precision),
    )
    .unwrap_or_else(|e| panic!("{precision}: {e}"));
    text::print(&after)
}

/// An embedding, an RMS norm with its scale, and a linear layer read through its transpose.
const LAYER: &str = "graph g
sym n <= 8
input %ids : i64[n]
weight @embed : f32[16, 32]
weight @norm : f32[32]
weight @proj : f32[24, 32]
%0 = gather @embed, %ids axis=0 : f32[n, 32]
%1 = mul %0, %0 : f32[n, 32]
%2 = reduce_mean %1 axes=[1] : f32[n, 1]
%3 = rsqrt %2 : f32[n, 1]
%4 = broadcast %3 : f32[n, 32]
%5 = mul %0, %4 : f32[n, 32]
%6 = broadcast @norm : f32[n, 32]
%7 = mul %5, %6 : f32[n, 32]
%8 = permute @proj perm=[1,0] : f32[32, 24]
%9 = matmul %7, %8 : f32[n, 24]
output y = %9
";

#[test]
fn f32_changes_nothing_but_the_remark() {
    let before = text::parse(LAYER).unwrap();
    let out = check(LAYER, Precision::F32, &[("n", 5)]);
    let unchanged = text::print(&before);
    assert_eq!(
        out,
        format!("{unchanged}remark mixed-precision: policy f32, nothing narrowed\n")
    );
}

#[test]
fn bf16_weights_store_contracted_weights_narrow() {
    let out = check(LAYER, Precision::Bf16Weights, &[("n", 5)]);
    assert!(out.contains("weight @proj : bf16[24, 32]"), "{out}");
    assert!(out.contains("weight @norm : f32[32]"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn bf16_narrows_matmul_operands_with_f32_accumulation() {
    insta::assert_snapshot!(check(LAYER, Precision::Bf16, &[("n", 5)]));
}

#[test]
fn f16_narrows_matmul_operands_with_f32_accumulation() {
    insta::assert_snapshot!(check(LAYER, Precision::F16, &[("n", 5)]));
}

#[test]
fn matmuls_of_other_types_are_refused() {
    let input = "graph g
input %a : i64[2, 3]
input %b : i64[3, 2]
%0 = matmul %a, %b : i64[2, 2]
output y = %0
";
    let out = check(input, Precision::Bf16, &[]);
    assert!(out.contains("0 matmuls"), "{out}");
    assert!(out.contains("1 refused"), "{out}");
}

/// After `autodiff`, the weights are the f32 master weights that training updates: none is
/// narrowed (here `@embed` and `@proj` are only contracted), while the matmuls of the forward
/// and of the backward (the gradients by `@proj` and by the normed activations) take bf16
/// operands.
#[test]
fn a_differentiated_program_keeps_its_weights_f32() {
    use kiln_passes::autodiff::Autodiff;
    let loss = "%10 = reduce_sum %9 axes=[0,1] : f32[1, 1]
%11 = reshape %10 : f32[]
%12 = grad %11, @proj : f32[24, 32]
%13 = grad %11, @embed : f32[16, 32]
output d_proj = %12
output d_embed = %13
";
    let mut g = text::parse(&format!("{LAYER}{loss}")).unwrap();
    Autodiff.run(&mut g).unwrap();
    let out = check(&text::print(&g), Precision::Bf16, &[("n", 5)]);
    for weight in [
        "@embed : f32[16, 32]",
        "@proj : f32[24, 32]",
        "@norm : f32[32]",
    ] {
        assert!(out.contains(&format!("weight {weight}")), "{out}");
    }
    assert!(
        out.contains("0 weights stored bf16")
            && out.contains("2 kept f32 (master weights of a differentiated program)")
            && out.contains("3 matmuls on bf16 operands"),
        "{out}"
    );
}

/// In a differentiated program at `bf16`, a matmul that contracts a weight stores its result
/// bf16, as autocast does: the forward's hidden projection, the logits and the gradient of the
/// hidden activations by the head. The weight gradients (no weight operand) stay f32; the
/// gradients agree with the f32 program within the policy's bound.
#[test]
fn a_differentiated_program_stores_activation_matmuls_bf16() {
    use kiln_passes::autodiff::Autodiff;
    let input = "graph g
sym n <= 8
input %x : f32[n, 16]
weight @hidden : f32[16, 32]
weight @head : f32[32, 24]
%0 = matmul %x, @hidden : f32[n, 32]
%1 = tanh %0 : f32[n, 32]
%2 = matmul %1, @head : f32[n, 24]
%3 = reduce_max %2 axes=[1] : f32[n, 1]
%4 = stop_gradient %3 : f32[n, 1]
%5 = broadcast %4 : f32[n, 24]
%6 = sub %2, %5 : f32[n, 24]
%7 = exp %6 : f32[n, 24]
%8 = reduce_sum %7 axes=[0,1] : f32[1, 1]
%9 = reshape %8 : f32[]
%10 = grad %9, @hidden : f32[16, 32]
%11 = grad %9, @head : f32[32, 24]
output d_hidden = %10
output d_head = %11
";
    let mut g = text::parse(input).unwrap();
    Autodiff.run(&mut g).unwrap();
    let out = check(&text::print(&g), Precision::Bf16, &[("n", 5)]);
    assert!(out.contains("3 matmul results stored bf16"), "{out}");
    let after = text::parse(&out).unwrap();
    let matmuls: Vec<NodeId> = after
        .order()
        .into_iter()
        .filter(|&id| matches!(after.node(id).op, Op::MatMul))
        .collect();
    assert_eq!(matmuls.len(), 5, "{out}");
    // The weight gradients are `[16, 32]` and `[32, 24]`, of no symbol.
    for id in matmuls {
        let fixed = after.ty(id).shape.iter().all(|d| d.as_fixed().is_some());
        let want = if fixed { DType::F32 } else { DType::BF16 };
        assert_eq!(after.ty(id).dtype, want, "{out}");
    }
}

/// In a differentiated program `flash_attention`, its log-sum-exp and its three gradients take
/// the same bf16 queries, keys and values (one cast each), the gradients a bf16 cotangent and
/// the forward's result, which is stored bf16 (as autocast's attention returns it) and cast to
/// f32 for its other reader; the log-sum-exp and the gradients stay f32. The gradients agree
/// with the f32 program within the policy's bound.
#[test]
fn a_differentiated_attention_and_its_backward_take_bf16_operands() {
    use kiln_passes::autodiff::Autodiff;
    let input = "graph g
sym s <= 8
input %q : f32[1, 4, s, 16]
input %k : f32[1, 2, s, 16]
input %v : f32[1, 2, s, 16]
input %pos : i64[1, s]
%0 = flash_attention %q, %k, %v, %pos mask=causal padding=none bias=none group=2 scale=0.25 tile_q=2 tile_k=2 : f32[1, 4, s, 16]
%1 = mul %0, %0 : f32[1, 4, s, 16]
%2 = reduce_sum %1 axes=[0,1,2,3] : f32[1, 1, 1, 1]
%3 = reshape %2 : f32[]
%4 = grad %3, %q : f32[1, 4, s, 16]
%5 = grad %3, %k : f32[1, 2, s, 16]
%6 = grad %3, %v : f32[1, 2, s, 16]
output dq = %4
output dk = %5
output dv = %6
";
    let mut g = text::parse(input).unwrap();
    Autodiff.run(&mut g).unwrap();
    let out = check(&text::print(&g), Precision::Bf16, &[("s", 6)]);
    assert!(out.contains("1 flash_attention on bf16 operands"), "{out}");
    let after = text::parse(&out).unwrap();
    let mut backward = 0;
    for id in after.order() {
        let op = &after.node(id).op;
        let arity = match op {
            Op::FlashAttention(a) | Op::FlashAttentionLse(a) => a.arity(),
            Op::FlashAttentionGrad { attention, .. } => attention.arity(),
            _ => continue,
        };
        let operands = after.operands(id);
        for &x in &operands[..3] {
            assert_eq!(after.ty(x).dtype, DType::BF16, "{out}");
        }
        let stored = match op {
            Op::FlashAttention(_) => DType::BF16,
            _ => DType::F32,
        };
        assert_eq!(after.ty(id).dtype, stored, "{out}");
        if let Op::FlashAttentionGrad { .. } = op {
            for slot in [arity, arity + 1] {
                assert_eq!(after.ty(operands[slot]).dtype, DType::BF16, "{out}");
            }
            backward += 1;
        }
    }
    assert_eq!(backward, 3, "{out}");
    let casts = out.matches("= cast").count();
    assert_eq!(
        casts, 5,
        "one cast each of q, k, v and the cotangent, and the result's back to f32:\n{out}"
    );
}

/// Attention gradients that only the backward's matmuls read (the projections' weight
/// gradients, through casts to bf16) are declared bf16 themselves, and no cast of them is left;
/// the weight gradients agree with the f32 program within the policy's bound.
#[test]
fn attention_gradients_read_only_by_matmuls_are_computed_bf16() {
    use kiln_passes::autodiff::Autodiff;
    let input = "graph g
sym s <= 8
input %x : f32[1, s, 32]
input %pos : i64[1, s]
weight @wq : f32[32, 64]
weight @wk : f32[32, 32]
weight @wv : f32[32, 32]
%q0 = matmul %x, @wq : f32[1, s, 64]
%q1 = reshape %q0 : f32[1, s, 4, 16]
%q = permute %q1 perm=[0,2,1,3] : f32[1, 4, s, 16]
%k0 = matmul %x, @wk : f32[1, s, 32]
%k1 = reshape %k0 : f32[1, s, 2, 16]
%k = permute %k1 perm=[0,2,1,3] : f32[1, 2, s, 16]
%v0 = matmul %x, @wv : f32[1, s, 32]
%v1 = reshape %v0 : f32[1, s, 2, 16]
%v = permute %v1 perm=[0,2,1,3] : f32[1, 2, s, 16]
%0 = flash_attention %q, %k, %v, %pos mask=causal padding=none bias=none group=2 scale=0.25 tile_q=2 tile_k=2 : f32[1, 4, s, 16]
%1 = mul %0, %0 : f32[1, 4, s, 16]
%2 = reduce_sum %1 axes=[0,1,2,3] : f32[1, 1, 1, 1]
%3 = reshape %2 : f32[]
%4 = grad %3, @wq : f32[32, 64]
%5 = grad %3, @wk : f32[32, 32]
%6 = grad %3, @wv : f32[32, 32]
output dwq = %4
output dwk = %5
output dwv = %6
";
    let mut g = text::parse(input).unwrap();
    Autodiff.run(&mut g).unwrap();
    let out = check(&text::print(&g), Precision::Bf16, &[("s", 6)]);
    assert!(
        out.contains("3 of their gradients rounded to bf16"),
        "{out}"
    );
    let after = text::parse(&out).unwrap();
    for id in after.order() {
        if let Op::FlashAttentionGrad { .. } = after.node(id).op {
            assert_eq!(after.ty(id).dtype, DType::BF16, "{out}");
            for user in after.users(id) {
                assert!(!matches!(after.node(user).op, Op::Cast), "{out}");
            }
        }
    }
}

/// The tiny Llama's program as the pipeline hands it to this pass (the committed snapshot).
fn tiny_llama(program: &str) -> Graph {
    let path = format!(
        "{}/../tests/snapshots/ir_snapshots__{program}__gqa-share.snap",
        env!("CARGO_MANIFEST_DIR")
    );
    let snap = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let body = snap.splitn(3, "---\n").nth(2).expect("an insta header");
    text::parse(body).unwrap()
}

#[test]
fn tiny_llama_decode_and_prefill_agree_with_f32_within_tolerance() {
    for (program, env) in [
        ("decode", [("batch", 2), ("past", 3)]),
        ("prefill", [("batch", 2), ("seq", 5)]),
    ] {
        let before = tiny_llama(program);
        for precision in Precision::ALL {
            let after = run(&before, precision);
            check_equivalent(
                &before,
                &after,
                &bindings(&env),
                3,
                0..3,
                tolerance(precision),
            )
            .unwrap_or_else(|e| panic!("{program}, {precision}: {e}"));
        }
    }
}

/// `g` with every f32 matmul's operands rounded through `dtype`: the reference the narrow
/// policies must equal exactly.
fn rounded_matmuls(g: &Graph, dtype: DType) -> Graph {
    let mut g = g.clone();
    for mm in g.order() {
        let ops = g.operands(mm);
        let f32_matmul =
            matches!(g.node(mm).op, Op::MatMul) && ops.iter().all(|&o| g.ty(o).dtype == DType::F32);
        if !f32_matmul {
            continue;
        }
        let round = |g: &mut Graph, x: NodeId| {
            let narrow = g.cast(x, dtype)?;
            g.cast(narrow, DType::F32)
        };
        let a = round(&mut g, ops[0]).unwrap();
        let b = round(&mut g, ops[1]).unwrap();
        let rounded = g.matmul(a, b).unwrap();
        g.replace_uses(mm, rounded);
    }
    g
}

/// Every weight of `weights` back in f32 (exact for narrow floats).
fn widened(weights: &TensorMap) -> TensorMap {
    weights
        .iter()
        .map(|(name, t)| {
            let wide = eval_op(
                &Op::Cast,
                &[t],
                DType::F32,
                t.shape.clone(),
                &Bindings::new(),
            );
            (name.clone(), wide.unwrap())
        })
        .collect()
}

fn identical(a: &Tensor, b: &Tensor) -> bool {
    let (x, y) = (a.to_f64(), b.to_f64());
    a.dtype == b.dtype
        && a.shape == b.shape
        && x.iter()
            .zip(&y)
            .all(|(p, q)| p == q || (p.is_nan() && q.is_nan()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn narrow_policies_compute_exactly_the_rounded_f32_graph(seed in any::<u64>(), pick in 0usize..3) {
        let precision = [Precision::Bf16Weights, Precision::Bf16, Precision::F16][pick];
        let g = random_graph(seed, Profile::FULL);
        let after = run(&g, precision);
        let reference = match precision.matmul_dtype() {
            DType::F32 => g.clone(),
            narrow => rounded_matmuls(&g, narrow),
        };
        let env = bindings(&[("batch", 2), ("seq", 3)]);
        let (inputs, weights) = random_bindings(&g, &env, 2, seed).unwrap();
        let stored = stored_as(&after, &weights, &env).unwrap();
        let want = interpret(&reference, &inputs, &widened(&stored)).unwrap();
        let got = interpret(&after, &inputs, &stored).unwrap();
        for (name, t) in &want {
            prop_assert!(identical(t, &got[name]), "{precision}: output {name} differs\n{}", text::print(&after));
        }
    }
}
