//! The CUDA backend's PTX, checked without a GPU: every kernel of the test models' `prefill`,
//! `decode` and `forward` programs at each precision the backend compiles (`f32`,
//! `bf16-weights`, `bf16`), and of their `train_step` and `accumulate` at `f32` and `bf16`, is
//! assembled by `ptxas -arch=sm_90a`, which must report no error and no warning; the registers,
//! stack, spills and shared memory it reports are snapshotted, one line per distinct kernel
//! (program, kind, label with the layer number dropped, and figures), so a regression shows in
//! review.
//! Random graphs of every op the backends compile (before and after elementwise fusion) and
//! attention of every mask kind assemble too. The PTX of a few representative kernels of the
//! tiny Llama is snapshotted.
//!
//! `ptxas` is `$KILN_PTXAS` or the one on `PATH` (`.ci/run` installs it from PyPI). Without it
//! the assembly test fails when `CI` is set and is skipped, saying so, otherwise.

use kiln::compile::{compile, Target};
use kiln_frontend::{hf, load_spec, BuildOptions, ModelSpec, Program};
use kiln_ir::testing::{random_graph, Profile};
use kiln_ir::Graph;
use kiln_passes::elementwise_fusion::ElementwiseFusion;
use kiln_passes::{Pass, PipelineOptions, Precision};
use kiln_runtime::Artifact;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const TINY_LLAMA: &str = include_str!("../src/embedded/tiny_llama.json");
const PROGRAMS: [Program; 3] = [Program::Prefill, Program::Decode, Program::Forward];
const PRECISIONS: [Precision; 3] = [Precision::F32, Precision::Bf16Weights, Precision::Bf16];
const TRAINING_PRECISIONS: [Precision; 2] = [Precision::F32, Precision::Bf16];

/// Every test model: the embedded tiny Llama and each tiny Hugging Face fixture, by name.
fn models() -> Vec<(String, ModelSpec)> {
    let mut models = vec![(
        "tiny_llama".to_string(),
        hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap(),
    )];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        models.push((name, load_spec(&dir).unwrap()));
    }
    models
}

fn cuda_artifact(spec: &ModelSpec, programs: &[Program], precision: Precision) -> Artifact {
    let options = PipelineOptions {
        precision,
        ..PipelineOptions::default()
    };
    compile(
        Target::Cuda,
        spec,
        programs,
        BuildOptions::for_spec(spec),
        &options,
    )
    .unwrap()
}

/// `ptxas`, or `None` (the test is skipped, saying so) when it is absent outside CI.
fn ptxas_or_skip() -> Option<PathBuf> {
    let found = ptxas();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ptxas not found (set KILN_PTXAS or put it on PATH); CI must assemble the PTX"
        );
        println!("skipped: ptxas not found (set KILN_PTXAS or put ptxas on PATH)");
    }
    found
}

fn ptxas() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_PTXAS") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ptxas"))
        .find(|p| p.is_file())
}

/// What ptxas reports of one entry.
#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Resources {
    registers: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    shared: u32,
}

/// The number before `unit` in `line` (`"… 32 bytes smem"`, unit `bytes smem`).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let head = &line[..line.find(unit)?];
    head.split_whitespace().last()?.parse().ok()
}

/// Assembles `ptx` and returns each entry's resources, failing on any error or warning.
fn assemble(ptxas: &Path, ptx: &str, what: &str) -> Vec<(String, Resources)> {
    let dir = std::env::temp_dir().join(format!("kiln-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.ptx", what.replace([' ', '/'], "_")));
    std::fs::write(&file, ptx).unwrap();
    let output = Command::new(ptxas)
        .args(["-arch=sm_90a", "-v", "-o"])
        .arg(file.with_extension("cubin"))
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
    let log = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what}: ptxas failed ({}); the PTX is at {}:\n{log}",
        output.status,
        file.display()
    );
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("error") || l.contains("warning"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: ptxas reported:\n{}",
        bad.join("\n")
    );
    let mut entries: Vec<(String, Resources)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap().to_string();
            entries.push((name, Resources::default()));
        } else if let Some((_, r)) = entries.last_mut() {
            if line.contains("stack frame") {
                r.stack = number_before(line, "bytes stack frame").unwrap();
                r.spill_stores = number_before(line, "bytes spill stores").unwrap();
                r.spill_loads = number_before(line, "bytes spill loads").unwrap();
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = number_before(line, "registers").unwrap();
                r.shared = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    std::fs::remove_file(&file).ok();
    std::fs::remove_file(file.with_extension("cubin")).ok();
    entries
}

/// The kind of a kernel named `KIND_N`.
fn kind_of(kernel: &str) -> &str {
    kernel.rsplit_once('_').map_or(kernel, |(kind, _)| kind)
}

/// A step's label without the layer number (`… model.layers.3.mlp` → `… layers.N.mlp`).
fn label_pattern(label: &str) -> String {
    label
        .split(' ')
        .map(|word| {
            word.split('.')
                .map(|part| {
                    if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
                        "N"
                    } else {
                        part
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Assembles every kernel of `programs` of every test model at each of `precisions`; returns
/// the resource lines (see the module doc) and each model's entries with their figures.
fn assemble_models(
    ptxas: &Path,
    programs: &[Program],
    precisions: &[Precision],
) -> (BTreeSet<String>, Vec<(String, Resources)>) {
    let mut lines = BTreeSet::new();
    let mut all = Vec::new();
    for (name, spec) in models() {
        for &precision in precisions {
            let artifact = cuda_artifact(&spec, programs, precision);
            let ptx = String::from_utf8(artifact.object.clone()).unwrap();
            let entries = assemble(ptxas, &ptx, &format!("{name} {precision}"));
            let steps: Vec<_> = artifact
                .manifest
                .programs
                .iter()
                .flat_map(|p| p.steps.iter().map(move |s| (p, s)))
                .collect();
            assert_eq!(
                entries
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<BTreeSet<_>>(),
                steps.iter().map(|(_, s)| s.kernel.as_str()).collect(),
                "{name} {precision}: the entries are the steps' kernels"
            );
            for (program, step) in steps {
                let (_, r) = entries
                    .iter()
                    .find(|(n, _)| *n == step.kernel)
                    .unwrap_or_else(|| panic!("ptxas did not report {}", step.kernel));
                let kind = kind_of(&step.kernel);
                lines.insert(format!(
                    "{:<7} {:<12} {:<44} regs {:>3}  stack {:>3}  spill {}/{}  smem {:>5}",
                    program.name,
                    kind,
                    label_pattern(&step.label),
                    r.registers,
                    r.stack,
                    r.spill_stores,
                    r.spill_loads,
                    r.shared
                ));
            }
            all.extend(
                entries
                    .into_iter()
                    .map(|(n, r)| (format!("{name} {precision} {n}"), r)),
            );
        }
    }
    (lines, all)
}

#[test]
fn every_kernel_assembles_for_sm_90a() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let (lines, entries) = assemble_models(&ptxas, &PROGRAMS, &PRECISIONS);
    println!("{} kernels assembled", entries.len());
    let text: Vec<String> = lines.into_iter().collect();
    insta::assert_snapshot!("ptxas_resources", text.join("\n"));
}

/// The backends' profile of random graphs: no `f16`/`bf16` arithmetic.
const PROFILE: Profile = Profile {
    scatter: true,
    half_floats: false,
};

/// Compiles `graphs` (renamed apart) into one CUDA artifact and assembles its module.
fn assemble_graphs(ptxas: &Path, graphs: Vec<Graph>, what: &str) -> usize {
    let graphs: Vec<Graph> = graphs
        .into_iter()
        .enumerate()
        .map(|(i, mut g)| {
            g.name = format!("{}{i}", g.name);
            g
        })
        .collect();
    let artifact = kiln_backend_cuda::compile(
        &graphs,
        kiln::compile::model_info(&hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap()),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let ptx = String::from_utf8(artifact.object).unwrap();
    assemble(ptxas, &ptx, what).len()
}

/// Random graphs of 48 seeds, as generated and after elementwise fusion: every op and dtype
/// combination the lowering produces is emitted and assembles.
#[test]
fn random_graphs_assemble() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let mut graphs = Vec::new();
    for seed in 0..48 {
        let g = random_graph(seed, PROFILE);
        let mut fused = g.clone();
        ElementwiseFusion::default().run(&mut fused).unwrap();
        graphs.extend([g, fused]);
    }
    let kernels = assemble_graphs(&ptxas, graphs, "random graphs");
    println!("{kernels} kernels assembled");
}

/// `flash_attention` with every mask kind, grouped queries, head sizes that are not multiples
/// of 32 (and one above 32), i32 and i64 positions, strided queries, and left-padded rows.
#[test]
fn attention_of_every_mask_assembles() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    // (mask, positions, heads, kv heads, d, dv, strided queries, padding)
    let cases = [
        ("causal", "i64", 4, 4, 16, 16, false, ""),
        ("window(4)", "i64", 4, 2, 24, 8, false, ""),
        ("prefix(6)", "i32", 6, 3, 40, 72, true, ""),
        ("none", "", 2, 1, 8, 20, false, ""),
        ("causal", "i64", 4, 2, 16, 16, false, "i64"),
        ("window(4)", "i32", 2, 2, 8, 8, true, "i32"),
    ];
    let graphs = cases
        .iter()
        .map(|&(mask, pos, heads, kv, d, dv, strided, pad)| {
            let group = heads / kv;
            let mut text = "graph attention\nsym b <= 4\nsym s <= 80\nsym t <= 80\n".to_string();
            if strided {
                text += &format!("input %x : f32[b, s, {heads}, {d}]\n");
            } else {
                text += &format!("input %q : f32[b, {heads}, s, {d}]\n");
            }
            text += &format!("input %k : f32[b, {kv}, t, {d}]\ninput %v : f32[b, {kv}, t, {dv}]\n");
            let (operands, padding) = kiln_ir::testing::attention_inputs(&mut text, "s", pos, pad);
            if strided {
                text += &format!("%q = permute %x perm=[0,2,1,3] : f32[b, {heads}, s, {d}]\n");
            }
            text += &format!(
                "%y = flash_attention {operands} mask={mask} padding={padding} bias=none \
                 group={group} scale=0.25 tile_q=4 tile_k=8 : f32[b, {heads}, s, {dv}]\n\
                 output y = %y\n"
            );
            kiln_ir::text::parse(&text).unwrap_or_else(|e| panic!("{mask}: {e}\n{text}"))
        })
        .collect();
    assemble_graphs(&ptxas, graphs, "attention");
}

/// FlashAttention's forward, log-sum-exp and backward on tensor cores (`attention_mma`,
/// `attention_lse_mma`, `attention_grad_mma`) on the shapes the emulator checks them on
/// (`kiln_ir::testing::BF16_ATTENTION_CASES`): every entry assembles for sm_90a, the backward's
/// without spills; registers, spills and shared memory are snapshotted (the forward's two
/// m-tiles per warp at head size 64 fill the 255 registers and spill a few bytes).
#[test]
fn tensor_core_attention_assembles() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let mut lines = std::collections::BTreeSet::new();
    for case in kiln_ir::testing::BF16_ATTENTION_CASES {
        let (mask, _, heads, kv, d, dv, _, _, _) = case;
        let what = format!("{mask} {heads}/{kv} heads, d {d}, dv {dv}");
        for text in [
            kiln_ir::testing::bf16_attention_forward(case),
            kiln_ir::testing::bf16_attention_backward(case),
        ] {
            let g = kiln_ir::text::parse(&text).unwrap();
            let artifact = kiln_backend_cuda::compile(
                std::slice::from_ref(&g),
                kiln::compile::model_info(&hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap()),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let ptx = String::from_utf8(artifact.object).unwrap();
            for (entry, r) in assemble(&ptxas, &ptx, &what) {
                if !entry.contains("_mma_") {
                    continue;
                }
                let kind = kind_of(&entry);
                if kind == "attention_grad_mma" {
                    let spills = (r.spill_stores, r.spill_loads);
                    assert_eq!(spills, (0, 0), "{what}: {entry} spills");
                }
                lines.insert(format!(
                    "{kind:<20} d {d:>3} dv {dv:>3} regs {:>3}  spill {}/{}  smem {:>6}",
                    r.registers, r.spill_stores, r.spill_loads, r.shared
                ));
            }
        }
    }
    let text: Vec<String> = lines.into_iter().collect();
    insta::assert_snapshot!("ptxas_resources_tensor_core_attention", text.join("\n"));
}

/// The entry named `name` in a module's text.
fn entry<'a>(ptx: &'a str, name: &str) -> &'a str {
    let start = ptx
        .find(&format!(".visible .entry {name}("))
        .unwrap_or_else(|| panic!("no entry {name}"));
    let len = ptx[start..].find("\n}\n").unwrap() + 3;
    &ptx[start..start + len]
}

/// The first entry of each kernel kind of the tiny Llama's decode (f32), its first decode
/// matmul with bf16 weights, its prefill's tiled matmul and attention, and its prefill's
/// tensor-core matmul at `bf16`, which must hold `mma.sync` (ptxas assembles it into `HMMA`).
#[test]
fn representative_kernels_ptx() {
    let spec = hf::read_config(TINY_LLAMA, "tiny_llama.json").unwrap();
    for precision in PRECISIONS {
        let artifact = cuda_artifact(&spec, &PROGRAMS, precision);
        let ptx = String::from_utf8(artifact.object.clone()).unwrap();
        assert!(ptx.contains(".target sm_90a\n"));
        let mut seen = BTreeSet::new();
        for program in &artifact.manifest.programs {
            for step in &program.steps {
                let kind = kind_of(&step.kernel).to_string();
                let wanted = matches!(
                    (precision, program.name.as_str(), kind.as_str()),
                    (Precision::F32, "decode", _)
                        | (Precision::F32, "prefill", "matmul_tiled" | "attention")
                        | (Precision::Bf16Weights, "decode", "matmul_gemv")
                        | (Precision::Bf16, "prefill", "matmul_mma")
                        | (Precision::Bf16, "decode", "matmul_gemv_mma")
                );
                if wanted && seen.insert((program.name.clone(), kind.clone())) {
                    if kind == "matmul_mma" {
                        let text = entry(&ptx, &step.kernel);
                        let mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
                        assert_eq!(text.matches(mma).count(), 16, "{}", step.kernel);
                    }
                    insta::assert_snapshot!(
                        format!("ptx_{}_{}_{kind}", precision, program.name),
                        entry(&ptx, &step.kernel)
                    );
                }
            }
        }
    }
}

/// The training programs of every test model (the embedded tiny Llama's and the fixtures') at
/// `f32` and `bf16`: every kernel — the scatter of the embedding gradient, the attention
/// backward and the bf16 casts among them — assembles for sm_90a, without spills; the figures
/// are snapshotted as for inference.
#[test]
fn training_programs_assemble_for_sm_90a() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let (lines, entries) = assemble_models(&ptxas, &Program::TRAINING, &TRAINING_PRECISIONS);
    for (entry, r) in &entries {
        assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "{entry} spills");
    }
    println!("{} training kernels assembled", entries.len());
    let text: Vec<String> = lines.into_iter().collect();
    insta::assert_snapshot!("ptxas_resources_training", text.join("\n"));
}
