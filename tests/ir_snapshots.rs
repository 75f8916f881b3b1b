//! The tiny Llama's programs as built and after each pass of the standard pipeline: a snapshot
//! of the canonical IR at every stage, and the interpreter's agreement between the graph as
//! built and after each pass on random inputs.

use kiln_frontend::{build, hf, BuildOptions, Program};
use kiln_ir::{text, Bindings};
use kiln_passes::{check_equivalent, Pipeline};

const TINY_LLAMA: &str = include_str!("../src/embedded/tiny_llama.json");

fn snapshot_every_stage(program: Program, env: &[(&str, usize)]) {
    let spec = hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap();
    let built = build(&spec, program, BuildOptions::for_spec(&spec)).unwrap();
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
