//! The CPU backend op by op against the interpreter.
//!
//! One table of small graphs covers every op the backend compiles, in each dtype it takes and in
//! the code paths it chooses between (vector lanes and scalar tails, the three matmul forms and
//! the GEMM call, gathers that copy runs or single elements). Each case is interpreted and run
//! compiled on the same random inputs at several values of `seq` (tails and 0 included), one
//! after another on one runner, so storage reused from a larger run cannot hide a missed write.
//! kiln's own `exp` is also checked over a wide range against f64, and random graphs against the
//! interpreter.

mod common;

use common::cpu::{check, check_compiled, compare, compile, load, run, Tol};
use kiln_ir::interp::Data;
use kiln_ir::testing::{random_graph, Profile};
use kiln_ir::{BinaryOp, Bindings, DType, Dim, Graph, NodeId, ReduceOp, TensorType, UnaryOp};
use kiln_passes::elementwise_fusion::ElementwiseFusion;
use kiln_passes::Pass;
use proptest::prelude::*;

/// Sizes of `seq` each case runs at, in this order: tails, 0 right after a non-empty run, and
/// 12 rows (enough for the GEMM call of a matmul with a symbolic row count).
const SEQS: &[usize] = &[5, 0, 1, 4, 7, 12];
/// For cases that need `seq ≥ 1`.
const NONZERO_SEQS: &[usize] = &[5, 1, 4, 7, 12];
/// For matmuls: also 133 rows, a GEMM tile of 128 rows and a tail tile of 5 run by loops.
const MATMUL_SEQS: &[usize] = &[5, 0, 1, 4, 9, 133];
/// Integer inputs are uniform in `0..INTS` unless a case says otherwise.
const INTS: u64 = 100;

/// Accuracy of float results (integer and bool results, and floats that are only moved, are
/// compared exactly):
/// - elementwise ops, measured within 1.6e-7 (1.4 ulp) of f64 rounded once: `+ − × ÷ sqrt
///   recip` are correctly rounded, `rsqrt` rounds twice, and kiln's `exp` (`sigmoid` through
///   it) and libm's `logf sinf cosf tanhf erff powf` are within about an ulp;
const ELEMENTWISE: Tol = Tol::Rel(1e-6);
/// - sums in f32 (reductions, matmul) against f64 accumulation, relative to the largest result
///   since one sum may cancel to near zero; measured up to 4e-6 (a mean of 21 terms in [-4, 4)
///   that cancel to 0.3).
const SUMS: Tol = Tol::Norm(1e-5);

struct Case {
    graph: Graph,
    seqs: &'static [usize],
    ints: u64,
    tol: Tol,
}

impl Case {
    fn new(graph: Graph, tol: Tol) -> Case {
        Case {
            graph,
            seqs: SEQS,
            ints: INTS,
            tol,
        }
    }

    fn seqs(self, seqs: &'static [usize]) -> Case {
        Case { seqs, ..self }
    }

    fn ints(self, ints: u64) -> Case {
        Case { ints, ..self }
    }
}

/// A case in the text form; `seq <= 136` is declared when the body uses it.
fn text(name: &str, body: &str, tol: Tol) -> Case {
    let sym = if body.contains("seq") {
        "sym seq <= 136\n"
    } else {
        ""
    };
    let graph = kiln_ir::text::parse(&format!("graph {name}\n{sym}{body}"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Case::new(graph, tol)
}

/// Runs every case, then reports all that failed.
fn check_table(cases: Vec<Case>) {
    let count = cases.len();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let envs: Vec<Bindings> = if c.graph.symbols().is_empty() {
                vec![Bindings::new()]
            } else {
                c.seqs.iter().map(|&n| [("seq".into(), n)].into()).collect()
            };
            check(&c.graph, &envs, c.ints, c.tol)
                .err()
                .map(|e| format!("{}: {e}", c.graph.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A graph `name` declaring `seq <= 136`, with the given inputs, built on by `body`, whose result
/// is the output `y`.
fn graph(
    name: &str,
    inputs: &[(&str, DType, &[Dim])],
    body: impl FnOnce(&mut Graph, &[NodeId]) -> Result<NodeId, kiln_ir::IrError>,
) -> Graph {
    let mut g = Graph::new(name);
    g.symbol("seq", 136).unwrap();
    let xs: Vec<NodeId> = inputs
        .iter()
        .map(|(input, dtype, shape)| {
            g.input(input, TensorType::new(*dtype, shape.to_vec()))
                .unwrap()
        })
        .collect();
    let y = body(&mut g, &xs).unwrap_or_else(|e| panic!("{name}: {e}"));
    g.output("y", y).unwrap();
    g
}

fn seq() -> Dim {
    Dim::sym("seq")
}

fn n(v: usize) -> Dim {
    Dim::fixed(v)
}

const NUMERIC: [DType; 3] = [DType::F32, DType::I64, DType::I32];
const ALL_DTYPES: [DType; 4] = [DType::F32, DType::I64, DType::I32, DType::Bool];

/// Random inputs moved to a wider range: floats ×4 (`[-4, 4)`), integers −50 (`[-50, 50)`);
/// bools stay.
fn spread(g: &mut Graph, x: NodeId) -> Result<NodeId, kiln_ir::IrError> {
    match g.ty(x).dtype {
        DType::Bool => Ok(x),
        d if d.is_float() => g.binary_scalar(BinaryOp::Mul, x, 4.0),
        _ => g.binary_scalar(BinaryOp::Sub, x, 50.0),
    }
}

/// A second operand: floats ×4, integers `2x − 99` (odd, so never a zero divisor).
fn spread_divisor(g: &mut Graph, y: NodeId) -> Result<NodeId, kiln_ir::IrError> {
    match g.ty(y).dtype {
        DType::Bool => Ok(y),
        d if d.is_float() => g.binary_scalar(BinaryOp::Mul, y, 4.0),
        _ => g
            .binary_scalar(BinaryOp::Mul, y, 2.0)
            .and_then(|y| g.binary_scalar(BinaryOp::Sub, y, 99.0)),
    }
}

#[test]
fn unary_ops() {
    let mut cases = Vec::new();
    for &op in UnaryOp::ALL {
        for dtype in ALL_DTYPES.into_iter().filter(|&d| op.accepts(d)) {
            let name = format!("{}_{dtype}", op.name());
            // 7 columns: one vector of 4 lanes and a scalar tail of 3.
            let g = graph(&name, &[("x", dtype, &[seq(), n(7)])], |g, xs| {
                let x = spread(g, xs[0])?;
                g.unary(op, x)
            });
            cases.push(Case::new(g, ELEMENTWISE));
        }
    }
    check_table(cases);
}

#[test]
fn binary_ops() {
    let mut cases = Vec::new();
    for &op in BinaryOp::ALL {
        for dtype in ALL_DTYPES.into_iter().filter(|&d| op.accepts(d)) {
            let name = format!("{}_{dtype}", op.name());
            // `y` is one column broadcast along the rows: a stride-0 leaf.
            let inputs: &[(&str, DType, &[Dim])] =
                &[("x", dtype, &[seq(), n(7)]), ("y", dtype, &[seq(), n(1)])];
            let g = graph(&name, inputs, |g, xs| {
                let x = spread(g, xs[0])?;
                let y = spread_divisor(g, xs[1])?;
                g.binary(op, x, y)
            });
            cases.push(Case::new(g, ELEMENTWISE));
        }
    }
    cases.extend([
        text(
            "add_broadcast_row_and_scalar",
            "input %x : f32[seq, 9]\ninput %r : f32[9]\n\
             %0 = broadcast %r : f32[seq, 9]\n%1 = add %x, %0 : f32[seq, 9]\n\
             %2 = const 0.5 : f32[seq, 9]\n%3 = mul %1, %2 : f32[seq, 9]\noutput y = %3",
            ELEMENTWISE,
        ),
        // Rows over two axes.
        text(
            "unary_chain_rank3",
            "input %x : f32[2, seq, 6]\n%0 = exp %x : f32[2, seq, 6]\n\
             %1 = sqrt %0 : f32[2, seq, 6]\n%2 = sigmoid %1 : f32[2, seq, 6]\n\
             %3 = recip %2 : f32[2, seq, 6]\noutput y = %3",
            ELEMENTWISE,
        ),
        // NaN in `max`/`min` and `reduce_max` gives NaN, in vector lanes and scalar code.
        text(
            "max_min_with_nan",
            "%x = const [nan,1,-2,nan,5,0,-1,2,nan] : f32[9]\n\
             %y = const [0,nan,-3,nan,4,-0,1,3,1] : f32[9]\n%0 = max %x, %y : f32[9]\n\
             %1 = min %x, %y : f32[9]\n%2 = slice %x axis=0 start=4 end=9 : f32[5]\n\
             %3 = reduce_max %2 axes=[0] : f32[1]\n%4 = reduce_max %y axes=[0] : f32[1]\n\
             output max = %0\noutput min = %1\noutput rmax = %3\noutput rmax_y = %4",
            ELEMENTWISE,
        ),
    ]);
    check_table(cases);
}

#[test]
fn select_ops() {
    let mut cases = Vec::new();
    for dtype in ALL_DTYPES {
        let name = format!("select_{dtype}");
        let inputs: &[(&str, DType, &[Dim])] = &[
            ("c", DType::Bool, &[seq(), n(7)]),
            ("a", dtype, &[seq(), n(7)]),
            ("b", dtype, &[seq(), n(1)]),
        ];
        let g = graph(&name, inputs, |g, xs| g.select(xs[0], xs[1], xs[2]));
        cases.push(Case::new(g, Tol::Exact));
    }
    cases.push(text(
        "select_on_a_compare",
        "input %x : f32[seq, 5]\ninput %y : f32[seq, 5]\n%0 = lt %x, %y : bool[seq, 5]\n\
         %1 = select %0, %x, %y : f32[seq, 5]\noutput y = %1",
        Tol::Exact,
    ));
    check_table(cases);
}

#[test]
fn casts() {
    let mut cases = Vec::new();
    for from in ALL_DTYPES {
        for to in ALL_DTYPES.into_iter().filter(|&d| d != from) {
            let name = format!("cast_{from}_to_{to}");
            let g = graph(&name, &[("x", from, &[seq(), n(7)])], |g, xs| {
                // Floats in [-40, 40): fractions truncate toward zero, both signs.
                let x = match from {
                    DType::F32 => g.binary_scalar(BinaryOp::Mul, xs[0], 40.0)?,
                    _ => spread(g, xs[0])?,
                };
                g.cast(x, to)
            });
            cases.push(Case::new(g, Tol::Exact));
        }
    }
    let special = "%x = const [0,-0,0.5,-0.5,1.5,-2.7,nan,100000,inf,-inf,1e10,-1e10] : f32[12]";
    for to in ["i64", "i32", "bool"] {
        cases.push(text(
            &format!("cast_special_f32_to_{to}"),
            &format!("{special}\n%0 = cast %x : {to}[12]\noutput y = %0"),
            Tol::Exact,
        ));
    }
    check_table(cases);
}

#[test]
fn reductions() {
    let mut cases = Vec::new();
    for &op in ReduceOp::ALL {
        for dtype in NUMERIC {
            if op == ReduceOp::Mean && !dtype.is_float() {
                continue;
            }
            // The last axis (vector lanes and a tail), a middle one (strided, symbolic, empty
            // when seq = 0), and two apart.
            for axes in [&[2][..], &[1], &[0, 2]] {
                let name = format!("{}_{dtype}_axes{axes:?}", op.name());
                let g = graph(&name, &[("x", dtype, &[n(3), seq(), n(7)])], |g, xs| {
                    let x = spread(g, xs[0])?;
                    g.reduce(op, x, axes)
                });
                let tol = if op == ReduceOp::Max {
                    Tol::Exact
                } else {
                    SUMS
                };
                cases.push(Case::new(g, tol));
            }
        }
    }
    cases.push(text(
        "reduce_of_an_iota_and_a_splat",
        "input %x : f32[seq, 1]\n%0 = iota axis=1 : f32[seq, 6]\n\
         %1 = reduce_sum %0 axes=[1] : f32[seq, 1]\n%2 = add %1, %x : f32[seq, 1]\n\
         %3 = const -2 : i32[seq, 3]\n%4 = reduce_max %3 axes=[0] : i32[1, 3]\n\
         output y = %2\noutput z = %4",
        SUMS,
    ));
    check_table(cases);
}

#[test]
fn matmuls() {
    let cases = vec![
        // Dot form: x·Wᵀ through a permuted weight; k = 39 runs every part of the dot loop
        // (32 + 4 + 3), and n = 130 makes two column tiles of a GEMM call.
        text(
            "matmul_dot_linear",
            "input %x : f32[seq, 39]\nweight @w : f32[130, 39]\n\
             %0 = permute @w perm=[1,0] : f32[39, 130]\n\
             %1 = matmul %x, %0 : f32[seq, 130]\noutput y = %1",
            SUMS,
        ),
        // A constant single row per batch element (decode): 16-column tiles, batch dims
        // broadcast against a rank-2 weight.
        text(
            "matmul_dot_decode_batched",
            "input %x : f32[seq, 1, 19]\nweight @w : f32[20, 19]\n\
             %0 = permute @w perm=[1,0] : f32[19, 20]\n\
             %1 = matmul %x, %0 : f32[seq, 1, 20]\noutput y = %1",
            SUMS,
        ),
        // Axpy form: probs·v with a symbolic contraction (k = seq).
        text(
            "matmul_axpy_attention",
            "input %p : f32[2, seq, seq]\ninput %v : f32[2, seq, 9]\n\
             %0 = matmul %p, %v : f32[2, seq, 9]\noutput y = %0",
            SUMS,
        ),
        // A contraction of length 0 must still write zeros, GEMM (10 rows) included.
        text(
            "matmul_axpy_empty_contraction",
            "input %a : f32[10, seq]\ninput %b : f32[seq, 6]\n\
             %0 = matmul %a, %b : f32[10, 6]\noutput y = %0",
            SUMS,
        ),
        // Scalar form: both operands permuted, so neither is unit-stride where the fast
        // forms need it.
        text(
            "matmul_scalar_permuted",
            "input %x : f32[19, seq]\nweight @w : f32[6, 19]\n\
             %0 = permute %x perm=[1,0] : f32[seq, 19]\n\
             %1 = permute @w perm=[1,0] : f32[19, 6]\n\
             %2 = matmul %0, %1 : f32[seq, 6]\noutput y = %2",
            SUMS,
        ),
        // A constant operand is a view of no buffer.
        text(
            "matmul_by_a_splat",
            "input %x : f32[seq, 5]\n%0 = const 0.5 : f32[5, 3]\n\
             %1 = matmul %x, %0 : f32[seq, 3]\noutput y = %1",
            SUMS,
        ),
        // Batch dims broadcast on both sides: [2, 1] × [3] → [2, 3].
        text(
            "matmul_broadcast_batch",
            "input %a : f32[2, 1, seq, 5]\ninput %b : f32[3, 5, 4]\n\
             %0 = matmul %a, %b : f32[2, 3, seq, 4]\noutput y = %0",
            SUMS,
        ),
    ];
    check_table(cases.into_iter().map(|c| c.seqs(MATMUL_SEQS)).collect());
}

/// Matmuls reading a bf16 weight through a cast (the `bf16-weights` precision), in every form:
/// the weight widens as it is loaded (dot, axpy, scalar) or per GEMM panel (70 rows), with
/// every part of the dot loop (k = 39: 32 + 4 + 3) and of the axpy lanes (n = 21: 16 + 4 + 1);
/// the accumulation is f32 as for f32 weights, so the tolerance is `SUMS`. A gathered bf16 row
/// widens exactly, and so does a bf16 weight read by other kernels.
#[test]
fn bf16_weight_matmuls() {
    let linear = |name: &str, x: &str, out: &str| {
        text(
            name,
            &format!(
                "input %x : f32[{x}]\nweight @w : bf16[130, 39]\n\
                 %0 = cast @w : f32[130, 39]\n%1 = permute %0 perm=[1,0] : f32[39, 130]\n\
                 %2 = matmul %x, %1 : f32[{out}]\noutput y = %2"
            ),
            SUMS,
        )
    };
    let cases = vec![
        linear("bf16_dot_linear", "seq, 39", "seq, 130"),
        linear("bf16_dot_decode_batched", "seq, 1, 39", "seq, 1, 130"),
        text(
            "bf16_axpy_untransposed",
            "input %x : f32[seq, 5]\nweight @w : bf16[5, 21]\n\
             %0 = cast @w : f32[5, 21]\n%1 = matmul %x, %0 : f32[seq, 21]\noutput y = %1",
            SUMS,
        ),
        text(
            "bf16_scalar_permuted",
            "input %x : f32[19, seq]\nweight @w : bf16[6, 19]\n\
             %0 = permute %x perm=[1,0] : f32[seq, 19]\n%1 = cast @w : f32[6, 19]\n\
             %2 = permute %1 perm=[1,0] : f32[19, 6]\n%3 = matmul %0, %2 : f32[seq, 6]\n\
             output y = %3",
            SUMS,
        ),
        // The weight on the left, 9 rows: a GEMM call with `a` narrow, then loops for a tail.
        text(
            "bf16_weight_on_the_left",
            "input %x : f32[19, seq]\nweight @w : bf16[9, 19]\n\
             %0 = cast @w : f32[9, 19]\n%1 = matmul %0, %x : f32[9, seq]\noutput y = %1",
            SUMS,
        ),
        text(
            "bf16_gather_then_widen",
            "input %ids : i64[seq]\nweight @e : bf16[16, 19]\n\
             %0 = gather @e, %ids axis=0 : bf16[seq, 19]\n%1 = cast %0 : f32[seq, 19]\n\
             output y = %1",
            Tol::Exact,
        )
        .ints(16),
        text(
            "bf16_weight_read_by_other_kernels",
            "input %x : f32[seq, 19]\nweight @w : bf16[1, 19]\n\
             %0 = cast @w : f32[1, 19]\n%1 = broadcast %0 : f32[seq, 19]\n\
             %2 = add %x, %1 : f32[seq, 19]\n%3 = reduce_sum %0 axes=[1] : f32[1, 1]\n\
             output y = %2\noutput s = %3\noutput w = %0",
            SUMS,
        ),
    ];
    check_table(cases.into_iter().map(|c| c.seqs(MATMUL_SEQS)).collect());
}

/// The CPU backend computes in f32: narrow values other than weights, and matmuls of narrow
/// operands, are refused with an error naming them.
#[test]
fn narrow_values_and_matmuls_are_refused() {
    for (body, fragment) in [
        (
            "input %x : f32[4]\n%0 = cast %x : bf16[4]\noutput y = %0",
            "bf16 values are not supported",
        ),
        (
            "weight @w : f16[4]\n%0 = cast @w : f32[4]\noutput y = %0",
            "f16 values are not supported",
        ),
        (
            "input %x : f32[2, 4]\nweight @w : bf16[4, 3]\n%0 = cast %x : bf16[2, 4]\n\
             %1 = matmul %0, @w : f32[2, 3]\noutput y = %1",
            "bf16 values are not supported",
        ),
        (
            "weight @a : bf16[2, 4]\nweight @w : bf16[4, 3]\n%0 = matmul @a, @w : f32[2, 3]\n\
             output y = %0",
            "matmul is compiled for f32 only",
        ),
    ] {
        let g = kiln_ir::text::parse(&format!("graph g\n{body}")).unwrap();
        let err = compile(&[g]).unwrap_err().to_string();
        assert!(err.contains(fragment), "{err}");
    }
}

#[test]
fn layout_ops() {
    check_table(vec![
        text(
            "reshape_contiguous",
            "input %x : f32[seq, 6]\n%0 = neg %x : f32[seq, 6]\n\
             %1 = reshape %0 : f32[seq, 2, 3]\n%2 = abs %1 : f32[seq, 2, 3]\n\
             %3 = reshape %x : f32[seq, 3, 2]\noutput y = %2\noutput z = %3",
            Tol::Exact,
        ),
        text(
            "reshape_of_a_broadcast",
            "input %x : f32[seq, 1]\n%0 = broadcast %x : f32[seq, 6]\n\
             %1 = reshape %0 : f32[seq, 3, 2]\noutput y = %1",
            Tol::Exact,
        ),
        text(
            "reshape_of_a_permute",
            "input %x : i64[6, seq]\n%0 = permute %x perm=[1,0] : i64[seq, 6]\n\
             %1 = reshape %0 : i64[seq, 2, 3]\noutput y = %1",
            Tol::Exact,
        ),
        text(
            "permute_3d",
            "input %x : f32[2, seq, 3]\n%0 = permute %x perm=[2,0,1] : f32[3, 2, seq]\n\
             %1 = neg %0 : f32[3, 2, seq]\noutput y = %1\noutput z = %0",
            Tol::Exact,
        ),
        text(
            "broadcast_scalar_row_column",
            "input %s : f32[]\ninput %r : i64[5]\ninput %c : bool[seq, 1]\n\
             %0 = broadcast %s : f32[seq, 5]\n%1 = broadcast %r : i64[2, seq, 5]\n\
             %2 = broadcast %c : bool[seq, 5]\noutput a = %0\noutput b = %1\noutput c = %2",
            Tol::Exact,
        ),
        text(
            "slice_fixed_axis",
            "input %x : f32[seq, 8]\n%0 = slice %x axis=1 start=2 end=7 : f32[seq, 5]\n\
             %1 = exp %0 : f32[seq, 5]\noutput y = %1\noutput z = %0",
            ELEMENTWISE,
        ),
        text(
            "slice_symbolic_axis",
            "input %x : i32[seq, 3]\n%0 = slice %x axis=0 start=1 end=seq : i32[seq-1, 3]\n\
             output y = %0",
            Tol::Exact,
        )
        .seqs(NONZERO_SEQS),
        text(
            "concat_axis0",
            "input %x : f32[seq, 3]\ninput %y : f32[2, 3]\n\
             %0 = concat %x, %y axis=0 : f32[seq+2, 3]\noutput y = %0",
            Tol::Exact,
        ),
        text(
            "concat_last_axis",
            "input %x : f32[seq, 3]\ninput %y : f32[seq, 5]\n\
             %0 = concat %x, %y, %x axis=1 : f32[seq, 11]\noutput y = %0",
            Tol::Exact,
        ),
        text(
            "concat_kv_cache",
            "input %past : f32[2, seq, 4]\ninput %new : f32[2, 1, 4]\n\
             %0 = concat %past, %new axis=1 : f32[2, seq+1, 4]\noutput y = %0",
            Tol::Exact,
        ),
        text(
            "concat_ints_and_bools",
            "input %a : i64[seq, 2, 2]\ninput %b : bool[seq, 3]\n\
             %0 = concat %a, %a axis=2 : i64[seq, 2, 4]\n%1 = concat %b, %b axis=0 : bool[2*seq, 3]\n\
             output y = %0\noutput z = %1",
            Tol::Exact,
        ),
    ]);
}

#[test]
fn gathers() {
    check_table(vec![
        // Embedding lookups: whole unit-stride rows (vector lanes; 7 leaves a tail).
        text(
            "gather_embedding",
            "input %ids : i64[2, seq]\nweight @e : f32[16, 8]\n\
             %0 = gather @e, %ids axis=0 : f32[2, seq, 8]\noutput y = %0",
            Tol::Exact,
        )
        .ints(16),
        text(
            "gather_embedding_i32_ids",
            "input %ids : i32[seq]\nweight @e : f32[16, 7]\n\
             %0 = gather @e, %ids axis=0 : f32[seq, 7]\noutput y = %0",
            Tol::Exact,
        )
        .ints(16),
        text(
            "gather_rows_of_ints",
            "input %ids : i64[seq]\ninput %x : i64[6, 3]\n\
             %0 = gather %x, %ids axis=0 : i64[seq, 3]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
        text(
            "gather_rows_of_a_permute",
            "input %ids : i64[seq]\ninput %x : f32[5, 6]\n\
             %0 = permute %x perm=[1,0] : f32[6, 5]\n\
             %1 = gather %0, %ids axis=0 : f32[seq, 5]\noutput y = %1",
            Tol::Exact,
        )
        .ints(6),
        // Along the last axis: every element reads its own index.
        text(
            "gather_last_axis",
            "input %x : f32[seq, 6]\ninput %i : i64[4]\n\
             %0 = gather %x, %i axis=1 : f32[seq, 4]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
        text(
            "gather_last_axis_2d_indices",
            "input %x : f32[3, 6]\ninput %i : i64[seq, 2]\n\
             %0 = gather %x, %i axis=1 : f32[3, seq, 2]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
        text(
            "gather_middle_axis",
            "input %x : f32[2, 6, 5]\ninput %i : i32[seq]\n\
             %0 = gather %x, %i axis=1 : f32[2, seq, 5]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
        // Indices and data that are views of no buffer.
        text(
            "gather_constant_and_iota_indices",
            "input %x : f32[seq, 6]\n%0 = const 2 : i64[3]\n\
             %1 = gather %x, %0 axis=1 : f32[seq, 3]\n%2 = iota axis=0 : i64[4]\n\
             %3 = gather %x, %2 axis=1 : f32[seq, 4]\noutput y = %1\noutput z = %3",
            Tol::Exact,
        ),
        text(
            "gather_from_a_splat",
            "input %i : i64[seq]\n%0 = const 1.5 : f32[6, 4]\n\
             %1 = gather %0, %i axis=0 : f32[seq, 4]\noutput y = %1",
            Tol::Exact,
        )
        .ints(6),
        // A rank-0 index removes the axis.
        text(
            "gather_scalar_index_row",
            "input %i : i64[]\nweight @e : f32[16, 8]\n\
             %0 = gather @e, %i axis=0 : f32[8]\noutput y = %0",
            Tol::Exact,
        )
        .ints(16),
        text(
            "gather_scalar_index_last_axis",
            "input %x : f32[seq, 6]\ninput %i : i64[]\n\
             %0 = gather %x, %i axis=1 : f32[seq]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
        text(
            "gather_scalar_index_element",
            "input %x : f32[6]\ninput %i : i64[]\n\
             %0 = gather %x, %i axis=0 : f32[]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
    ]);
}

#[test]
fn scatters() {
    check_table(vec![
        // The embedding gradient: repeated ids accumulate (f32 sums in index order).
        text(
            "scatter_add_embedding_gradient",
            "input %ids : i64[2, seq]\ninput %g : f32[2, seq, 70]\n\
             %0 = const 0 : f32[16, 70]\n\
             %1 = scatter_add %0, %ids, %g axis=0 : f32[16, 70]\noutput y = %1",
            SUMS,
        )
        .ints(16),
        text(
            "scatter_add_into_data_i32_ids",
            "input %ids : i32[seq]\ninput %x : f32[5, 3, 6]\ninput %u : f32[5, seq, 6]\n\
             %0 = scatter_add %x, %ids, %u axis=1 : f32[5, 3, 6]\noutput y = %0",
            SUMS,
        )
        .ints(3),
        text(
            "scatter_add_ints_last_axis",
            "input %ids : i64[seq]\ninput %x : i64[4, 5]\ninput %u : i64[4, seq]\n\
             %0 = scatter_add %x, %ids, %u axis=1 : i64[4, 5]\noutput y = %0",
            Tol::Exact,
        )
        .ints(5),
        // Replacing: the last write of a repeated index wins, as in the interpreter.
        text(
            "scatter_replace_rows",
            "input %ids : i64[seq]\ninput %x : f32[6, 9]\ninput %u : f32[seq, 9]\n\
             %0 = scatter %x, %ids, %u axis=0 : f32[6, 9]\noutput y = %0",
            Tol::Exact,
        )
        .ints(6),
        // Updates that are a view (a transpose) are copied contiguous first.
        text(
            "scatter_add_of_a_permuted_update",
            "input %ids : i64[3]\ninput %x : f32[4, seq]\ninput %u : f32[seq, 3]\n\
             %0 = permute %u perm=[1,0] : f32[3, seq]\n\
             %1 = scatter_add %x, %ids, %0 axis=0 : f32[4, seq]\noutput y = %1",
            SUMS,
        )
        .ints(4),
        text(
            "scatter_scalar_index",
            "input %i : i64[]\ninput %x : f32[5, 4]\ninput %u : f32[4]\n\
             %0 = scatter_add %x, %i, %u axis=0 : f32[5, 4]\noutput y = %0",
            Tol::Exact,
        )
        .ints(5),
    ]);
}

#[test]
fn sources_and_outputs() {
    check_table(vec![
        text(
            "iota",
            "%0 = iota axis=0 : i64[seq, 4]\n%1 = iota axis=1 : i32[2, seq]\n\
             %2 = iota axis=0 : f32[seq, 3]\ninput %x : f32[seq, 3]\n\
             %3 = add %x, %2 : f32[seq, 3]\n%4 = iota axis=1 : i64[3, 4]\n\
             %5 = reshape %4 : i64[12]\noutput a = %0\noutput b = %1\noutput c = %3\n\
             output d = %5",
            Tol::Exact,
        ),
        text(
            "splat_constants",
            "input %x : f32[seq, 5]\n%0 = const 2.5 : f32[seq, 5]\n\
             %1 = const 1 : bool[seq, 2]\n%2 = const -3 : i64[seq]\n%3 = const 0.25 : f32[]\n\
             %4 = sub %x, %0 : f32[seq, 5]\noutput a = %0\noutput b = %1\noutput c = %2\n\
             output d = %3\noutput e = %4",
            Tol::Exact,
        ),
        text(
            "dense_constants",
            "input %x : i64[2, 3]\ninput %b : bool[4]\n\
             %0 = const [1.5,-2,0.25,3,-0,7] : f32[2, 3]\n\
             %1 = const [4,-5,6,7,8,-9] : i64[2, 3]\n%2 = add %x, %1 : i64[2, 3]\n\
             %3 = const [1,0,1,0] : bool[4]\n%4 = and %b, %3 : bool[4]\n\
             %5 = const [2,-3,2147483647,0] : i32[4]\noutput a = %0\noutput b = %2\n\
             output c = %4\noutput d = %5",
            Tol::Exact,
        ),
        // One value under two names, an input and a weight as outputs.
        text(
            "outputs_that_are_not_fresh_buffers",
            "input %x : f32[seq, 3]\nweight @w : f32[2, 2]\n%0 = neg %x : f32[seq, 3]\n\
             output a = %0\noutput b = %0\noutput c = %x\noutput d = @w",
            Tol::Exact,
        ),
    ]);
}

/// kiln's `exp` (and `sigmoid` through it) over the whole f32 range and past it: overflow to
/// infinity, subnormal results, 0 below them, and the infinities and NaN as inputs.
#[test]
fn exp_and_sigmoid_match_f64_from_minus_100_to_100() {
    let mut xs: Vec<f32> = (-10_000..=10_000).map(|i| i as f32 * 0.01).collect();
    // Around the edges of the normal range, of the subnormal one, and of overflow.
    xs.extend([
        -87.33, -87.34, -103.27, -103.28, -103.9, 88.37, 88.38, 88.72, 88.723,
    ]);
    xs.extend([f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
    let len = xs.len();
    // `[len]` runs 4 lanes at a time; `[len, 1]` one element per row, scalar code only.
    let g = kiln_ir::text::parse(&format!(
        "graph exp\ninput %x : f32[{len}]\n%0 = reshape %x : f32[{len}, 1]\n\
         %1 = exp %x : f32[{len}]\n%2 = exp %0 : f32[{len}, 1]\n%3 = reshape %2 : f32[{len}]\n\
         %4 = sigmoid %x : f32[{len}]\n%5 = sigmoid %0 : f32[{len}, 1]\n\
         %6 = reshape %5 : f32[{len}]\noutput exp_lanes = %1\noutput exp_scalar = %3\n\
         output sigmoid_lanes = %4\noutput sigmoid_scalar = %6"
    ))
    .unwrap();
    let model = load(compile(&[g]).unwrap(), &Default::default());
    let mut runner = model.runner("exp").unwrap();
    let x = kiln_ir::interp::Tensor::f32(&[len], xs.clone());
    let outputs = run(&mut runner, &[("x".to_string(), x)].into());
    // Sigmoid is `1/(1+e⁻ˣ)` with `e⁻ˣ` in f32: 0 once that overflows (x < -88.72), where the
    // exact result would be a subnormal.
    let reference = [
        ("exp", (|x: f64| x.exp()) as fn(f64) -> f64),
        ("sigmoid", |x: f64| 1.0 / (1.0 + ((-x).exp() as f32) as f64)),
    ];
    for (name, f) in reference {
        let want = xs.iter().map(|&x| f(x as f64) as f32).collect();
        let want = kiln_ir::interp::Tensor::f32(&[len], want);
        for path in ["lanes", "scalar"] {
            let output = format!("{name}_{path}");
            compare(&output, &outputs[&output], &want, ELEMENTWISE).unwrap();
        }
    }
}

/// What random graphs may hold on the CPU backend: everything but `f16`/`bf16` values.
const CPU_PROFILE: Profile = Profile {
    scatter: true,
    half_floats: false,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_graphs_match_the_interpreter(seed in any::<u64>()) {
        let g = random_graph(seed, CPU_PROFILE);
        let envs: Vec<Bindings> = [(2, 3), (1, 5), (3, 1), (4, 6)]
            .into_iter()
            .map(|(b, s)| [("batch".to_string(), b), ("seq".to_string(), s)].into())
            .collect();
        check(&g, &envs, 2, Tol::Norm(1e-4))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", kiln_ir::text::print(&g))))?;
    }

    /// The same graphs after elementwise fusion: every region is one map or reduce kernel, and
    /// the results still match the interpreter on the graph as generated.
    #[test]
    fn fused_random_graphs_match_the_interpreter(seed in any::<u64>()) {
        let g = random_graph(seed, CPU_PROFILE);
        let mut fused = g.clone();
        ElementwiseFusion::default().run(&mut fused).unwrap();
        let envs: Vec<Bindings> = [(2, 3), (1, 5), (4, 6)]
            .into_iter()
            .map(|(b, s)| [("batch".to_string(), b), ("seq".to_string(), s)].into())
            .collect();
        check_compiled(&g, &fused, &envs, 2, Tol::Norm(1e-4))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", kiln_ir::text::print(&fused))))?;
    }
}

/// Matmul epilogues on every path: SwiGLU and a residual add fused into the matmuls of a
/// linear layer (`x·Wᵀ`, the dot form at 1–4 rows, GEMM at 20 rows) and of an `axpy`-form
/// product, against the interpreter on the graph before fusion.
#[test]
fn matmul_epilogues_match_the_interpreter() {
    let g = kiln_ir::text::parse(
        "graph mlp
sym seq <= 32
input %x : f32[seq, 12]
input %v : f32[12, 16]
weight @gate : f32[16, 12]
weight @up : f32[16, 12]
weight @down : f32[12, 16]
%0 = permute @gate perm=[1,0] : f32[12, 16]
%1 = matmul %x, %0 : f32[seq, 16]
%2 = permute @up perm=[1,0] : f32[12, 16]
%3 = matmul %x, %2 : f32[seq, 16]
%4 = sigmoid %1 : f32[seq, 16]
%5 = mul %1, %4 : f32[seq, 16]
%6 = mul %5, %3 : f32[seq, 16]
%7 = permute @down perm=[1,0] : f32[16, 12]
%8 = matmul %6, %7 : f32[seq, 12]
%9 = add %x, %8 : f32[seq, 12]
%10 = matmul %x, %v : f32[seq, 16]
%11 = exp %10 : f32[seq, 16]
output y = %9
output z = %11",
    )
    .unwrap();
    let mut fused = g.clone();
    ElementwiseFusion::default().run(&mut fused).unwrap();
    let printed = kiln_ir::text::print(&fused);
    assert_eq!(printed.matches("= fused_matmul").count(), 3, "{printed}");
    let envs: Vec<Bindings> = [1, 4, 20, 3]
        .into_iter()
        .map(|n| [("seq".to_string(), n)].into())
        .collect();
    check_compiled(&g, &fused, &envs, 2, Tol::Norm(1e-5)).unwrap();
}

/// Rotate-half RoPE and a cache append after elementwise fusion: each half of the rotation is
/// one kernel writing its slice of the rotated value, inside its slice of the grown cache, and
/// nothing is copied: the cache is appended in place, in the input's buffer at its capacity
/// (`past+seq` at the maxima).
#[test]
fn concat_parts_are_written_in_place() {
    let g = kiln_ir::text::parse(
        "graph rope
sym seq <= 16
sym past <= 16
input %x : f32[2, seq, 8]
input %cos : f32[seq, 8]
input %sin : f32[seq, 8]
input %past : f32[2, past, 8]
%0 = broadcast %cos : f32[2, seq, 8]
%1 = broadcast %sin : f32[2, seq, 8]
%2 = mul %x, %0 : f32[2, seq, 8]
%3 = slice %x axis=2 start=4 end=8 : f32[2, seq, 4]
%4 = neg %3 : f32[2, seq, 4]
%5 = slice %x axis=2 start=0 end=4 : f32[2, seq, 4]
%6 = concat %4, %5 axis=2 : f32[2, seq, 8]
%7 = mul %6, %1 : f32[2, seq, 8]
%8 = add %2, %7 : f32[2, seq, 8]
%9 = concat %past, %8 axis=1 : f32[2, past+seq, 8]
output cache = %9",
    )
    .unwrap();
    let mut fused = g.clone();
    ElementwiseFusion::default().run(&mut fused).unwrap();
    let artifact = compile(std::slice::from_ref(&fused)).unwrap();
    let labels: Vec<&str> = artifact.manifest.programs[0]
        .steps
        .iter()
        .map(|s| s.label.as_str())
        .collect();
    assert_eq!(labels.len(), 2, "two halves and no copy: {labels:?}");
    let program = &artifact.manifest.programs[0];
    let past = program.inputs.iter().find(|i| i.name == "past").unwrap();
    let capacity = kiln_runtime::manifest::Capacity {
        axis: 1,
        entries: 32,
    };
    assert_eq!(past.capacity, Some(capacity));
    assert_eq!(program.outputs[0].buffer, past.buffer);
    let envs: Vec<Bindings> = [(3, 2), (1, 0), (5, 7)]
        .into_iter()
        .map(|(s, p)| [("seq".to_string(), s), ("past".to_string(), p)].into())
        .collect();
    check_compiled(&g, &fused, &envs, 2, Tol::Exact).unwrap();
}

/// A gradient by the queries after RoPE's backward, `[B, H, S, D]`, read by the projection's
/// matmul as `[B, S, H·D]`: the two halves are written in the permuted order, so the permute is
/// contiguous and the reshape a view — two kernels and the matmul, no copy. A permute that
/// moves the last axis, or a value something else reads too, keeps its own order.
#[test]
fn a_result_only_a_permute_reads_is_written_in_its_order() {
    let text = |extra: &str| {
        format!(
            "graph g
sym seq <= 8
input %g : f32[2, 3, seq, 8]
input %sin : f32[seq, 4]
weight @w : f32[24, 5]
%0 = broadcast %sin : f32[2, 3, seq, 4]
%1 = slice %g axis=3 start=0 end=4 : f32[2, 3, seq, 4]
%2 = slice %g axis=3 start=4 end=8 : f32[2, 3, seq, 4]
%3 = mul %1, %0 : f32[2, 3, seq, 4]
%4 = neg %2 : f32[2, 3, seq, 4]
%5 = concat %3, %4 axis=3 : f32[2, 3, seq, 8]
%6 = permute %5 perm=[0,2,1,3] : f32[2, seq, 3, 8]
%7 = reshape %6 : f32[2, seq, 24]
%8 = matmul %7, @w : f32[2, seq, 5]
output y = %8
{extra}"
        )
    };
    let steps = |g: &Graph| {
        let artifact = compile(std::slice::from_ref(g)).unwrap();
        artifact.manifest.programs[0].steps.len()
    };
    let envs: Vec<Bindings> = [1, 3, 8]
        .into_iter()
        .map(|n| [("seq".to_string(), n)].into())
        .collect();
    let alone = kiln_ir::text::parse(&text("")).unwrap();
    assert_eq!(steps(&alone), 3, "two halves and the matmul");
    check_compiled(&alone, &alone, &envs, 2, Tol::Norm(1e-6)).unwrap();
    let shared = kiln_ir::text::parse(&text("output rotated = %5\n")).unwrap();
    assert_eq!(
        steps(&shared),
        4,
        "an output keeps its order: the reshape copies"
    );
    check_compiled(&shared, &shared, &envs, 2, Tol::Norm(1e-6)).unwrap();
}

/// An axis of length 0 has no element to gather: the kernel reads nothing and writes zeros (the
/// interpreter refuses such indices).
#[test]
fn gather_from_an_empty_axis_writes_zeros() {
    let g = kiln_ir::text::parse(
        "graph g\nsym seq <= 8\ninput %x : f32[seq, 3]\ninput %i : i64[2]\n\
         %0 = gather %x, %i axis=0 : f32[2, 3]\noutput y = %0",
    )
    .unwrap();
    let model = load(compile(&[g]).unwrap(), &Default::default());
    let mut runner = model.runner("g").unwrap();
    let inputs = [
        (
            "x".to_string(),
            kiln_ir::interp::Tensor::f32(&[0, 3], Vec::new()),
        ),
        (
            "i".to_string(),
            kiln_ir::interp::Tensor::i64(&[2], vec![0, 1]),
        ),
    ];
    let y = &run(&mut runner, &inputs.into())["y"];
    assert_eq!(y.data, Data::Float(vec![0.0; 6]));
}

/// A weight's gradient as differentiation writes it — per-batch products `Xᵀ·dY` summed over
/// the batch — is one matmul contracting over batch and sequence together (no reduction
/// kernel, no `[batch, m, n]` buffer), and computes the interpreter's sum. Where an operand is
/// broadcast over the batch (the same matrix in every product) the sum is not a longer
/// contraction, and the product and its reduction stay.
#[test]
fn weight_gradients_sum_over_the_batch_in_the_matmul() {
    let folded = "graph wgrad
sym seq <= 24
input %x : f32[3, seq, 8]
input %dy : f32[3, seq, 5]
%0 = permute %x perm=[0,2,1] : f32[3, 8, seq]
%1 = matmul %0, %dy : f32[3, 8, 5]
%2 = reduce_sum %1 axes=[0] : f32[1, 8, 5]
output dw = %2";
    let broadcast = "graph shared
sym seq <= 24
input %x : f32[3, 8, seq]
input %w : f32[seq, 5]
%0 = broadcast %w : f32[3, seq, 5]
%1 = matmul %x, %0 : f32[3, 8, 5]
%2 = reduce_sum %1 axes=[0] : f32[1, 8, 5]
output s = %2";
    let envs: Vec<Bindings> = [1, 7, 24].map(|n| [("seq".to_string(), n)].into()).to_vec();
    for (text, reductions, summed) in [(folded, 0, true), (broadcast, 1, false)] {
        let g = kiln_ir::text::parse(text).unwrap();
        let artifact = compile(std::slice::from_ref(&g)).unwrap();
        let steps = &artifact.manifest.programs[0].steps;
        let reduce = steps
            .iter()
            .filter(|s| s.label.starts_with("reduce"))
            .count();
        assert_eq!(reduce, reductions, "{}: {steps:#?}", g.name);
        let fold = steps
            .iter()
            .any(|s| s.label.contains("summed over the batch"));
        assert_eq!(fold, summed, "{}: {steps:#?}", g.name);
        check_compiled(&g, &g, &envs, 2, Tol::Norm(1e-6)).unwrap();
    }
}
