//! The `kiln` binary: `kiln ir` on every kind of model path, and bad input answered with an error
//! that names the file, the field and what was expected — a non-zero exit, never a panic.

mod common;

use common::fixture_dir;
use std::path::{Path, PathBuf};

fn kiln(args: &[&str]) -> (bool, String, String) {
    common::kiln_cli(args)
}

fn scratch(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The fixture config with `edit` applied, written to a scratch file.
fn edited_config(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let text = std::fs::read_to_string(fixture_dir("llama").join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(config.as_object_mut().unwrap());
    scratch(name, config.to_string().as_bytes())
}

/// Runs `kiln ir PATH` and checks it fails with every fragment in its message.
fn rejects(path: &Path, fragments: &[&str]) {
    let (ok, _, stderr) = kiln(&["ir", path.to_str().unwrap()]);
    assert!(!ok, "accepted {}", path.display());
    assert!(
        stderr.contains(&path.display().to_string()),
        "error does not name the file: {stderr}"
    );
    for f in fragments {
        assert!(stderr.contains(f), "error lacks `{f}`: {stderr}");
    }
}

#[test]
fn malformed_json_is_rejected() {
    rejects(
        &scratch("broken.json", b"{\"model_type\": \"llama\","),
        &["not valid JSON", "line 1"],
    );
}

#[test]
fn missing_field_is_rejected() {
    let path = edited_config("missing.json", |c| {
        c.remove("hidden_size");
    });
    rejects(
        &path,
        &[
            "field `hidden_size`",
            "missing (expected a positive integer)",
        ],
    );
}

#[test]
fn wrongly_typed_field_is_rejected() {
    let path = edited_config("typed.json", |c| {
        c.insert("num_hidden_layers".into(), "two".into());
    });
    rejects(
        &path,
        &[
            "field `num_hidden_layers`",
            "expected a non-negative integer, found the string \"two\"",
        ],
    );
    let path = edited_config("typed_rope.json", |c| {
        c["rope_parameters"]["rope_theta"] = "big".into();
    });
    rejects(
        &path,
        &["field `rope_parameters.rope_theta`", "expected a number"],
    );
}

#[test]
fn hidden_size_not_divisible_by_heads_is_rejected() {
    let path = edited_config("indivisible.json", |c| {
        c.insert("hidden_size".into(), 66.into());
        c.remove("head_dim");
    });
    rejects(
        &path,
        &[
            "field `hidden_size`",
            "66 is not divisible by num_attention_heads = 4",
        ],
    );
}

#[test]
fn kv_heads_not_dividing_heads_is_rejected() {
    let path = edited_config("kv.json", |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    rejects(
        &path,
        &[
            "field `num_key_value_heads`",
            "3 key/value heads do not divide num_attention_heads = 4",
        ],
    );
}

#[test]
fn unknown_model_type_is_rejected() {
    let path = edited_config("unknown.json", |c| {
        c.insert("model_type".into(), "gpt9".into());
    });
    rejects(
        &path,
        &[
            "field `model_type`",
            "unknown model type `gpt9` (expected one of llama, mistral, qwen2)",
        ],
    );
}

#[test]
fn truncated_gguf_is_rejected() {
    let bytes = std::fs::read(fixture_dir("llama").join("../../gguf/llama.gguf")).unwrap();
    rejects(
        &scratch("truncated.gguf", &bytes[..1000]),
        &["truncated at byte"],
    );
    rejects(
        &scratch("header_only.gguf", &bytes[..200]),
        &["only 184 bytes remain in the file"],
    );
}

#[test]
fn non_gguf_file_is_rejected() {
    rejects(
        &scratch("fake.gguf", b"PK\x03\x04 this is a zip file"),
        &["not a GGUF file"],
    );
}

#[test]
fn directory_without_config_is_rejected() {
    let dir = scratch("marker", b"").parent().unwrap().join("empty_model");
    std::fs::create_dir_all(&dir).unwrap();
    rejects(&dir, &["config.json", "cannot read"]);
}

#[test]
fn unknown_pass_is_rejected_with_the_pipeline() {
    let (ok, _, stderr) = kiln(&["ir", "--after", "fuse-everything"]);
    assert!(!ok);
    let passes = kiln_passes::Pipeline::standard().names().join(", ");
    assert!(
        stderr.contains(&format!(
            "unknown pass `fuse-everything` (expected build or one of: {passes})"
        )),
        "{stderr}"
    );
}

#[test]
fn gguf_and_config_json_give_identical_ir() {
    let (ok, from_hf, stderr) = kiln(&[
        "ir",
        fixture_dir("llama").to_str().unwrap(),
        "--program",
        "decode",
    ]);
    assert!(ok, "{stderr}");
    let gguf = fixture_dir("llama").join("../../gguf/llama.gguf");
    let (ok, from_gguf, stderr) = kiln(&["ir", gguf.to_str().unwrap(), "--program", "decode"]);
    assert!(ok, "{stderr}");
    assert_eq!(from_hf, from_gguf);
    assert!(from_hf.starts_with("graph decode\n"));
}

/// `kiln ir --target cuda` runs the CUDA pipeline: the training step's softmax exponentials
/// are computed again in each region that reads them, where the CPU's store them once, and
/// the `recompute` pass estimates memory with that fusion (a lower peak than the CPU's).
#[test]
fn ir_follows_the_targets_pipeline() {
    let ir = |target: &str| {
        let args = ["ir", "--program", "train_step", "--recompute", "layers"];
        let (ok, out, err) = kiln(&[&args[..], &["--target", target]].concat());
        assert!(ok, "{err}");
        let estimate = out
            .split("estimated peak ")
            .nth(1)
            .expect("the recompute remark");
        let mib: f64 = estimate.split(' ').next().unwrap().parse().unwrap();
        (out.matches("exp ").count(), mib)
    };
    let ((cpu, cpu_peak), (cuda, cuda_peak)) = (ir("cpu"), ir("cuda"));
    assert!(cuda > cpu && cpu > 0, "exp steps: cpu {cpu}, cuda {cuda}");
    assert!(
        cuda_peak < cpu_peak,
        "estimated peaks: cpu {cpu_peak}, cuda {cuda_peak}"
    );
}

#[test]
fn print_after_all_shows_every_stage_and_dot_renders() {
    let (ok, out, _) = kiln(&["ir", "--print-after-all"]);
    assert!(ok);
    assert!(
        out.contains("// ----- after build -----")
            && out.contains("// ----- after canonicalize -----")
    );
    let (ok, out, _) = kiln(&["ir", "--format", "dot", "--after", "build"]);
    assert!(ok);
    assert!(out.starts_with("digraph \"prefill\" {") && out.trim_end().ends_with('}'));
}

#[test]
fn precision_reaches_the_pass_the_artifact_and_the_summary() {
    let (ok, out, stderr) = kiln(&["ir", "--precision", "bf16", "--print-after-all"]);
    assert!(ok, "{stderr}");
    assert!(
        out.contains("// ----- after mixed-precision -----")
            && out.contains("remark mixed-precision: policy bf16: "),
        "{out}"
    );
    let (ok, _, stderr) = kiln(&["ir", "--precision", "f8"]);
    assert!(!ok && stderr.contains("unknown precision `f8`"), "{stderr}");
    let config = fixture_dir("llama").join("config.json");
    let compile = |name: &str, precision: &str| {
        let artifact = scratch(name, b"");
        let (ok, _, stderr) = kiln(&[
            "compile",
            config.to_str().unwrap(),
            "-o",
            artifact.to_str().unwrap(),
            "--max-seq",
            "64",
            "--precision",
            precision,
        ]);
        (ok, stderr, artifact)
    };
    let (ok, stderr, artifact) = compile("bf16w.kiln", "bf16-weights");
    assert!(ok && stderr.contains("precision bf16-weights"), "{stderr}");
    let manifest = kiln_runtime::Artifact::read(&artifact).unwrap().manifest;
    let dtype = |name: &str| {
        manifest
            .weights
            .iter()
            .find(|w| w.name == name)
            .unwrap()
            .dtype
    };
    use kiln_runtime::ElemType;
    assert_eq!(dtype("model.layers.0.mlp.up_proj.weight"), ElemType::Bf16);
    assert_eq!(dtype("model.embed_tokens.weight"), ElemType::Bf16);
    assert_eq!(dtype("model.norm.weight"), ElemType::F32);
    let (ok, stderr, _) = compile("bf16.kiln", "bf16");
    assert!(!ok, "the CPU backend compiled bf16 arithmetic");
    assert!(
        stderr.contains("precision `bf16` is not supported by the CPU backend"),
        "{stderr}"
    );
}

#[test]
fn cuda_target_writes_ptx_that_the_cpu_runtime_refuses_by_name() {
    let config = fixture_dir("llama").join("config.json");
    let artifact = scratch("cuda.kiln", b"");
    let compile = |precision: &str| {
        kiln(&[
            "compile",
            config.to_str().unwrap(),
            "--target",
            "cuda",
            "-o",
            artifact.to_str().unwrap(),
            "--max-seq",
            "64",
            "--precision",
            precision,
        ])
    };
    let (ok, _, stderr) = compile("bf16-weights");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("target sm_90") && stderr.contains("kernels by kind: gather 1"),
        "{stderr}"
    );
    let read = kiln_runtime::Artifact::read(&artifact).unwrap();
    assert_eq!(read.manifest.target.arch, "sm_90");
    let ptx = String::from_utf8(read.object).unwrap();
    for program in &read.manifest.programs {
        for step in &program.steps {
            let launch = step.launch.as_ref().expect("a CUDA step has a launch");
            assert!(launch.threads > 0 && !launch.blocks.is_empty());
            assert!(ptx.contains(&format!(".visible .entry {}(", step.kernel)));
        }
    }
    let weights = fixture_dir("llama").join("model.safetensors");
    let (ok, _, stderr) = kiln(&[
        "generate",
        artifact.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--max-tokens",
        "1",
    ]);
    assert!(!ok, "the CPU runtime ran a CUDA artifact");
    assert!(
        stderr.contains("compiled for CUDA GPUs (sm_90)") && stderr.contains("--target cpu"),
        "{stderr}"
    );
    // `kiln run --device cuda` takes it to the GPU: here, with no driver, a clear error.
    if !kiln_runtime::cuda::driver_present() {
        let inputs = scratch("cuda-inputs.safetensors", b"");
        let ids: Vec<u8> = (3..7i64).flat_map(|i| i.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, 4], &ids)
            .unwrap();
        let bytes = safetensors::serialize([("input_ids", view)], None).unwrap();
        std::fs::write(&inputs, bytes).unwrap();
        let outputs = scratch("cuda-outputs.safetensors", b"");
        let (ok, _, stderr) = kiln(&[
            "run",
            artifact.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--program",
            "forward",
            "--inputs",
            inputs.to_str().unwrap(),
            "--outputs",
            outputs.to_str().unwrap(),
            "--device",
            "cuda",
        ]);
        assert!(!ok && stderr.contains("no CUDA driver found"), "{stderr}");
    }
    let (ok, _, stderr) = compile("bf16");
    assert!(ok && stderr.contains("precision bf16"), "{stderr}");
    let (ok, _, stderr) = compile("f16");
    assert!(!ok, "the CUDA backend compiled f16 values");
    assert!(
        stderr.contains("precision `f16` is not supported by the CUDA backend"),
        "{stderr}"
    );
}

/// Training programs compile at the precisions their target trains in: f32 on the CPU, f32 and
/// bf16 (bf16 matmul operands, f32 master weights) on CUDA; others are refused by name.
#[test]
fn training_programs_compile_at_their_targets_precisions() {
    let config = fixture_dir("llama").join("config.json");
    let artifact = scratch("training.kiln", b"");
    let compile = |target: &str, precision: &str| {
        kiln(&[
            "compile",
            config.to_str().unwrap(),
            "--target",
            target,
            "--programs",
            "train_step,accumulate",
            "-o",
            artifact.to_str().unwrap(),
            "--max-seq",
            "16",
            "--precision",
            precision,
        ])
    };
    let (ok, _, stderr) = compile("cuda", "bf16");
    assert!(ok && stderr.contains("precision bf16"), "{stderr}");
    let manifest = kiln_runtime::Artifact::read(&artifact).unwrap().manifest;
    assert!(
        manifest
            .weights
            .iter()
            .all(|w| w.dtype == kiln_runtime::ElemType::F32),
        "the master weights stay f32"
    );
    for (target, precision, allowed) in [
        ("cpu", "bf16-weights", "`f32`"),
        ("cuda", "bf16-weights", "`f32` or `bf16`"),
    ] {
        let (ok, _, stderr) = compile(target, precision);
        let refusal = format!(
            "program `train_step` trains f32 master weights: compile it with precision {allowed}"
        );
        assert!(!ok && stderr.contains(&refusal), "{target}: {stderr}");
    }
}

/// Compiles the Llama fixture (batches of 2, 64 positions, then the flags `extra`) into a
/// scratch artifact and returns its path.
fn compiled_fixture(name: &str, extra: &[&str]) -> PathBuf {
    let artifact = scratch(name, b"");
    let config = fixture_dir("llama").join("config.json");
    let mut args = vec![
        "compile",
        config.to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
        "--max-batch",
        "2",
        "--max-seq",
        "64",
    ];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = kiln(&args);
    assert!(ok, "compile failed: {stderr}");
    artifact
}

#[test]
fn run_writes_outputs_that_match_transformers() {
    let artifact = compiled_fixture("run.kiln", &[]);
    let dir = fixture_dir("llama");
    let reference = common::read_safetensors(&dir.join("reference.safetensors"));
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let inputs: Vec<(String, safetensors::tensor::TensorView<'_>)> = ["input_ids", "position_ids"]
        .iter()
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    let in_path = scratch(
        "run-in.safetensors",
        &safetensors::serialize(inputs, None).unwrap(),
    );
    let weights = dir.join("model.safetensors");
    let run = |program: &str| {
        let out_path = scratch(&format!("run-{program}.safetensors"), b"");
        let (ok, _, stderr) = kiln(&[
            "run",
            artifact.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--program",
            program,
            "--inputs",
            in_path.to_str().unwrap(),
            "--outputs",
            out_path.to_str().unwrap(),
        ]);
        assert!(ok, "run {program} failed: {stderr}");
        common::read_safetensors(&out_path)
    };
    let all = &reference["logits"];
    let err = common::relative_error(&run("forward")["logits"], all);
    assert!(err <= 1e-4, "forward logits relative error {err:.2e}");
    let outputs = run("prefill");
    let err = common::relative_error(&outputs["logits"], &common::last_positions(all));
    assert!(err <= 1e-4, "prefill logits relative error {err:.2e}");
    for layer in 0..2 {
        assert_eq!(
            outputs[&format!("key_{layer}")].shape[2],
            12,
            "cache holds the prompt"
        );
    }
}

#[test]
fn generate_streams_and_reports_throughput() {
    let (ok, stdout, stderr) = kiln(&["generate", "--max-tokens", "8", "--prompt", "kiln"]);
    assert!(ok, "generate failed: {stderr}");
    assert!(
        stdout.starts_with("kiln"),
        "prompt echoed first: {stdout:?}"
    );
    assert!(stderr.contains("decode: 8 tokens"), "{stderr}");
}

/// Prompts of different lengths in one `generate` call share one left-padded batch and continue
/// as each does in a batch of its own length (printed the same way: several prompts are printed
/// whole, one is streamed).
#[test]
fn generate_batches_prompts_of_different_lengths() {
    let generate = |prompts: &[&str]| -> Vec<String> {
        let mut args = vec!["generate", "--max-tokens", "8"];
        for p in prompts {
            args.extend(["--prompt", p]);
        }
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "generate failed: {stderr}");
        stdout
            .split("\n---")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let prompts = ["kiln", "The kiln fires the clay slowly"];
    let together = generate(&prompts);
    for (prompt, text) in prompts.iter().zip(&together) {
        assert_eq!(&generate(&[prompt, prompt])[0], text, "prompt {prompt:?}");
    }
    assert_eq!(together.len(), 2);
}

#[test]
fn runtime_input_errors_name_the_file_and_tensor() {
    let artifact = compiled_fixture("bad-run.kiln", &[]);
    let weights = fixture_dir("llama").join("model.safetensors");
    let wrong_dtype = {
        let ids = [1.0f32; 4];
        let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4], &bytes)
                .unwrap();
        scratch(
            "bad-in.safetensors",
            &safetensors::serialize([("input_ids", view)], None).unwrap(),
        )
    };
    let out = scratch("bad-out.safetensors", b"");
    let run = |weights: &Path, inputs: &Path| {
        kiln(&[
            "run",
            artifact.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--outputs",
            out.to_str().unwrap(),
        ])
    };
    let (ok, _, stderr) = run(&weights, &wrong_dtype);
    assert!(
        !ok && stderr.contains("input_ids") && stderr.contains("expected i64"),
        "{stderr}"
    );
    let gguf = fixture_dir("../gguf").join("llama.gguf");
    let not_weights = scratch("not-weights.safetensors", b"not a safetensors file");
    let (ok, _, stderr) = run(&not_weights, &wrong_dtype);
    assert!(
        !ok && stderr.contains("not-weights.safetensors"),
        "{stderr}"
    );
    // The GGUF twin of the fixture holds the same weights: accepted up to the bad input.
    let (ok, _, stderr) = run(&gguf, &wrong_dtype);
    assert!(!ok && stderr.contains("input_ids"), "{stderr}");
}

/// `kiln bench` of `artifact` on a 4-token prompt and one thread, with `args` besides.
fn small_bench(artifact: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let path = artifact.to_str().unwrap();
    let mut all = vec!["bench", path, "--prompt-tokens", "4", "--threads", "1"];
    all.extend_from_slice(args);
    kiln(&all)
}

/// `kiln bench` on random weights (none given) reports its figures as JSON, also for an artifact
/// with bf16 weights (the random weights take each weight's type).
#[test]
fn bench_runs_on_random_weights_and_reports_json() {
    let artifact = compiled_fixture("bench.kiln", &["--precision", "bf16-weights"]);
    let (ok, out, stderr) = small_bench(
        &artifact,
        &[
            "--decode-tokens",
            "4",
            "--batch",
            "2",
            "--runs",
            "1",
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["batch"], 2);
    assert!(
        report["decode_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{out}"
    );
    assert!(report["first_run_s"].as_f64().is_some(), "{out}");
}

/// `kiln bench --profile` sums each step's time over the timed runs (not the warm-up) and says
/// so in each program's header, so a step's time per call is the sum over steps × runs; with
/// `--profile-steps` it also writes every step of both programs as a line of CSV.
#[test]
fn bench_profile_says_how_many_runs_it_sums() {
    let artifact = compiled_fixture("bench-profile.kiln", &[]);
    let csv = artifact.with_extension("steps.csv");
    let (ok, out, stderr) = small_bench(
        &artifact,
        &[
            "--decode-tokens",
            "2",
            "--runs",
            "2",
            "--profile",
            "--profile-steps",
            csv.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("program,step,kernel,label,seconds"));
    for program in ["prefill", "decode"] {
        let header = out
            .lines()
            .find(|l| l.starts_with(&format!("{program}: ")))
            .unwrap_or_else(|| panic!("no {program} profile in:\n{out}"));
        assert!(header.ends_with("steps, summed over 2 runs"), "{header}");
        let steps: usize = header
            .split(" in ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let rows = csv
            .lines()
            .filter(|l| l.starts_with(&format!("{program},")))
            .count();
        assert_eq!(rows, steps, "one CSV line per {program} step:\n{csv}");
    }
}
