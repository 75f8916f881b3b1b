//! The training programs against PyTorch: from a tiny Hugging Face fixture's weights, five
//! `train_step`s on one batch (interpreted, after the standard pipeline, so the gradients come
//! from the `autodiff` pass and attention's fused backward) give the losses, gradient norms and
//! final parameters that `torch.optim.AdamW` with `clip_grad_norm_` gave
//! (`tools/fixtures/make_training_fixtures.py`) within 1e-4 relative error; the loss with label
//! smoothing and with z-loss matches PyTorch's at the initial weights; and splitting the batch
//! into micro-batches (`accumulate`, then `train_step`) gives the step of the whole batch.

mod common;

use common::*;
use kiln_frontend::{build, load_spec, BuildOptions, LossOptions, Program};
use kiln_ir::interp::{interpret, Tensor, TensorMap};
use kiln_ir::{DType, Graph, Op};
use kiln_passes::Pipeline;

const TOLERANCE: f64 = 1e-4;

/// The hyperparameters the fixture script used (and no loss limit).
const HYPER: [(&str, f64); 7] = [
    ("lr", 1e-3),
    ("beta1", 0.9),
    ("beta2", 0.95),
    ("eps", 1e-6),
    ("weight_decay", 0.1),
    ("max_grad_norm", 1.0),
    ("max_loss", f64::INFINITY),
];

struct Case {
    weights: TensorMap,
    reference: TensorMap,
    spec: kiln_frontend::ModelSpec,
}

fn case(name: &str) -> Case {
    let dir = fixture_dir(name);
    Case {
        weights: read_safetensors(&dir.join("model.safetensors")),
        reference: read_safetensors(&dir.join("training.safetensors")),
        spec: load_spec(&dir).unwrap(),
    }
}

fn program(case: &Case, program: Program, loss: LossOptions) -> Graph {
    let opts = BuildOptions {
        loss,
        ..BuildOptions::for_spec(&case.spec)
    };
    let mut g = build(&case.spec, program, opts).unwrap();
    Pipeline::standard().run(&mut g, |_, _| {}).unwrap();
    g
}

fn scalar(v: f64) -> Tensor {
    Tensor::from_f64(DType::F32, &[], [v])
}

fn scalar_of(t: &Tensor) -> f64 {
    t.to_f64()[0]
}

/// Zeros for every input of `g` named `PREFIX.NAME`, shaped like weight `NAME`.
fn zeros_for(g: &Graph, weights: &TensorMap, prefix: &str, inputs: &mut TensorMap) {
    for &id in g.inputs() {
        let Op::Input { name } = &g.node(id).op else {
            continue;
        };
        if let Some(weight) = name.strip_prefix(prefix) {
            inputs.insert(name.clone(), zeros(DType::F32, &weights[weight].shape));
        }
    }
}

/// The inputs of one micro-batch: `rows` of the fixture's batch, empty sums.
fn batch_inputs(case: &Case, g: &Graph, rows: std::ops::Range<usize>) -> TensorMap {
    let seq = case.reference["input_ids"].shape[1];
    let pick = |name: &str| {
        let t = &case.reference[name];
        let idx: Vec<usize> = (rows.start * seq..rows.end * seq).collect();
        Tensor::new(t.dtype, vec![rows.len(), seq], t.data.take(&idx))
    };
    let mut inputs: TensorMap = ["input_ids", "position_ids", "targets"]
        .into_iter()
        .map(|n| (n.to_string(), pick(n)))
        .collect();
    inputs.insert("loss_sum".into(), scalar(0.0));
    inputs.insert("token_count".into(), scalar(0.0));
    zeros_for(g, &case.weights, "grad_sum.", &mut inputs);
    inputs
}

/// The optimizer's inputs of `train_step` `g` for its first step: the hyperparameters, step 1
/// and zero moments.
fn first_step_inputs(case: &Case, g: &Graph, inputs: &mut TensorMap) {
    for (name, value) in HYPER {
        inputs.insert(name.into(), scalar(value));
    }
    inputs.insert("step".into(), scalar(1.0));
    zeros_for(g, &case.weights, "adam_m.", inputs);
    zeros_for(g, &case.weights, "adam_v.", inputs);
}

/// Runs `steps` train steps on the whole batch; returns the losses, the gradient norms and the
/// final weights.
fn train(case: &Case, steps: usize) -> (Vec<f64>, Vec<f64>, TensorMap) {
    let g = program(case, Program::TrainStep, LossOptions::default());
    let ops: Vec<&str> = g.node_ids().map(|id| g.node(id).op.name()).collect();
    for backward in [
        "flash_attention_grad_q",
        "flash_attention_grad_k",
        "flash_attention_grad_v",
    ] {
        assert!(
            ops.contains(&backward),
            "attention's fused backward ({backward}) is used"
        );
    }
    let mut weights = case.weights.clone();
    let mut inputs = batch_inputs(case, &g, 0..2);
    first_step_inputs(case, &g, &mut inputs);
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 1..=steps {
        inputs.insert("step".into(), scalar(step as f64));
        let out = interpret(&g, &inputs, &weights).unwrap();
        losses.push(scalar_of(&out["loss"]));
        norms.push(scalar_of(&out["grad_norm"]));
        for (name, value) in out {
            if let Some(w) = name.strip_prefix("param.") {
                weights.insert(w.to_string(), value);
            } else if name.starts_with("adam_") {
                inputs.insert(name, value);
            }
        }
    }
    (losses, norms, weights)
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

fn matches_pytorch(name: &str) {
    let case = case(name);
    let (losses, norms, weights) = train(&case, 5);
    let want_losses = case.reference["losses"].to_f64();
    let want_norms = case.reference["grad_norms"].to_f64();
    for step in 0..5 {
        let (e_loss, e_norm) = (
            relative(losses[step], want_losses[step]),
            relative(norms[step], want_norms[step]),
        );
        println!(
            "{name} step {}: loss {:.6} (PyTorch {:.6}, rel {e_loss:.1e}), grad norm {:.5} \
             (rel {e_norm:.1e})",
            step + 1,
            losses[step],
            want_losses[step],
            norms[step]
        );
        assert!(e_loss <= TOLERANCE, "{name} step {}: loss", step + 1);
        assert!(e_norm <= TOLERANCE, "{name} step {}: grad norm", step + 1);
    }
    let mut worst = (0.0, String::new());
    for (param, value) in &weights {
        let err = relative_error(value, &case.reference[&format!("final.{param}")]);
        if err > worst.0 {
            worst = (err, param.clone());
        }
    }
    println!(
        "{name}: parameters after step 5 within {:.1e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 <= TOLERANCE, "{name}: parameter {}", worst.1);
}

#[test]
fn llama_five_adamw_steps_match_pytorch() {
    matches_pytorch("llama");
}

#[test]
fn qwen2_five_adamw_steps_match_pytorch() {
    matches_pytorch("qwen2");
}

/// The loss at the initial weights, under `loss`.
fn first_loss(case: &Case, loss: LossOptions) -> f64 {
    let g = program(case, Program::Accumulate, loss);
    let out = interpret(&g, &batch_inputs(case, &g, 0..2), &case.weights).unwrap();
    scalar_of(&out["loss_sum"]) / scalar_of(&out["token_count"])
}

#[test]
fn label_smoothing_and_z_loss_match_pytorch() {
    let case = case("llama");
    for (loss, reference) in [
        (
            LossOptions {
                label_smoothing: 0.1,
                ..LossOptions::default()
            },
            "loss_label_smoothing",
        ),
        (
            LossOptions {
                z_loss: 1e-4,
                ..LossOptions::default()
            },
            "loss_z_loss",
        ),
    ] {
        let got = first_loss(&case, loss);
        let want = scalar_of(&case.reference[reference]);
        println!("{reference}: {got:.6} (PyTorch {want:.6})");
        assert!(relative(got, want) <= TOLERANCE, "{reference}");
    }
}

/// `accumulate` on the first sequence, then `train_step` on the second with those sums, is the
/// step of the whole batch.
#[test]
fn micro_batches_give_the_whole_batch_step() {
    let case = case("llama");
    let accumulate = program(&case, Program::Accumulate, LossOptions::default());
    let step = program(&case, Program::TrainStep, LossOptions::default());
    let first = interpret(
        &accumulate,
        &batch_inputs(&case, &accumulate, 0..1),
        &case.weights,
    )
    .unwrap();
    let mut inputs = batch_inputs(&case, &step, 1..2);
    for (name, value) in first {
        inputs.insert(name, value);
    }
    first_step_inputs(&case, &step, &mut inputs);
    let split = interpret(&step, &inputs, &case.weights).unwrap();
    let mut whole_inputs = batch_inputs(&case, &step, 0..2);
    first_step_inputs(&case, &step, &mut whole_inputs);
    let whole = interpret(&step, &whole_inputs, &case.weights).unwrap();
    for (name, value) in &whole {
        let err = relative_error(&split[name], value);
        assert!(
            err <= 1e-5,
            "{name}: split and whole batch differ by {err:.1e}"
        );
    }
}

/// Every pass of the standard pipeline keeps what `train_step` computes: each stage, with its
/// `grad`s expanded, gives the outputs of the graph as built on the fixture's batch — keeping
/// every activation, recomputing all but the matmuls' and attentions' results, or recomputing
/// every layer.
#[test]
fn every_pass_keeps_the_train_step() {
    for recompute in [
        kiln_passes::Recompute::SaveAll,
        kiln_passes::Recompute::Selective,
        kiln_passes::Recompute::Layers,
    ] {
        every_pass_keeps_the_train_step_with(recompute);
    }
}

fn every_pass_keeps_the_train_step_with(recompute: kiln_passes::Recompute) {
    let case = case("llama");
    let opts = BuildOptions::for_spec(&case.spec);
    let built = build(&case.spec, Program::TrainStep, opts).unwrap();
    let mut inputs = batch_inputs(&case, &built, 0..2);
    first_step_inputs(&case, &built, &mut inputs);
    let run = |g: &Graph| {
        let mut g = g.clone();
        if g.node_ids().any(|id| g.node(id).op == Op::Grad) {
            kiln_passes::Pass::run(&kiln_passes::autodiff::Autodiff, &mut g).unwrap();
        }
        interpret(&g, &inputs, &case.weights).unwrap()
    };
    let reference = run(&built);
    let mut stages = Vec::new();
    let mut g = built.clone();
    let options = kiln_passes::PipelineOptions {
        recompute,
        ..Default::default()
    };
    Pipeline::with_options(&options)
        .run(&mut g, |pass, after| stages.push((pass, after.clone())))
        .unwrap();
    let printed = kiln_ir::text::print(&g);
    assert_eq!(
        printed.contains("(recomputed)"),
        recompute != kiln_passes::Recompute::SaveAll,
        "{recompute}: copies exist exactly when layers are recomputed"
    );
    assert_eq!(
        printed.contains("_proj (recomputed)"),
        recompute == kiln_passes::Recompute::Layers,
        "{recompute}: the projections are computed again only when whole layers are"
    );
    for (pass, after) in stages {
        let out = run(&after);
        for (name, value) in &reference {
            let err = relative_error(&out[name], value);
            assert!(
                err <= 1e-5,
                "{recompute}: after {pass}, output {name}: relative error {err:.1e}"
            );
        }
    }
}

/// The embedding-gradient shrink scales the embedding table's gradient by `α` and leaves every
/// other gradient and the loss as they are (the fixture's head is untied, so the table is only
/// reached through the lookup).
#[test]
fn embedding_gradient_shrink_scales_only_the_embedding_gradient() {
    let case = case("llama");
    let shrunk_loss = LossOptions {
        embedding_gradient_scale: 0.1,
        ..LossOptions::default()
    };
    let run = |loss| {
        let g = program(&case, Program::Accumulate, loss);
        interpret(&g, &batch_inputs(&case, &g, 0..2), &case.weights).unwrap()
    };
    let (plain, shrunk) = (run(LossOptions::default()), run(shrunk_loss));
    for (name, value) in &plain {
        let got = &shrunk[name];
        let want = if name == "grad_sum.model.embed_tokens.weight" {
            Tensor::from_f64(
                DType::F32,
                &value.shape,
                value.to_f64().iter().map(|v| v * 0.1),
            )
        } else {
            value.clone()
        };
        let err = relative_error(got, &want);
        assert!(err <= 1e-6, "{name}: relative error {err:.1e}");
    }
}
