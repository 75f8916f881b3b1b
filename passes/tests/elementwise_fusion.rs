//! `elementwise-fusion` on small IR texts and on random graphs: which ops join a region, which
//! stay stored, and the interpreter's agreement before and after — exact, since a region
//! evaluates the same primitives in the same order.

use kiln_ir::testing::{random_graph, Profile};
use kiln_ir::{text, Bindings, Graph};
use kiln_passes::elementwise_fusion::ElementwiseFusion;
use kiln_passes::{check_equivalent, Pass};

fn env(pairs: &[(&str, usize)]) -> Bindings {
    pairs.iter().map(|(s, v)| (s.to_string(), *v)).collect()
}

fn fuse(before: &Graph, pass: ElementwiseFusion) -> Graph {
    let mut after = before.clone();
    pass.run(&mut after).unwrap();
    kiln_ir::verify(&after).unwrap();
    after
}

fn check(input: &str, pairs: &[(&str, usize)]) -> String {
    check_with(ElementwiseFusion::default(), input, pairs)
}

fn check_with(pass: ElementwiseFusion, input: &str, pairs: &[(&str, usize)]) -> String {
    let before = text::parse(input).unwrap();
    let after = fuse(&before, pass);
    check_equivalent(&before, &after, &env(pairs), 3, 0..4, 0.0).unwrap();
    let printed = text::print(&after);
    assert_eq!(
        text::print(&text::parse(&printed).unwrap()),
        printed,
        "the fused graph prints and parses back"
    );
    printed
}

/// The op name of every node line of a printed graph.
fn ops(printed: &str) -> Vec<&str> {
    printed
        .lines()
        .filter(|l| l.starts_with('%'))
        .filter_map(|l| l.split_once(" = ")?.1.split(' ').next())
        .collect()
}

/// RMSNorm of `x` scaled by `w`, as the Llama builder writes it.
const RMS_NORM: &str = "graph g
sym s <= 8
input %x : f32[s, 16]
weight @w : f32[16]
%0 = mul %x, %x : f32[s, 16]
%1 = reduce_mean %0 axes=[1] : f32[s, 1]
%2 = const 1e-5 : f32[s, 1]
%3 = add %1, %2 : f32[s, 1]
%4 = rsqrt %3 : f32[s, 1]
%5 = broadcast %4 : f32[s, 16]
%6 = mul %x, %5 : f32[s, 16]
%7 = broadcast @w : f32[s, 16]
%8 = mul %6, %7 : f32[s, 16]
output y = %8
";

#[test]
fn rms_norm_becomes_a_fused_reduction_and_one_map() {
    let out = check(RMS_NORM, &[("s", 3)]);
    insta::assert_snapshot!(out);
    let expected = [
        "fused_reduce_mean",
        "broadcast",
        "const",
        "broadcast",
        "broadcast",
        "fused",
    ];
    assert_eq!(ops(&out), expected, "{out}");
}

#[test]
fn swiglu_is_one_region() {
    let out = check(
        "graph g
sym s <= 8
input %gate : f32[s, 8]
input %up : f32[s, 8]
%0 = sigmoid %gate : f32[s, 8]
%1 = mul %gate, %0 : f32[s, 8]
%2 = mul %1, %up : f32[s, 8]
output y = %2
",
        &[("s", 5)],
    );
    assert!(
        out.contains("fused %gate, %up { $2 = sigmoid $0; $3 = mul $0, $2; $4 = mul $3, $1 }"),
        "{out}"
    );
}

#[test]
fn an_expensive_value_read_twice_is_stored_once() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 8]
%0 = neg %x : f32[s, 8]
%1 = exp %0 : f32[s, 8]
%2 = reduce_sum %1 axes=[1] : f32[s, 1]
%3 = broadcast %2 : f32[s, 8]
%4 = div %1, %3 : f32[s, 8]
output y = %4
",
        &[("s", 4)],
    );
    assert_eq!(
        out.matches("exp").count(),
        1,
        "exp is computed once:\n{out}"
    );
    assert!(out.contains("reduce_sum %0 axes=[1]"), "{out}");
}

/// Where the pass recomputes transcendentals (a bandwidth-bound target), a softmax's
/// exponentials of `x − max` are computed by the sum and again by the division; `exp` of
/// another expensive value still is stored.
#[test]
fn a_bandwidth_bound_target_recomputes_a_softmax_exponential_where_read() {
    let softmax = "graph g
sym s <= 8
input %x : f32[s, 8]
%0 = reduce_max %x axes=[1] : f32[s, 1]
%1 = broadcast %0 : f32[s, 8]
%2 = sub %x, %1 : f32[s, 8]
%3 = exp %2 : f32[s, 8]
%4 = reduce_sum %3 axes=[1] : f32[s, 1]
%5 = broadcast %4 : f32[s, 8]
%6 = div %3, %5 : f32[s, 8]
output y = %6
";
    let recomputing = ElementwiseFusion { memory_bound: true };
    let out = check_with(recomputing, softmax, &[("s", 4)]);
    assert_eq!(out.matches("exp").count(), 2, "exp in both regions:\n{out}");
    assert_eq!(
        ops(&out),
        [
            "reduce_max",
            "broadcast",
            "fused_reduce_sum",
            "broadcast",
            "fused"
        ],
        "{out}"
    );
    let stored = check(softmax, &[("s", 4)]);
    assert_eq!(stored.matches("exp").count(), 1, "{stored}");
    let chained = "graph g
sym s <= 8
input %x : f32[s, 8]
%0 = exp %x : f32[s, 8]
%1 = exp %0 : f32[s, 8]
%2 = exp %1 : f32[s, 8]
%3 = reduce_sum %2 axes=[1] : f32[s, 1]
%4 = broadcast %3 : f32[s, 8]
%5 = div %2, %4 : f32[s, 8]
output y = %5
";
    let out = check_with(recomputing, chained, &[("s", 4)]);
    assert_eq!(out.matches("exp").count(), 3, "each exp once:\n{out}");
}

/// For a bandwidth-bound target, SwiGLU's backward (bf16 gate, up and output gradient) stores
/// none of `sigmoid(gate)`, `gate·sigmoid(gate)` or `gradient·up`: each of the three regions that
/// write what the matmuls read computes them from the bf16 values again. A value whose leaves
/// are wider than itself (an f32 stream plus a bf16 term) stays stored.
#[test]
fn a_bandwidth_bound_target_recomputes_small_trees_over_narrow_values() {
    let swiglu_backward = "graph g
sym s <= 8
input %gate : bf16[s, 8]
input %up : bf16[s, 8]
input %dh : bf16[s, 8]
%g = cast %gate : f32[s, 8]
%u = cast %up : f32[s, 8]
%d = cast %dh : f32[s, 8]
%sig = sigmoid %g : f32[s, 8]
%silu = mul %g, %sig : f32[s, 8]
%h = mul %silu, %u : f32[s, 8]
%hb = cast %h : bf16[s, 8]
%dup = mul %d, %silu : f32[s, 8]
%dupb = cast %dup : bf16[s, 8]
%du = mul %d, %u : f32[s, 8]
%one = const 1.0 : f32[]
%ones = broadcast %one : f32[s, 8]
%rest = sub %ones, %sig : f32[s, 8]
%dsig = mul %sig, %rest : f32[s, 8]
%t = mul %g, %dsig : f32[s, 8]
%u2 = mul %du, %sig : f32[s, 8]
%u3 = mul %du, %t : f32[s, 8]
%dg = add %u2, %u3 : f32[s, 8]
%dgb = cast %dg : bf16[s, 8]
output h = %hb
output d_up = %dupb
output d_gate = %dgb
";
    let memory_bound = ElementwiseFusion { memory_bound: true };
    let out = check_with(memory_bound, swiglu_backward, &[("s", 4)]);
    let regions = ops(&out).into_iter().filter(|op| op.starts_with("fused"));
    assert_eq!(regions.count(), 3, "{out}");
    for line in out.lines().filter(|l| l.contains("= fused")) {
        assert!(
            line.ends_with(": bf16[s, 8]"),
            "only the bf16 results are stored:\n{out}"
        );
    }
    let stored = check(swiglu_backward, &[("s", 4)]);
    assert!(
        ops(&stored).len() > 4,
        "the CPU stores the shared values:\n{stored}"
    );

    let stream = "graph g
sym s <= 8
input %x : f32[s, 8]
input %o : bf16[s, 8]
%0 = cast %o : f32[s, 8]
%1 = add %x, %0 : f32[s, 8]
%2 = mul %1, %1 : f32[s, 8]
%3 = reduce_sum %2 axes=[1] : f32[s, 1]
%4 = neg %1 : f32[s, 8]
output a = %3
output b = %4
";
    let out = check_with(memory_bound, stream, &[("s", 4)]);
    assert_eq!(
        out.matches("add").count(),
        1,
        "the stream is stored once:\n{out}"
    );
}

#[test]
fn a_cheap_value_of_stored_operands_is_recomputed_where_read() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 8]
input %y : f32[s, 8]
%0 = add %x, %y : f32[s, 8]
%1 = mul %0, %0 : f32[s, 8]
%2 = reduce_sum %1 axes=[1] : f32[s, 1]
%3 = neg %0 : f32[s, 8]
%4 = exp %3 : f32[s, 8]
output a = %2
output b = %4
",
        &[("s", 2)],
    );
    assert_eq!(out.matches("add $0, $1").count(), 2, "{out}");
    assert_eq!(
        ops(&out),
        ["fused_reduce_sum", "fused"],
        "the sum is not stored:\n{out}"
    );
}

#[test]
fn outputs_and_matmul_operands_are_stored_and_an_add_becomes_an_epilogue() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 8]
weight @w : f32[8, 8]
%0 = neg %x : f32[s, 8]
%1 = abs %0 : f32[s, 8]
%2 = matmul %1, @w : f32[s, 8]
%3 = add %0, %2 : f32[s, 8]
output y = %3
output n = %0
",
        &[("s", 3)],
    );
    assert_eq!(ops(&out), ["neg", "abs", "fused_matmul"], "{out}");
    assert!(
        out.contains("fused_matmul %1, @w, %0 { $2 = add $1, $0 }"),
        "{out}"
    );
}

/// SwiGLU's product and the residual add after the down projection ride on the matmuls that
/// feed them; a matmul read twice keeps its own node.
#[test]
fn swiglu_and_residual_adds_become_matmul_epilogues() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 8]
weight @gate : f32[8, 16]
weight @up : f32[8, 16]
weight @down : f32[16, 8]
%0 = matmul %x, @gate : f32[s, 16]
%1 = matmul %x, @up : f32[s, 16]
%2 = sigmoid %0 : f32[s, 16]
%3 = mul %0, %2 : f32[s, 16]
%4 = mul %3, %1 : f32[s, 16]
%5 = matmul %4, @down : f32[s, 8]
%6 = add %x, %5 : f32[s, 8]
%7 = mul %6, %6 : f32[s, 8]
output y = %7
output d = %0
",
        &[("s", 5)],
    );
    insta::assert_snapshot!(out);
    assert_eq!(
        ops(&out),
        ["matmul", "fused_matmul", "fused_matmul"],
        "{out}"
    );
}

#[test]
fn rope_is_one_region_per_half_joined_by_a_concat() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 8]
input %cos : f32[s, 8]
input %sin : f32[s, 8]
%0 = mul %x, %cos : f32[s, 8]
%1 = slice %x axis=1 start=4 end=8 : f32[s, 4]
%2 = neg %1 : f32[s, 4]
%3 = slice %x axis=1 start=0 end=4 : f32[s, 4]
%4 = concat %2, %3 axis=1 : f32[s, 8]
%5 = mul %4, %sin : f32[s, 8]
%6 = add %0, %5 : f32[s, 8]
output y = %6
",
        &[("s", 3)],
    );
    insta::assert_snapshot!(out);
    let ops = ops(&out);
    assert_eq!(ops.iter().filter(|&&o| o == "fused").count(), 2, "{out}");
    assert_eq!(ops.last(), Some(&"concat"), "{out}");
}

#[test]
fn a_hoisted_op_that_becomes_an_output_stays_stored() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 4]
%0 = neg %x : f32[s, 4]
%1 = broadcast %0 : f32[2, s, 4]
%2 = broadcast %1 : f32[2, 2, s, 4]
output a = %1
output b = %2
",
        &[("s", 3)],
    );
    assert_eq!(ops(&out), ["broadcast", "neg", "broadcast"], "{out}");
}

/// Every op the generator draws, f16/bf16 casts and scatters included: the fused graph is
/// valid, prints and parses back, and computes exactly what the graph before did (odd seeds
/// recomputing transcendentals).
#[test]
fn random_graphs_fuse_without_changing_a_bit() {
    let mut fused_any = 0;
    for seed in 0..1000 {
        let before = random_graph(seed, Profile::FULL);
        let pass = ElementwiseFusion {
            memory_bound: seed % 2 == 1,
        };
        let after = fuse(&before, pass);
        let printed = text::print(&after);
        fused_any += printed.contains("fused") as usize;
        let round = text::parse(&printed).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{printed}"));
        assert_eq!(text::print(&round), printed, "seed {seed}");
        for (b, s) in [(2, 3), (1, 6)] {
            check_equivalent(
                &before,
                &after,
                &env(&[("batch", b), ("seq", s)]),
                2,
                0..2,
                0.0,
            )
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{printed}"));
        }
    }
    assert!(
        fused_any > 100,
        "only {fused_any} of 300 graphs had a region"
    );
}

#[test]
fn bf16_matmuls_take_epilogues_that_round_their_result() {
    let out = check(
        "graph g
sym s <= 8
input %x : f32[s, 8]
weight @w : f32[8, 16]
%0 = cast %x : bf16[s, 8]
%1 = cast @w : bf16[8, 16]
%2 = matmul %0, %1 : f32[s, 16]
%3 = sigmoid %2 : f32[s, 16]
%4 = mul %2, %3 : f32[s, 16]
%5 = cast %4 : bf16[s, 16]
output y = %5
",
        &[("s", 5)],
    );
    assert_eq!(ops(&out), ["cast", "cast", "fused_matmul"], "{out}");
    assert!(out.contains("fused_matmul %0, %1 {"), "{out}");
    assert!(out.contains(": bf16[s, 16]"), "{out}");
}

/// Attention with a single query row per head (decode) and GQA, its result cast to bf16.
const ROUNDED_ATTENTION: &str = "graph g
sym b <= 4
sym t <= 9
input %q : f32[b, 4, 1, 8]
input %k : f32[b, 2, t, 8]
input %v : f32[b, 2, t, 8]
%0 = flash_attention %q, %k, %v mask=none padding=none bias=none group=2 scale=0.35 tile_q=1 tile_k=64 : f32[b, 4, 1, 8]
%1 = cast %0 : bf16[b, 4, 1, 8]
output y = %1
";

#[test]
fn an_attention_result_cast_to_bf16_is_rounded_as_it_is_stored() {
    let out = check(ROUNDED_ATTENTION, &[("b", 3), ("t", 7)]);
    assert_eq!(ops(&out), ["flash_attention"], "{out}");
    assert!(out.contains(": bf16[b, 4, 1, 8]"), "{out}");
}

#[test]
fn an_attention_result_read_elsewhere_keeps_its_cast() {
    let text = ROUNDED_ATTENTION.replace("output y = %1", "output y = %1\noutput o = %0");
    let out = check(&text, &[("b", 3), ("t", 7)]);
    assert_eq!(ops(&out), ["flash_attention", "cast"], "{out}");
}
