//! The canonical text form parses back: for generated graphs, `print(parse(print(g))) ==
//! print(g)`, the parsed graph verifies, and it computes the same outputs as the original.

use kiln_ir::interp::interpret;
use kiln_ir::interp::random::{random_bindings, Rng};
use kiln_ir::*;
use proptest::prelude::*;

/// Builds a random valid graph from `seed`: inputs of a few types, then ops drawn from every
/// group of the op set, each applied to earlier values of fitting types (an op whose operands do
/// not fit is skipped — the graph's own type checks decide).
fn generate(seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let mut g = Graph::new("generated");
    let b = g.symbol("batch", 4).unwrap();
    let s = g.symbol("seq", 6).unwrap();
    let f = |shape: Vec<Dim>| TensorType::new(DType::F32, shape);
    let mut values = vec![
        g.input("x", f(vec![b.clone(), s.clone(), Dim::fixed(4)]))
            .unwrap(),
        g.input("y", f(vec![b.clone(), s.clone(), Dim::fixed(4)]))
            .unwrap(),
        g.weight("w.0", f(vec![Dim::fixed(4), Dim::fixed(4)]))
            .unwrap(),
    ];
    let ids = g
        .input(
            "ids",
            TensorType::new(DType::I64, vec![b.clone(), s.clone()]),
        )
        .unwrap();
    let steps = 6 + pick(20);
    for step in 0..steps {
        let x = values[pick(values.len())];
        let y = values[pick(values.len())];
        let ty = g.ty(x).clone();
        let rank = ty.rank();
        let result = match pick(16) {
            0 => g.unary(UnaryOp::ALL[pick(UnaryOp::ALL.len() - 1)], x),
            1 => g.binary(BinaryOp::ALL[pick(7)], x, y),
            2 => {
                let c = g.binary(BinaryOp::ALL[9 + pick(6)], x, y);
                c.and_then(|c| g.select(c, x, y))
            }
            3 => g
                .cast(x, [DType::F16, DType::BF16, DType::I32][pick(3)])
                .and_then(|c| g.cast(c, DType::F32)),
            4 => g.reduce(ReduceOp::ALL[pick(3)], x, &[pick(rank)]),
            5 => g.matmul(x, values[2]),
            6 if ty.shape.last() == Some(&Dim::fixed(4)) => {
                let mut shape = ty.shape[..rank - 1].to_vec();
                shape.extend([Dim::fixed(2), Dim::fixed(2)]);
                g.reshape(x, shape)
            }
            7 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(pick(rank), pick(rank));
                g.permute(x, &perm)
            }
            8 => {
                let mut shape = vec![Dim::fixed(2)];
                shape.extend(ty.shape.iter().cloned());
                g.broadcast_to(x, &shape)
            }
            9 => {
                let axis = pick(rank);
                let end = ty.shape[axis].clone();
                g.slice(x, axis, Dim::fixed(0), end)
            }
            10 => g.concat(&[x, x], pick(rank)),
            11 => {
                // Indices clamped into axis 0 (a symbolic axis is at least 1 long here).
                let last = ty.shape[0].as_fixed().unwrap_or(1).max(1) - 1;
                g.binary_scalar(BinaryOp::Min, ids, last as f64)
                    .and_then(|i| g.gather(x, i, 0))
            }
            12 => g
                .scalar(DType::F32, [0.5, -2.0, f64::INFINITY, 1e-5][pick(4)])
                .and_then(|c| g.mul(x, c)),
            13 => g
                .constant(
                    TensorType::fixed(DType::F32, &[4]),
                    Literal::Dense(vec![0.25, -1.5, 3.0, 1e-3]),
                )
                .and_then(|c| g.add(x, c)),
            14 => g
                .iota(
                    TensorType::new(DType::F32, vec![Dim::fixed(1), s.clone(), Dim::fixed(1)]),
                    1,
                )
                .and_then(|i| g.add(x, i)),
            _ => {
                let zeros = g
                    .scalar(DType::F32, 0.0)
                    .and_then(|z| g.broadcast_to(z, &[Dim::fixed(5), Dim::fixed(4)]));
                let idx = g.iota(TensorType::fixed(DType::I64, &[2, 3]), 1);
                match (zeros, idx) {
                    (Ok(z), Ok(i)) => g.gather(values[2], i, 0).and_then(|u| {
                        g.push(
                            Op::Scatter {
                                axis: 0,
                                mode: ScatterMode::ALL[pick(2)],
                            },
                            &[z, i, u],
                        )
                    }),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
        };
        if let Ok(id) = result {
            if pick(3) == 0 {
                g.set_label(id, format!("step.{step}"));
            }
            values.push(id);
        }
    }
    let n = values.len();
    for (i, &v) in values[n.saturating_sub(3)..].iter().enumerate() {
        let _ = g.output(&format!("out{i}"), v);
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn print_parse_print_is_identity(seed in any::<u64>()) {
        let g = generate(seed);
        verify(&g).unwrap();
        let text = text::print(&g);
        let parsed = text::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        verify(&parsed).unwrap();
        prop_assert_eq!(&text::print(&parsed), &text);
        let env: Bindings = [("batch".to_string(), 2), ("seq".to_string(), 3)].into();
        let (inputs, weights) = random_bindings(&g, &env, 2, seed).unwrap();
        let a = interpret(&g, &inputs, &weights).unwrap();
        let b = interpret(&parsed, &inputs, &weights).unwrap();
        prop_assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            let (x, y) = (t.to_f64(), b[name].to_f64());
            prop_assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())), "output {} differs", name);
        }
    }
}

#[test]
fn parse_errors_name_the_line() {
    let text = "graph g\nsym n <= 4\ninput %x : f32[n]\n%0 = exp %x : f32[n, 2]\n";
    let err = text::parse(text).unwrap_err().to_string();
    assert!(err.starts_with("line 4:"), "{err}");
    assert!(
        err.contains("exp produces f32[n], declared f32[n, 2]"),
        "{err}"
    );
    let err = text::parse("graph g\n%0 = exp %nope : f32[]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2: `%nope` is not defined above"),
        "{err}"
    );
    let err = text::parse("graph g\ninput %x : f33[2]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown dtype `f33`"), "{err}");
}

#[test]
fn dot_export_names_values_like_the_text_form() {
    let g = text::parse("graph g\ninput %x : f32[2]\n%0 = exp %x : f32[2]  // e\noutput y = %0\n")
        .unwrap();
    let dot = dot::to_dot(&g);
    assert!(dot.starts_with("digraph \"g\" {"), "{dot}");
    assert!(dot.contains("%0 = exp\\nf32[2]\\ne"), "{dot}");
    assert!(dot.contains("\"out_y\""), "{dot}");
}

/// Guards the property test against a generator that silently stops producing ops.
#[test]
fn generator_covers_the_op_set() {
    let mut names = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let g = generate(seed);
        for id in g.order() {
            names.insert(g.node(id).op.name());
        }
    }
    let wanted = [
        "const",
        "iota",
        "exp",
        "add",
        "select",
        "cast",
        "reduce_sum",
        "matmul",
        "reshape",
        "permute",
        "broadcast",
        "slice",
        "concat",
        "gather",
        "scatter",
        "scatter_add",
        "lt",
    ];
    for op in wanted {
        assert!(
            names.contains(op),
            "the generator never produced `{op}`; it produced {names:?}"
        );
    }
}
