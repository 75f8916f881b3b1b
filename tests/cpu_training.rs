//! The compiled training programs on the CPU, driven by the runtime's trainer: five steps on the
//! tiny Llama fixture reproduce PyTorch's AdamW run (the same reference as
//! `tests/hf_training.rs`, which interprets the programs); training resumed from a checkpoint
//! continues the uninterrupted run bit for bit; every step sums its micro-batches from zero; a
//! rejected step is skipped or rolled back, never applied; bad checkpoints are refused by name.

mod common;

use common::cpu::runtime_tensor;
use common::*;
use kiln_frontend::{load_spec, BuildOptions, Program};
use kiln_runtime::train::{
    Batch, LrSchedule, Outcome, SpikeOptions, SpikePolicy, TokenData, TrainOptions, Trainer,
};
use kiln_runtime::{load_weights, Artifact, Model, Tensor};

const CASE: &str = "llama";

/// The fixture's training programs, compiled, and its weights.
fn compiled() -> (Model, Vec<Tensor>) {
    let dir = fixture_dir(CASE);
    let spec = load_spec(&dir.join("config.json")).unwrap();
    let opts = BuildOptions {
        max_batch: 2,
        max_seq: 16,
        ..BuildOptions::for_spec(&spec)
    };
    let artifact = kiln::compile::compile_cpu(&spec, &Program::TRAINING, opts).unwrap();
    let artifact = Artifact::from_bytes(&artifact.to_bytes(), CASE).unwrap();
    let m = &artifact.manifest;
    let weights = load_weights(&dir.join("model.safetensors"), &m.weights, &m.model).unwrap();
    let mut model = Model::new(artifact, CASE, weights.tensors, 2).unwrap();
    let params = model.take_weights();
    (model, params)
}

/// The hyperparameters of `tools/fixtures/make_training_fixtures.py`.
fn fixture_options() -> TrainOptions {
    TrainOptions {
        eps: 1e-6,
        ..TrainOptions::new(2, 1e-3)
    }
}

#[test]
fn five_compiled_steps_match_pytorch() {
    let reference = read_safetensors(&fixture_dir(CASE).join("training.safetensors"));
    let (model, params) = compiled();
    let mut trainer = Trainer::new(&model, params, fixture_options()).unwrap();
    let batch = || Batch {
        input_ids: runtime_tensor(&reference["input_ids"]),
        position_ids: runtime_tensor(&reference["position_ids"]),
        targets: runtime_tensor(&reference["targets"]),
    };
    let losses = reference["losses"].to_f64();
    let norms = reference["grad_norms"].to_f64();
    for step in 0..5 {
        let report = trainer.step_on(vec![batch()]).unwrap();
        assert_eq!(report.outcome, Outcome::Applied);
        let (e_loss, e_norm) = (
            (report.loss - losses[step]).abs() / losses[step],
            (report.grad_norm - norms[step]).abs() / norms[step],
        );
        println!(
            "step {}: loss {:.6} (PyTorch {:.6}, rel {e_loss:.1e}), grad norm rel {e_norm:.1e}",
            step + 1,
            report.loss,
            losses[step]
        );
        assert!(e_loss <= 1e-4 && e_norm <= 1e-4, "step {}", step + 1);
    }
    let mut worst: f64 = 0.0;
    for (name, value) in trainer.weight_names().zip(trainer.params()) {
        let got = common::cpu::interp_tensor(value);
        let err = relative_error(&got, &reference[&format!("final.{name}")]);
        worst = worst.max(err);
        assert!(err <= 1e-4, "{name}: relative error {err:.1e}");
    }
    println!("parameters after step 5 within {worst:.1e} of PyTorch's");
}

/// A stream of pseudo-random token ids below the fixture's vocabulary.
fn tokens(n: usize) -> Vec<u32> {
    let mut x: u64 = 12345;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 256) as u32
        })
        .collect()
}

fn data() -> TokenData {
    TokenData::new(tokens(2000), 12, 2, 9, "tokens").unwrap()
}

fn options() -> TrainOptions {
    TrainOptions {
        lr: LrSchedule {
            peak: 3e-3,
            warmup: 3,
            decay_until: Some(10),
            floor: 3e-4,
        },
        ramp: kiln_runtime::train::BatchRamp::parse("1:1,4:2").unwrap(),
        ..TrainOptions::new(2, 3e-3)
    }
}

fn bits(params: &[Tensor]) -> Vec<Vec<u8>> {
    params.iter().map(|t| t.bytes().to_vec()).collect()
}

#[test]
fn resuming_from_a_checkpoint_continues_the_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step5.safetensors");
    let (model, params) = compiled();
    let mut straight = Trainer::new(&model, params.clone(), options()).unwrap();
    let mut stream = data();
    let mut losses = Vec::new();
    for _ in 0..10 {
        losses.push(straight.step(&mut stream).unwrap().loss);
    }
    assert!(losses[9] < losses[0], "the loss falls: {losses:?}");

    let mut first = Trainer::new(&model, params.clone(), options()).unwrap();
    let mut stream = data();
    for _ in 0..5 {
        first.step(&mut stream).unwrap();
    }
    first.save_checkpoint(&path, stream.position()).unwrap();
    drop(first);
    let mut resumed = Trainer::new(&model, params, options()).unwrap();
    let mut stream = data();
    stream.seek(resumed.resume(&path).unwrap()).unwrap();
    assert_eq!(resumed.step_count(), 5);
    for (step, loss) in losses.iter().enumerate().skip(5) {
        let report = resumed.step(&mut stream).unwrap();
        assert_eq!(report.loss.to_bits(), loss.to_bits(), "step {}", step + 1);
    }
    assert_eq!(bits(resumed.params()), bits(straight.params()));
}

/// A step of two micro-batches adds them to zeros every time: the second step's loss and
/// gradient norm (which depend on the weights and the data alone) are those of a fresh
/// trainer's first step from the same weights, bit for bit.
#[test]
fn every_step_sums_its_micro_batches_from_zero() {
    let reference = read_safetensors(&fixture_dir(CASE).join("training.safetensors"));
    let (model, params) = compiled();
    let batch = || Batch {
        input_ids: runtime_tensor(&reference["input_ids"]),
        position_ids: runtime_tensor(&reference["position_ids"]),
        targets: runtime_tensor(&reference["targets"]),
    };
    let mut trainer = Trainer::new(&model, params, fixture_options()).unwrap();
    trainer.step_on(vec![batch(), batch()]).unwrap();
    let after_one = trainer.params().to_vec();
    let second = trainer.step_on(vec![batch(), batch()]).unwrap();
    let mut fresh = Trainer::new(&model, after_one, fixture_options()).unwrap();
    let first = fresh.step_on(vec![batch(), batch()]).unwrap();
    assert_eq!(second.loss.to_bits(), first.loss.to_bits());
    assert_eq!(second.grad_norm.to_bits(), first.grad_norm.to_bits());
}

/// A factor below 1 makes every loss after the first a spike.
fn rejecting(policy: SpikePolicy) -> TrainOptions {
    TrainOptions {
        spike: SpikeOptions {
            factor: Some(0.5),
            window: 2,
            policy,
        },
        ..TrainOptions::new(2, 3e-3)
    }
}

#[test]
fn a_rejected_step_is_skipped_or_rolled_back_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (model, params) = compiled();

    let mut skipping = Trainer::new(&model, params.clone(), rejecting(SpikePolicy::Skip)).unwrap();
    let mut stream = data();
    assert_eq!(
        skipping.step(&mut stream).unwrap().outcome,
        Outcome::Applied
    );
    let after_one = bits(skipping.params());
    let report = skipping.step(&mut stream).unwrap();
    assert!(matches!(report.outcome, Outcome::Skipped(_)), "{report:?}");
    assert_eq!(report.step, 1);
    assert_eq!(bits(skipping.params()), after_one, "nothing applied");

    let path = dir.path().join("ckpt.safetensors");
    let mut rolling =
        Trainer::new(&model, params.clone(), rejecting(SpikePolicy::Rollback)).unwrap();
    let mut stream = data();
    rolling.step(&mut stream).unwrap();
    rolling.save_checkpoint(&path, stream.position()).unwrap();
    let saved = bits(rolling.params());
    let before = stream.position();
    let report = rolling.step(&mut stream).unwrap();
    assert!(
        matches!(report.outcome, Outcome::RolledBack(_)),
        "{report:?}"
    );
    assert_eq!(bits(rolling.params()), saved);
    assert_ne!(
        stream.position(),
        before,
        "the offending batch is passed over"
    );

    let mut no_checkpoint = Trainer::new(&model, params, rejecting(SpikePolicy::Rollback)).unwrap();
    let mut stream = data();
    no_checkpoint.step(&mut stream).unwrap();
    let err = no_checkpoint.step(&mut stream).unwrap_err().to_string();
    assert!(err.contains("checkpoint"), "{err}");
}

#[test]
fn corrupt_and_foreign_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (model, params) = compiled();
    let mut trainer = Trainer::new(&model, params, TrainOptions::new(2, 1e-3)).unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let err = trainer.resume(&garbage).unwrap_err().to_string();
    assert!(err.contains("garbage.safetensors"), "{err}");

    let weights = dir.path().join("weights.safetensors");
    std::fs::copy(fixture_dir(CASE).join("model.safetensors"), &weights).unwrap();
    let err = trainer.resume(&weights).unwrap_err().to_string();
    assert!(
        err.contains("format"),
        "plain weights are no checkpoint: {err}"
    );

    let path = dir.path().join("ckpt.safetensors");
    let position = data().position();
    trainer.save_checkpoint(&path, position).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let cut = bytes.len() - 100;
    bytes.truncate(cut);
    std::fs::write(&path, &bytes).unwrap();
    let err = trainer.resume(&path).unwrap_err().to_string();
    assert!(err.contains("ckpt.safetensors"), "{err}");
}

/// The embedded tiny Llama with four layers, its training programs compiled under `recompute`
/// for batches of 4 × 64 tokens, and one step on fixed data: the intermediates' arena after it
/// and the weights it leaves.
fn one_step_recomputing(recompute: kiln_passes::Recompute) -> (usize, Vec<Vec<u8>>) {
    let mut config: serde_json::Value =
        serde_json::from_str(include_str!("../src/embedded/tiny_llama.json")).unwrap();
    config["num_hidden_layers"] = 4.into();
    let spec = kiln_frontend::hf::read_config(&config.to_string(), "four layers").unwrap();
    let opts = BuildOptions {
        max_batch: 4,
        max_seq: 64,
        ..BuildOptions::for_spec(&spec)
    };
    let pipeline = kiln_passes::PipelineOptions {
        recompute,
        ..Default::default()
    };
    let artifact =
        kiln::compile::compile_cpu_with(&spec, &Program::TRAINING, opts, &pipeline).unwrap();
    let weights = kiln::model::random_weights(&artifact.manifest.weights, 3);
    let model = Model::new(artifact, "four layers", weights.clone(), 2).unwrap();
    let mut trainer = Trainer::new(&model, weights, TrainOptions::new(4, 1e-3)).unwrap();
    let mut stream = TokenData::new(tokens(2000), 64, 4, 1, "tokens").unwrap();
    trainer.step(&mut stream).unwrap();
    (trainer.arena_bytes(), bits(trainer.params()))
}

/// Recomputing layers, selectively or whole, or as much as a budget needs, shrinks the memory
/// the runtime allocates — within the budget — and changes no bit of the step.
#[test]
fn recomputation_fits_the_budget_and_changes_no_bit() {
    use kiln_passes::Recompute;
    let (saved, after_saved) = one_step_recomputing(Recompute::SaveAll);
    let (selective, after_selective) = one_step_recomputing(Recompute::Selective);
    let (layers, after_layers) = one_step_recomputing(Recompute::Layers);
    let budget = ((saved + layers) / 2) as u64;
    let (budgeted, after_budget) = one_step_recomputing(Recompute::Budget(budget));
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "arena: save-all {:.1} MiB, selective {:.1} MiB, layers {:.1} MiB, budget {:.1} MiB → \
         {:.1} MiB",
        mib(saved),
        mib(selective),
        mib(layers),
        mib(budget as usize),
        mib(budgeted)
    );
    assert!(
        layers * 2 < saved,
        "recomputing layers at least halves the arena"
    );
    assert!(
        layers < selective && selective < saved,
        "keeping the matmuls' results holds less than everything and more than layer inputs"
    );
    assert!(
        budgeted as u64 <= budget,
        "the runtime's arena fits the budget"
    );
    assert_eq!(after_selective, after_saved);
    assert_eq!(after_layers, after_saved);
    assert_eq!(after_budget, after_saved);
}
