//! `gqa-share` on small IR texts: the KV-head repeat disappears under the matmuls that contract
//! it, stays (with a remark) under any other use, and the interpreter agrees before and after.

use kiln_ir::{text, Bindings};
use kiln_passes::gqa_share::GqaShare;
use kiln_passes::{check_equivalent, Pass};

fn check(input: &str, env: &[(&str, usize)]) -> String {
    let before = text::parse(input).unwrap();
    let mut after = before.clone();
    GqaShare.run(&mut after).unwrap();
    kiln_ir::verify(&after).unwrap();
    let env: Bindings = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    check_equivalent(&before, &after, &env, 3, 0..4, 1e-5).unwrap();
    text::print(&after)
}

/// Attention of 4 query heads over 2 shared KV heads, with `USE` standing for what else reads
/// the repeated values.
const ATTENTION: &str = "graph g
sym s <= 8
sym p <= 8
input %q : f32[1, 4, s, 8]
input %k : f32[1, 2, p, 8]
input %v : f32[1, 2, p, 8]
%0 = reshape %k : f32[1, 2, 1, p, 8]
%1 = broadcast %0 : f32[1, 2, 2, p, 8]
%2 = reshape %1 : f32[1, 4, p, 8]
%3 = permute %2 perm=[0,1,3,2] : f32[1, 4, 8, p]
%4 = matmul %q, %3 : f32[1, 4, s, p]
%5 = reshape %v : f32[1, 2, 1, p, 8]
%6 = broadcast %5 : f32[1, 2, 2, p, 8]
%7 = reshape %6 : f32[1, 4, p, 8]
%8 = matmul %4, %7 : f32[1, 4, s, 8]
output y = %8
";

#[test]
fn keys_and_values_are_read_in_place() {
    let out = check(ATTENTION, &[("s", 3), ("p", 5)]);
    assert!(!out.contains("broadcast"), "the repeat is gone:\n{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn a_repeat_with_another_use_is_left_with_a_remark() {
    let input = ATTENTION.replace(
        "output y = %8",
        "%9 = exp %7 : f32[1, 4, p, 8]\noutput y = %8\noutput z = %9",
    );
    let out = check(&input, &[("s", 2), ("p", 4)]);
    assert!(out.contains("1 refused"), "{out}");
    assert_eq!(
        out.matches("broadcast").count(),
        1,
        "the value repeat stays:\n{out}"
    );
}
