//! The canonical text form parses back: for generated graphs, `print(parse(print(g))) ==
//! print(g)`, the parsed graph verifies, and it computes the same outputs as the original.

use kiln_ir::interp::interpret;
use kiln_ir::interp::random::random_bindings;
use kiln_ir::testing::{random_graph, Profile};
use kiln_ir::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn print_parse_print_is_identity(seed in any::<u64>()) {
        let g = random_graph(seed, Profile::FULL);
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
        let g = random_graph(seed, Profile::FULL);
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
