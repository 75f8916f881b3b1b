//! `kiln train` end to end on the embedded tiny Llama and text: it writes the log, the loss
//! curve, the weights and checkpoints; resuming from a checkpoint through the CLI ends on the
//! same weights as the uninterrupted run; bad data and options are refused by name.

mod common;

use std::path::{Path, PathBuf};

fn kiln(args: &[&str]) -> (bool, String) {
    let (ok, _, stderr) = common::kiln_cli(args);
    (ok, stderr)
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SMALL: [&str; 6] = ["--seq", "32", "--batch", "4", "--threads", "2"];

fn train(extra: &[&str]) -> (bool, String) {
    let args: Vec<&str> = ["train"]
        .iter()
        .chain(&SMALL)
        .chain(extra)
        .copied()
        .collect();
    kiln(&args)
}

#[test]
fn trains_logs_plots_saves_checkpoints_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| -> PathBuf { dir.path().join(name) };
    let (log, plot, weights, ckpt) = (
        at("log.csv"),
        at("loss.png"),
        at("w.safetensors"),
        at("ckpt"),
    );
    let (ok, stderr) = train(&[
        "--steps",
        "12",
        "--checkpoint-dir",
        arg(&ckpt),
        "--checkpoint-every",
        "6",
        "--log",
        arg(&log),
        "--plot",
        arg(&plot),
        "--save",
        arg(&weights),
    ]);
    assert!(ok, "{stderr}");
    let csv = std::fs::read_to_string(&log).unwrap();
    let losses: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 12);
    assert!(losses[11] < losses[0], "the loss falls: {losses:?}");
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));
    for step in [6, 12] {
        assert!(ckpt.join(format!("step-{step}.safetensors")).exists());
    }

    let resumed = at("resumed.safetensors");
    let (ok, stderr) = train(&[
        "--steps",
        "12",
        "--resume",
        arg(&ckpt.join("step-6.safetensors")),
        "--save",
        arg(&resumed),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(&resumed).unwrap(),
        std::fs::read(&weights).unwrap()
    );

    let (ok, stderr) = train(&["--steps", "1", "--init", arg(&weights), "--generate", "The"]);
    assert!(ok, "saved weights initialize a run: {stderr}");
}

#[test]
fn bad_data_and_options_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let (ok, stderr) = train(&["--data", arg(&missing)]);
    assert!(!ok && stderr.contains("missing.txt"), "{stderr}");

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let (ok, stderr) = train(&["--data", arg(&short)]);
    assert!(
        !ok && stderr.contains("short.txt") && stderr.contains("fewer than"),
        "{stderr}"
    );

    let foreign = dir.path().join("ids.safetensors");
    let ids: Vec<u8> = (0..400i64).flat_map(|i| (i * 3).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![400], &ids).unwrap();
    std::fs::write(
        &foreign,
        safetensors::serialize([("tokens", view)], None).unwrap(),
    )
    .unwrap();
    let (ok, stderr) = train(&["--data", arg(&foreign)]);
    assert!(
        !ok && stderr.contains("outside the model's vocabulary"),
        "{stderr}"
    );

    let (ok, stderr) = kiln(&["train", "--seq", "4096"]);
    assert!(
        !ok && stderr.contains("longer than the model's 128 positions"),
        "{stderr}"
    );
    let (ok, stderr) = train(&["--spike-policy", "rollback"]);
    assert!(!ok && stderr.contains("--checkpoint-dir"), "{stderr}");

    // Without a CUDA driver, training on the GPU is refused with the reason (no panic).
    if !kiln_runtime::cuda::driver_present() {
        let (ok, stderr) = train(&["--device", "cuda"]);
        assert!(!ok && stderr.contains("no CUDA driver found"), "{stderr}");
    }
}
