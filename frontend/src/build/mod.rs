//! Graph builders: a `ModelSpec` in, one program's graph out, written in primitives only.
//!
//! Programs of the causal-decoder family:
//! - `prefill`: `input_ids`, `position_ids` `i64[batch, seq]` and `left_padding` `i64[batch]`
//!   → the last position's `logits f32[batch, 1, vocab]` (all generation needs), their greedy
//!   choice `next_tokens i64[batch]` (see `greedy.rs`) and each layer's cache `key_L`, `value_L` `f32[batch, kv_heads, seq, head_dim]`;
//! - `decode`: one token per sequence (`i64[batch, 1]`, with `left_padding`) plus the cache so far
//!   (`past_key_L`, `past_value_L` `f32[batch, kv_heads, past, head_dim]`) → `logits`,
//!   `next_tokens` and the cache one longer (`past+1`);
//! - `forward`: the inputs of `prefill` → `logits f32[batch, seq, vocab]` at every position and
//!   no cache (scoring, evaluation, comparison with other frameworks);
//! - `train_step` and `accumulate`: the forward of every position, the loss, its gradients and
//!   (for `train_step`) clipping and the AdamW update, in one graph (see `train.rs`).
//!
//! The cache holds `kv_heads` heads (as Hugging Face's does); attention repeats them explicitly
//! for grouped-query attention, and masks with explicit compares, so later passes see — and fuse —
//! the plain pattern. The inference programs take prompts of different lengths in one batch
//! left-padded: row `b` starts with `left_padding[b]` filler tokens, whose keys no query sees, and
//! its key `j` is at position `j − left_padding[b]` (zeros: every row starts at key 0, as the
//! training programs' sequences do). Anything the spec describes that these builders do not implement is
//! refused by [`check_supported`], naming it.

mod attention;
mod decoder;
mod greedy;
mod layers;
mod loss;
mod train;

pub use loss::LossOptions;

use crate::error::FrontendError;
use crate::spec::*;
use kiln_ir::Graph;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Prefill,
    Decode,
    Forward,
    TrainStep,
    Accumulate,
}

impl Program {
    pub const ALL: [Program; 5] = [
        Program::Prefill,
        Program::Decode,
        Program::Forward,
        Program::TrainStep,
        Program::Accumulate,
    ];
    /// The programs that run a trained model.
    pub const INFERENCE: [Program; 3] = [Program::Prefill, Program::Decode, Program::Forward];
    /// The programs that train one.
    pub const TRAINING: [Program; 2] = [Program::TrainStep, Program::Accumulate];

    pub fn name(self) -> &'static str {
        match self {
            Program::Prefill => "prefill",
            Program::Decode => "decode",
            Program::Forward => "forward",
            Program::TrainStep => "train_step",
            Program::Accumulate => "accumulate",
        }
    }

    pub fn is_training(self) -> bool {
        Program::TRAINING.contains(&self)
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Program {
    type Err = String;
    fn from_str(s: &str) -> Result<Program, String> {
        Program::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Program::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown program `{s}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Declared maxima of the symbolic dimensions, and the training loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BuildOptions {
    pub max_batch: usize,
    /// Longest sequence (prompt plus generated tokens); at most the model's position limit.
    pub max_seq: usize,
    /// The loss of the training programs.
    pub loss: LossOptions,
}

impl BuildOptions {
    /// Batch up to 8, sequences up to the model's position limit, plain cross-entropy.
    pub fn for_spec(spec: &ModelSpec) -> BuildOptions {
        BuildOptions {
            max_batch: 8,
            max_seq: spec.max_positions,
            loss: LossOptions::default(),
        }
    }
}

pub fn build(
    spec: &ModelSpec,
    program: Program,
    opts: BuildOptions,
) -> Result<Graph, FrontendError> {
    check_supported(spec)?;
    let refuse =
        |field: &str, message: String| FrontendError::new("<build options>", Some(field), message);
    if opts.max_batch == 0 {
        return Err(refuse(
            "max_batch",
            "expected a positive integer, found 0".into(),
        ));
    }
    let limit = match &spec.position {
        Position::Rope(Rope {
            scaling:
                RopeScaling::Dynamic {
                    original_max_positions,
                    ..
                },
            ..
        }) => (*original_max_positions).min(spec.max_positions),
        _ => spec.max_positions,
    };
    opts.loss
        .check()
        .map_err(|message| refuse("loss", message))?;
    if opts.max_seq < 2 || opts.max_seq > limit {
        return Err(refuse(
            "max_seq",
            format!(
                "{} must be between 2 and the model's position limit {limit}",
                opts.max_seq
            ),
        ));
    }
    decoder::build(spec, program, opts)
        .map_err(|e| FrontendError::new("<builder>", None, e.to_string()))
}

/// Refuses, by name, every axis value the builders do not implement yet.
pub fn check_supported(spec: &ModelSpec) -> Result<(), FrontendError> {
    let refuse = |field: &str, what: String| {
        Err(FrontendError::new(
            format!("<{} spec>", spec.family),
            Some(field),
            format!("{what} is not supported by kiln's builders yet"),
        ))
    };
    if spec.layout != Layout::CausalDecoder {
        return refuse("layout", format!("{:?}", spec.layout));
    }
    if spec.mixer != Mixer::Attention {
        return refuse("mixer", format!("{:?}", spec.mixer));
    }
    if spec.mlp != Mlp::Dense {
        return refuse("mlp", format!("{:?}", spec.mlp));
    }
    if spec.residual != Residual::Sequential {
        return refuse("residual", format!("{:?}", spec.residual));
    }
    if spec.norm.kind != NormKind::RmsNorm || spec.norm.placement != NormPlacement::Pre {
        return refuse(
            "norm",
            format!("{:?} {:?}", spec.norm.kind, spec.norm.placement),
        );
    }
    if !spec.ffn.gated {
        return refuse("ffn.gated", "an ungated MLP".into());
    }
    match &spec.position {
        Position::Rope(rope) => {
            if rope.style != RopeStyle::RotateHalf {
                return refuse("position.style", format!("{:?} RoPE", rope.style));
            }
            if rope.partial_rotary_factor != 1.0 {
                return refuse(
                    "position.partial_rotary_factor",
                    format!("partial RoPE ({})", rope.partial_rotary_factor),
                );
            }
        }
        other => return refuse("position", format!("{other:?}")),
    }
    if let Some(w) = spec
        .attention
        .windows
        .iter()
        .find(|w| matches!(w, AttentionWindow::BlockSparse { .. }))
    {
        return refuse("attention.windows", format!("{w:?}"));
    }
    if spec.attention.logit_softcap.is_some() {
        return refuse(
            "attention.logit_softcap",
            "attention logit soft-capping".into(),
        );
    }
    if spec.embeddings.scale.is_some() {
        return refuse("embeddings.scale", "scaled embeddings".into());
    }
    if spec.attention.windows.len() != spec.num_layers {
        return refuse(
            "attention.windows",
            "a window list not matching the layer count".into(),
        );
    }
    Ok(())
}
