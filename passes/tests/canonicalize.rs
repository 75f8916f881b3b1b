//! `canonicalize` on small IR texts: each case is input text → snapshot of the output, and the
//! interpreter agrees before and after on random inputs.

use kiln_ir::{text, Bindings};
use kiln_passes::canonicalize::Canonicalize;
use kiln_passes::{check_equivalent, Pass};

/// Parses `input`, canonicalizes it, checks equivalence with the symbols bound to `env`, and
/// returns the printed result.
fn check(input: &str, env: &[(&str, usize)]) -> String {
    let before = text::parse(input).unwrap();
    let mut after = before.clone();
    Canonicalize.run(&mut after).unwrap();
    kiln_ir::verify(&after).unwrap();
    let env: Bindings = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    check_equivalent(&before, &after, &env, 3, 0..4, 1e-6).unwrap();
    text::print(&after)
}

#[test]
fn folds_splat_constants_through_broadcasts() {
    insta::assert_snapshot!(check(
        "graph g
sym n <= 8
input %x : f32[n, 4]
%0 = const 2.0 : f32[]
%1 = const 3.0 : f32[]
%2 = mul %0, %1 : f32[]
%3 = broadcast %2 : f32[n, 4]
%4 = add %x, %3 : f32[n, 4]
output y = %4
",
        &[("n", 3)]
    ));
}

#[test]
fn folds_small_dense_constants() {
    insta::assert_snapshot!(check(
        "graph g
input %x : f32[4]
%0 = iota axis=0 : f32[4]
%1 = const [1.0,2.0,3.0,4.0] : f32[4]
%2 = mul %0, %1 : f32[4]
%3 = add %x, %2 : f32[4]
output y = %3
",
        &[]
    ));
}

#[test]
fn merges_duplicates_and_removes_dead_code() {
    insta::assert_snapshot!(check(
        "graph g
sym n <= 8
input %x : f32[n]
%0 = exp %x : f32[n]
%1 = exp %x : f32[n]
%2 = add %0, %1 : f32[n]
%3 = log %x : f32[n]
output y = %2
",
        &[("n", 5)]
    ));
}

#[test]
fn applies_algebraic_identities() {
    insta::assert_snapshot!(check(
        "graph g
sym n <= 8
input %x : f32[n, 2, 3]
%0 = const 0.0 : f32[n, 2, 3]
%1 = add %x, %0 : f32[n, 2, 3]
%2 = const 1.0 : f32[n, 2, 3]
%3 = mul %2, %1 : f32[n, 2, 3]
%4 = permute %3 perm=[0,2,1] : f32[n, 3, 2]
%5 = permute %4 perm=[0,2,1] : f32[n, 2, 3]
%6 = reshape %5 : f32[n, 6]
%7 = reshape %6 : f32[n, 3, 2]
%8 = neg %7 : f32[n, 3, 2]
%9 = neg %8 : f32[n, 3, 2]
%10 = cast %9 : f32[n, 3, 2]
%11 = reshape %10 : f32[1, n, 3, 2]
%12 = broadcast %11 : f32[2, n, 3, 2]
%13 = broadcast %12 : f32[4, 2, n, 3, 2]
output y = %13
",
        &[("n", 2)]
    ));
}

#[test]
fn keeps_what_it_cannot_prove() {
    // x - x is not folded to 0: it is NaN for infinite x.
    insta::assert_snapshot!(check(
        "graph g
input %x : f32[3]
%0 = sub %x, %x : f32[3]
output y = %0
",
        &[]
    ));
}
