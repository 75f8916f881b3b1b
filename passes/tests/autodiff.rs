//! `autodiff` checked against central finite differences in f64, op by op, on random shapes.
//!
//! Each case is a small IR text whose shapes are filled in by proptest (`{m}`, `{n}`, `{k}`).
//! The harness weights the case's output `%y` by a random cotangent, sums it to a scalar loss,
//! asks for `grad loss, %x` of every float input, runs the pass, and interprets the result with
//! exact (f64) arithmetic. Every element of every gradient must match
//! `(loss(x + h) − loss(x − h)) / 2h` of the untouched graph to within `1e-6·(1 + |g|)`.

use kiln_ir::interp::random::Rng;
use kiln_ir::interp::{interpret_with, Arithmetic, Data, Tensor, TensorMap};
use kiln_ir::{text, Bindings, Graph, NodeId, Op, ReduceOp};
use kiln_passes::autodiff::Autodiff;
use kiln_passes::Pass;
use proptest::prelude::*;

/// Where the float inputs of a case are drawn from (a derivative's domain).
#[derive(Clone, Copy)]
enum Domain {
    /// uniform in [-1, 1)
    Any,
    /// uniform in [0.5, 1.5)
    Positive,
}

/// The case with `%y` weighted by the weight `cotangent` and summed to the output `loss`.
fn with_loss(case: &str) -> Graph {
    let mut g = text::parse(case).unwrap_or_else(|e| panic!("{e}\n{case}"));
    let y = g.outputs()[0].1;
    let cotangent = g.weight("cotangent", g.ty(y).clone()).unwrap();
    let weighted = g.mul(y, cotangent).unwrap();
    let rank = g.ty(y).rank();
    let all: Vec<usize> = (0..rank).collect();
    let summed = if rank == 0 {
        weighted
    } else {
        g.reduce(ReduceOp::Sum, weighted, &all).unwrap()
    };
    let loss = g.reshape(summed, Vec::new()).unwrap();
    g.output("loss", loss).unwrap();
    g
}

/// [`with_loss`] and the gradients of `loss` by every float input, as outputs `d_NAME`.
fn with_gradients(case: &str) -> Graph {
    let mut g = with_loss(case);
    let loss = g.outputs().iter().find(|(n, _)| n == "loss").unwrap().1;
    for x in float_inputs(&g) {
        let Op::Input { name } = g.node(x).op.clone() else {
            unreachable!()
        };
        let grad = g.push(Op::Grad, &[loss, x]).unwrap();
        g.output(&format!("d_{name}"), grad).unwrap();
    }
    g
}

fn float_inputs(g: &Graph) -> Vec<NodeId> {
    g.inputs()
        .iter()
        .copied()
        .filter(|&x| g.ty(x).dtype.is_float())
        .collect()
}

/// Random inputs (floats from `domain`, integers in `0..int_bound`, fair bools) and a random
/// cotangent.
fn bindings(
    g: &Graph,
    env: &Bindings,
    domain: Domain,
    int_bound: u64,
    seed: u64,
) -> [TensorMap; 2] {
    let mut rng = Rng::new(seed);
    let mut maps = [TensorMap::new(), TensorMap::new()];
    for &id in g.inputs().iter().chain(g.weights()) {
        let ty = g.ty(id);
        let shape: Vec<usize> = ty.shape.iter().map(|d| d.eval(env).unwrap()).collect();
        let n: usize = shape.iter().product();
        let (lo, width) = match (domain, &g.node(id).op) {
            (Domain::Positive, Op::Input { .. }) => (0.5, 1.0),
            _ => (-1.0, 2.0),
        };
        let values: Vec<f64> = (0..n)
            .map(|_| match ty.dtype {
                d if d.is_float() => lo + width * rng.unit(),
                d if d.is_int() => (rng.next_u64() % int_bound) as f64,
                _ => (rng.next_u64() & 1) as f64,
            })
            .collect();
        let t = Tensor::from_f64(ty.dtype, &shape, values);
        let (slot, name) = match &g.node(id).op {
            Op::Input { name } => (0, name),
            Op::Weight { name } => (1, name),
            _ => unreachable!(),
        };
        maps[slot].insert(name.clone(), t);
    }
    maps
}

fn floats(t: &Tensor) -> &Vec<f64> {
    match &t.data {
        Data::Float(v) => v,
        _ => panic!("expected floats"),
    }
}

/// Checks every gradient of `case` against finite differences.
fn check(case: &str, env: &[(&str, usize)], domain: Domain, int_bound: u64, seed: u64) {
    let env: Bindings = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    let forward = with_gradients(case);
    let mut backward = forward.clone();
    Autodiff.run(&mut backward).unwrap();
    kiln_ir::verify(&backward).unwrap();
    assert!(
        backward
            .node_ids()
            .all(|id| backward.node(id).op != Op::Grad),
        "every grad is expanded"
    );
    let [inputs, weights] = bindings(&forward, &env, domain, int_bound, seed);
    let exact = |g: &Graph, inputs: &TensorMap| {
        interpret_with(g, inputs, &weights, Arithmetic::Exact).unwrap_or_else(|e| panic!("{e}"))
    };
    let analytic = exact(&backward, &inputs);
    let loss_only = with_loss(case);
    let loss_at = |inputs: &TensorMap| floats(&exact(&loss_only, inputs)["loss"])[0];
    for x in float_inputs(&forward) {
        let Op::Input { name } = forward.node(x).op.clone() else {
            unreachable!()
        };
        let got = floats(&analytic[&format!("d_{name}")]).clone();
        for (i, &g) in got.iter().enumerate() {
            let mut shifted = inputs.clone();
            let at = |shifted: &mut TensorMap, delta: f64| {
                let Data::Float(v) = &mut shifted.get_mut(&name).unwrap().data else {
                    unreachable!()
                };
                v[i] += delta;
            };
            let h = 1e-5;
            at(&mut shifted, h);
            let plus = loss_at(&shifted);
            at(&mut shifted, -2.0 * h);
            let minus = loss_at(&shifted);
            let numeric = (plus - minus) / (2.0 * h);
            assert!(
                (g - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
                "d loss / d {name}[{i}]: autodiff {g}, finite differences {numeric}\n{case}\n{}",
                text::print(&backward)
            );
        }
    }
}

/// `case` with `{m}`, `{n}`, `{k}`, `{mn}` and `{n+k+2}` replaced.
fn shaped(case: &str, m: usize, n: usize, k: usize) -> String {
    case.replace("{mn}", &(m * n).to_string())
        .replace("{n+k+2}", &(n + k + 2).to_string())
        .replace("{m}", &m.to_string())
        .replace("{n}", &n.to_string())
        .replace("{k}", &k.to_string())
}

const UNARY: &[(&str, Domain)] = &[
    ("neg", Domain::Any),
    ("abs", Domain::Any),
    ("exp", Domain::Any),
    ("log", Domain::Positive),
    ("sqrt", Domain::Positive),
    ("rsqrt", Domain::Positive),
    ("recip", Domain::Positive),
    ("tanh", Domain::Any),
    ("erf", Domain::Any),
    ("sigmoid", Domain::Any),
    ("sin", Domain::Any),
    ("cos", Domain::Any),
];

const BINARY: &[(&str, Domain)] = &[
    ("add", Domain::Any),
    ("sub", Domain::Any),
    ("mul", Domain::Any),
    ("div", Domain::Positive),
    ("max", Domain::Any),
    ("min", Domain::Any),
    ("pow", Domain::Positive),
];

/// Every other op, one case each (`Domain::Any`, indices below 2 unless the case says).
const OTHERS: &[(&str, &str)] = &[
    (
        "broadcast operands",
        "input %a : f32[{m}, {n}]
input %b : f32[1, {n}]
%0 = broadcast %b : f32[{m}, {n}]
%1 = mul %a, %0 : f32[{m}, {n}]
output y = %1",
    ),
    (
        "select",
        "input %c : bool[{m}, {n}]
input %a : f32[{m}, {n}]
input %b : f32[{m}, {n}]
%0 = select %c, %a, %b : f32[{m}, {n}]
output y = %0",
    ),
    (
        "compare feeding select",
        "input %a : f32[{m}, {n}]
input %b : f32[{m}, {n}]
%0 = gt %a, %b : bool[{m}, {n}]
%1 = select %0, %a, %b : f32[{m}, {n}]
output y = %1",
    ),
    (
        "cast to bf16 and back",
        "input %a : f32[{m}, {n}]
%0 = cast %a : bf16[{m}, {n}]
%1 = exp %0 : bf16[{m}, {n}]
%2 = cast %1 : f32[{m}, {n}]
output y = %2",
    ),
    (
        "reduce_sum",
        "input %a : f32[{m}, {n}, {k}]
%0 = reduce_sum %a axes=[0,2] : f32[1, {n}, 1]
output y = %0",
    ),
    (
        "reduce_mean",
        "input %a : f32[{m}, {n}, {k}]
%0 = reduce_mean %a axes=[1] : f32[{m}, 1, {k}]
output y = %0",
    ),
    (
        "reduce_mean over a symbol",
        "sym s <= 8
input %a : f32[{m}, s]
%0 = reduce_mean %a axes=[1] : f32[{m}, 1]
output y = %0",
    ),
    (
        "reduce_max",
        "input %a : f32[{m}, {n}]
%0 = reduce_max %a axes=[1] : f32[{m}, 1]
output y = %0",
    ),
    (
        "matmul",
        "input %a : f32[{m}, {k}]
input %b : f32[{k}, {n}]
%0 = matmul %a, %b : f32[{m}, {n}]
output y = %0",
    ),
    (
        "batched matmul with a broadcast operand",
        "input %a : f32[2, {m}, {k}]
input %b : f32[{k}, {n}]
%0 = matmul %a, %b : f32[2, {m}, {n}]
output y = %0",
    ),
    (
        "reshape and permute",
        "input %a : f32[{m}, {n}, {k}]
%0 = permute %a perm=[2,0,1] : f32[{k}, {m}, {n}]
%1 = reshape %0 : f32[{k}, {mn}]
output y = %1",
    ),
    (
        "slice",
        "input %a : f32[{m}, 5]
%0 = slice %a axis=1 start=1 end=3 : f32[{m}, 2]
output y = %0",
    ),
    (
        "slice over a symbol",
        "sym s <= 8
input %a : f32[s, {n}]
%0 = slice %a axis=0 start=1 end=s : f32[s-1, {n}]
output y = %0",
    ),
    (
        "concat",
        "input %a : f32[{m}, {n}]
input %b : f32[{m}, 2]
input %c : f32[{m}, {k}]
%0 = concat %a, %b, %c axis=1 : f32[{m}, {n+k+2}]
output y = %0",
    ),
    (
        "gather (embedding)",
        "input %table : f32[4, {n}]
input %ids : i64[{m}, {k}]
%0 = gather %table, %ids axis=0 : f32[{m}, {k}, {n}]
output y = %0",
    ),
    (
        "scatter_add",
        "input %data : f32[{m}, 4]
input %ids : i64[{k}]
input %updates : f32[{m}, {k}]
%0 = scatter_add %data, %ids, %updates axis=1 : f32[{m}, 4]
output y = %0",
    ),
    (
        "scatter (distinct indices)",
        "input %data : f32[{m}, 4]
input %updates : f32[{m}, 2]
%0 = const [3,1] : i64[2]
%1 = scatter %data, %0, %updates axis=1 : f32[{m}, 4]
output y = %1",
    ),
    (
        "fused region",
        "input %a : f32[{m}, {n}]
input %b : f32[{m}, {n}]
%0 = fused %a, %b { $2 = mul $0, $1; $3 = tanh $2; $4 = add $3, $0 } : f32[{m}, {n}]
output y = %0",
    ),
    (
        "fused reduction",
        "input %a : f32[{m}, {n}]
%0 = fused_reduce_sum %a axes=[1] { $1 = mul $0, $0 } : f32[{m}, 1]
output y = %0",
    ),
    (
        "fused matmul",
        "input %a : f32[{m}, {k}]
input %b : f32[{k}, {n}]
input %c : f32[{m}, {n}]
%0 = fused_matmul %a, %b, %c { $2 = sigmoid $0; $3 = mul $2, $1 } : f32[{m}, {n}]
output y = %0",
    ),
    (
        "flash_attention, causal, grouped",
        "input %q : f32[1, 4, {m}, {k}]
input %k : f32[1, 2, {n}, {k}]
input %v : f32[1, 2, {n}, 3]
input %pos : i64[1, {m}]
%0 = flash_attention %q, %k, %v, %pos mask=causal padding=none bias=none group=2 scale=0.5 tile_q=2 tile_k=2 : f32[1, 4, {m}, 3]
output y = %0",
    ),
    (
        "flash_attention, sliding window",
        "input %q : f32[2, 1, {m}, 2]
input %k : f32[2, 1, {n}, 2]
input %v : f32[2, 1, {n}, {k}]
input %pos : i64[2, {m}]
%0 = flash_attention %q, %k, %v, %pos mask=window(2) padding=none bias=none group=1 scale=1.0 tile_q=1 tile_k=4 : f32[2, 1, {m}, {k}]
output y = %0",
    ),
    (
        "flash_attention, no mask",
        "input %q : f32[1, 2, {m}, {k}]
input %k : f32[1, 1, {n}, {k}]
input %v : f32[1, 1, {n}, 2]
%0 = flash_attention %q, %k, %v mask=none padding=none bias=none group=2 scale=0.7 tile_q=4 tile_k=4 : f32[1, 2, {m}, 2]
output y = %0",
    ),
    (
        "a value used twice",
        "input %a : f32[{m}, {n}]
%0 = exp %a : f32[{m}, {n}]
%1 = mul %0, %a : f32[{m}, {n}]
%2 = add %1, %0 : f32[{m}, {n}]
output y = %2",
    ),
];

fn case_of(op: &str, arity: usize) -> String {
    match arity {
        1 => {
            format!("input %a : f32[{{m}}, {{n}}]\n%0 = {op} %a : f32[{{m}}, {{n}}]\noutput y = %0")
        }
        _ => format!(
            "input %a : f32[{{m}}, {{n}}]\ninput %b : f32[{{m}}, {{n}}]\n\
             %0 = {op} %a, %b : f32[{{m}}, {{n}}]\noutput y = %0"
        ),
    }
}

fn graph(body: &str) -> String {
    format!("graph g\n{body}\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn unary_ops(m in 1usize..4, n in 1usize..4, seed in 0u64..1000) {
        for (op, domain) in UNARY {
            check(&graph(&shaped(&case_of(op, 1), m, n, 1)), &[], *domain, 2, seed);
        }
    }

    #[test]
    fn binary_ops(m in 1usize..4, n in 1usize..4, seed in 0u64..1000) {
        for (op, domain) in BINARY {
            check(&graph(&shaped(&case_of(op, 2), m, n, 1)), &[], *domain, 2, seed);
        }
    }

    #[test]
    fn other_ops(m in 1usize..4, n in 1usize..4, k in 1usize..4, s in 2usize..6, seed in 0u64..1000) {
        for (name, case) in OTHERS {
            let case = graph(&shaped(case, m, n, k));
            // Index inputs stay below the smallest gathered axis (4).
            let bound = if name.starts_with("scatter_add") { 4 } else { 2 };
            check(&case, &[("s", s)], Domain::Any, bound, seed);
        }
    }
}

#[test]
fn a_value_the_loss_does_not_depend_on_gets_zeros() {
    let case = graph(
        "input %a : f32[2, 3]
input %unused : f32[3]
%0 = exp %a : f32[2, 3]
output y = %0",
    );
    check(&case, &[], Domain::Any, 2, 7);
}

#[test]
fn higher_derivatives_are_refused() {
    let mut g = with_gradients(&graph(
        "input %a : f32[]
%0 = exp %a : f32[]
output y = %0",
    ));
    let grad = g.outputs().iter().find(|(n, _)| n == "d_a").unwrap().1;
    let again = g.push(Op::Grad, &[grad, g.inputs()[0]]).unwrap();
    g.output("dd_a", again).unwrap();
    let err = Autodiff.run(&mut g).unwrap_err().to_string();
    assert!(err.contains("higher derivatives"), "{err}");
}
