//! `kiln-passes`: the pass manager and the passes, one file (or folder) per pass.
//!
//! The pipeline is an explicit, ordered list ([`Pipeline::standard`]); the names in it are the
//! names `kiln ir --after NAME` accepts and the snapshot files carry. The verifier runs after
//! every pass: a pass that breaks an invariant fails at once, naming itself.

pub mod attention_fusion;
pub mod autodiff;
pub mod canonicalize;
pub mod elementwise_fusion;
mod equivalence;
pub mod gqa_share;
pub mod mixed_precision;
mod pipeline;
pub mod recompute;

pub use equivalence::{check_equivalent, stored_as};
pub use mixed_precision::Precision;
pub use pipeline::{Pass, Pipeline, PipelineError, PipelineOptions};
pub use recompute::Recompute;
