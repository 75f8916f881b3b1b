//! CPU artifacts as objects and files: the matmul's FMA is an instruction and the object imports
//! nothing; what the backend refuses it names; damaged artifacts and bad runner inputs give
//! errors that say what is wrong, never a panic.

mod common;

use common::cpu::{compile, load, VOCAB};
use kiln_ir::interp;
use kiln_ir::text::parse;
use kiln_runtime::manifest::{ElemType, FORMAT_VERSION};
use kiln_runtime::{Artifact, Model, Runner, Tensor};
use object::{Object, ObjectSymbol};
use std::process::Command;

#[test]
fn matmul_fma_is_an_instruction_and_the_object_imports_nothing() {
    let g = parse(
        "graph linear\nsym seq <= 16\ninput %x : f32[seq, 8]\nweight @w : f32[4, 8]\n\
         %0 = permute @w perm=[1,0] : f32[8, 4]\n%1 = matmul %x, %0 : f32[seq, 4]\n\
         output y = %1",
    )
    .unwrap();
    let artifact = compile(&[g]).unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linear.o");
    std::fs::write(&path, &artifact.object).unwrap();
    let out = Command::new("objdump")
        .arg("-dr")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run objdump ({e}): this test requires binutils"));
    assert!(out.status.success(), "objdump failed: {out:?}");
    let asm = String::from_utf8_lossy(&out.stdout);
    assert!(asm.contains("vfmadd"), "no vfmadd instruction:\n{asm}");
    let fma_calls: Vec<&str> = asm
        .lines()
        .filter(|l| l.contains("fma") && !l.contains("vfmadd"))
        .collect();
    assert!(fma_calls.is_empty(), "calls to fma: {fma_calls:?}");

    let obj = object::File::parse(&*artifact.object).unwrap();
    let undefined: Vec<String> = obj
        .symbols()
        .filter(|s| s.is_undefined())
        .map(|s| s.name().unwrap_or("?").to_string())
        .collect();
    assert!(undefined.is_empty(), "undefined symbols: {undefined:?}");
}

#[test]
fn what_the_backend_cannot_compile_is_refused_by_name() {
    let cases = [
        (
            "input %l : f32[]\ninput %x : f32[3]\n%0 = grad %l, %x : f32[3]  // d.x\noutput y = %0",
            "cannot compile `grad` (d.x) : f32[3]: `grad` reached the backend: run the autodiff pass",
        ),
        (
            "input %a : i64[2, 3]\ninput %b : i64[3, 2]\n%0 = matmul %a, %b : i64[2, 2]\n\
             output y = %0",
            "cannot compile `matmul` : i64[2, 2]: matmul is compiled for f32 only",
        ),
        (
            "input %x : f32[4]\n%0 = cast %x : f16[4]\n%1 = cast %0 : f32[4]\noutput y = %1",
            "cannot compile `cast` : f16[4]: f16 values are not supported",
        ),
        (
            "input %x : bf16[4]\n%0 = exp %x : bf16[4]\noutput y = %0",
            "cannot compile `input` : bf16[4]: bf16 values are not supported",
        ),
    ];
    for (body, expected) in cases {
        let g = parse(&format!("graph train\n{body}")).unwrap();
        let err = compile(&[g]).unwrap_err().to_string();
        assert!(
            err.starts_with("program `train`: ") && err.contains(expected),
            "{err}"
        );
    }
}

fn artifact() -> Artifact {
    let g = parse(&format!(
        "graph prefill\nsym batch <= 2\nsym seq <= 8\ninput %input_ids : i64[batch, seq]\n\
         input %scale : f32[seq, 4]\nweight @embed : f32[{VOCAB}, 4]\n\
         %0 = gather @embed, %input_ids axis=0 : f32[batch, seq, 4]\n\
         %1 = broadcast %scale : f32[batch, seq, 4]\n%2 = mul %0, %1 : f32[batch, seq, 4]\n\
         output y = %2"
    ))
    .unwrap();
    compile(&[g]).unwrap()
}

#[test]
fn damaged_artifacts_are_refused_with_the_reason() {
    let bytes = artifact().to_bytes();
    let mut other_version = bytes.clone();
    other_version[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let mut modified = bytes.clone();
    let middle = bytes.len() / 2;
    modified[middle] ^= 0x20;
    let cases: [(&[u8], String); 6] = [
        (
            &other_version,
            format!(
                "artifact format version {}, but this runtime reads version {FORMAT_VERSION}",
                FORMAT_VERSION + 1
            ),
        ),
        (
            &modified,
            "content hash does not match: the artifact is corrupt or was modified".into(),
        ),
        (
            &bytes[..bytes.len() - 1],
            format!(
                "the artifact is truncated ({} bytes, its sections need at least {})",
                bytes.len() - 1,
                bytes.len()
            ),
        ),
        (&bytes[..middle], "the artifact is truncated".into()),
        (
            &bytes[..20],
            "truncated: 20 bytes, shorter than the 48-byte header".into(),
        ),
        (b"PK\x03\x04", "not a kiln artifact".into()),
    ];
    for (bytes, expected) in cases {
        let err = Artifact::from_bytes(bytes, "model.kiln")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("model.kiln: ") && err.contains(&expected),
            "{err}\nexpected: {expected}"
        );
    }
}

fn ids(shape: &[usize], values: &[i64]) -> Tensor {
    Tensor::i64(shape, values)
}

fn scale(seq: usize) -> Tensor {
    Tensor::f32(&[seq, 4], &vec![1.0; seq * 4])
}

/// The error of a fresh runner after `setup` (setting inputs, then running).
fn runner_error(
    model: &Model,
    setup: impl FnOnce(&mut Runner) -> kiln_runtime::Result<()>,
) -> String {
    let mut runner = model.runner("prefill").unwrap();
    setup(&mut runner).unwrap_err().to_string()
}

#[test]
fn bad_runner_inputs_are_errors_that_name_the_input() {
    let artifact = artifact();
    let embed = interp::Tensor::f32(&[VOCAB, 4], vec![0.5; VOCAB * 4]);
    let model = load(artifact.clone(), &[("embed".to_string(), embed)].into());
    let cases: Vec<(String, &str)> = vec![
        (
            runner_error(&model, |r| {
                r.set_input("input_ids", Tensor::f32(&[1, 2], &[0.0, 1.0]))
            }),
            "program `prefill`: `input_ids`: expected i64 of rank 2, got f32[1, 2]",
        ),
        (
            runner_error(&model, |r| r.set_input("input_ids", ids(&[2], &[0, 1]))),
            "`input_ids`: expected i64 of rank 2, got i64[2]",
        ),
        (
            runner_error(&model, |r| {
                r.set_input("attention_mask", ids(&[1, 1], &[1]))
            }),
            "`attention_mask`: no such input (inputs: input_ids, scale)",
        ),
        (
            runner_error(&model, |r| r.set_input("input_ids", ids(&[1, 2], &[3, 16]))),
            "`input_ids`: token id 16 is outside the vocabulary (0..16)",
        ),
        (
            runner_error(&model, |r| r.set_input("input_ids", ids(&[1, 2], &[-1, 3]))),
            "`input_ids`: token id -1 is outside the vocabulary (0..16)",
        ),
        (
            runner_error(&model, |r| {
                r.set_input("input_ids", ids(&[1, 9], &[0; 9]))?;
                r.set_input("scale", scale(9))?;
                r.run()
            }),
            "`seq`: is 9, but the program was compiled for at most 8",
        ),
        (
            runner_error(&model, |r| {
                r.set_input("input_ids", ids(&[1, 3], &[0; 3]))?;
                r.set_input("scale", scale(4))?;
                r.run()
            }),
            "`seq` is 3 elsewhere but 4 here",
        ),
        (
            runner_error(&model, |r| {
                r.set_input("input_ids", ids(&[1, 2], &[0; 2]))?;
                r.set_input("scale", Tensor::f32(&[2, 3], &[1.0; 6]))?;
                r.run()
            }),
            "`scale`: shape [2, 3] does not match [2, 4]",
        ),
        (
            runner_error(&model, |r| {
                r.set_input("input_ids", ids(&[1, 2], &[0; 2]))?;
                r.run()
            }),
            "`scale`: input not set",
        ),
        (
            runner_error(&model, |r| r.output("logits").map(|_| ())),
            "`logits`: no such output",
        ),
        (
            runner_error(&model, |r| {
                r.swap_output("y", Tensor::zeros(ElemType::I64, &[0]))
                    .map(|_| ())
            }),
            "`y`: storage of i64 for an output of f32",
        ),
        (
            runner_error(&model, |r| r.take_input("scale").map(|_| ())),
            "`scale`: no such input is set",
        ),
        (
            model.runner("decode").map(|_| ()).unwrap_err().to_string(),
            "test.kiln: `programs`: no program `decode` (has prefill)",
        ),
        (
            Model::new(artifact.clone(), "test.kiln", Vec::new(), 1)
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "test.kiln: `weights`: 0 weights given, the artifact expects 1",
        ),
        (
            Model::new(
                artifact,
                "test.kiln",
                vec![Tensor::zeros(ElemType::F32, &[4, 4])],
                1,
            )
            .map(|_| ())
            .unwrap_err()
            .to_string(),
            "test.kiln: `embed`: expected f32[16, 4], got f32[4, 4]",
        ),
    ];
    for (err, expected) in cases {
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
    // None of this spoils a runner for good inputs.
    let mut runner = model.runner("prefill").unwrap();
    assert!(runner
        .set_input("input_ids", ids(&[1, 2], &[16, 0]))
        .is_err());
    runner
        .set_input("input_ids", ids(&[1, 2], &[15, 0]))
        .unwrap();
    runner.set_input("scale", scale(2)).unwrap();
    runner.run().unwrap();
    assert_eq!(runner.output("y").unwrap().shape, [1, 2, 4]);
}
