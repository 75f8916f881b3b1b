//! The tiny Llama's programs as built and after each pass of the standard pipeline: a snapshot
//! of the canonical IR at every stage, and the interpreter's agreement between the graph as
//! built and after each pass on random inputs. The narrow precision policies are snapshotted
//! after the whole pipeline too, and agree with the graph as built within the tolerances that
//! `passes/tests/mixed_precision.rs` states (relative error 5e-2 for `bf16-weights` and `bf16`,
//! 6e-3 for `f16`).

use kiln_frontend::{build, hf, BuildOptions, Program};
use kiln_ir::{text, Bindings, Graph};
use kiln_passes::{check_equivalent, Pipeline, PipelineOptions, Precision};

const TINY_LLAMA: &str = include_str!("../src/embedded/tiny_llama.json");

fn tiny_llama(program: Program) -> Graph {
    let spec = hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap();
    build(&spec, program, BuildOptions::for_spec(&spec)).unwrap()
}

fn snapshot_every_stage(program: Program, env: &[(&str, usize)]) {
    let built = tiny_llama(program);
    insta::assert_snapshot!(format!("{program}__build"), text::print(&built));
    let env: Bindings = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    let mut g = built.clone();
    let mut stages = Vec::new();
    Pipeline::standard()
        .run(&mut g, |pass, after| stages.push((pass, after.clone())))
        .unwrap();
    for (pass, after) in stages {
        insta::assert_snapshot!(format!("{program}__{pass}"), text::print(&after));
        check_equivalent(&built, &after, &env, 3, 0..3, 1e-5)
            .unwrap_or_else(|e| panic!("after {pass}: {e}"));
    }
}

#[test]
fn prefill_at_every_stage() {
    snapshot_every_stage(Program::Prefill, &[("batch", 2), ("seq", 5)]);
}

#[test]
fn decode_at_every_stage() {
    snapshot_every_stage(Program::Decode, &[("batch", 2), ("past", 3)]);
}

/// The program after the whole pipeline under each narrow policy, checked against the graph as
/// built within the policy's tolerance.
fn snapshot_narrow_policies(program: Program, env: &[(&str, usize)]) {
    let built = tiny_llama(program);
    let env: Bindings = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    for (precision, tol) in [
        (Precision::Bf16Weights, 5e-2),
        (Precision::Bf16, 5e-2),
        (Precision::F16, 6e-3),
    ] {
        let mut g = built.clone();
        Pipeline::with_options(&PipelineOptions {
            precision,
            ..PipelineOptions::default()
        })
        .run(&mut g, |_, _| {})
        .unwrap();
        insta::assert_snapshot!(format!("{program}__{precision}"), text::print(&g));
        check_equivalent(&built, &g, &env, 3, 0..3, tol)
            .unwrap_or_else(|e| panic!("{precision}: {e}"));
    }
}

#[test]
fn prefill_under_narrow_policies() {
    snapshot_narrow_policies(Program::Prefill, &[("batch", 2), ("seq", 5)]);
}

#[test]
fn decode_under_narrow_policies() {
    snapshot_narrow_policies(Program::Decode, &[("batch", 2), ("past", 3)]);
}
