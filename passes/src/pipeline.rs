//! The pass manager: an ordered list of named passes, the verifier between them, and a hook
//! that sees the graph after each one (for `--after` and `--print-after-all`).

use crate::elementwise_fusion::ElementwiseFusion;
use crate::recompute::RecomputePlanning;
use kiln_ir::{verify, Graph, IrError};
use std::fmt;

pub trait Pass {
    /// The name used in the pipeline listing, `--after` and snapshot names.
    fn name(&self) -> &'static str;
    fn run(&self, g: &mut Graph) -> Result<(), IrError>;
}

#[derive(Debug)]
pub struct PipelineError {
    pub pass: &'static str,
    pub error: IrError,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pass `{}`: {}", self.pass, self.error)
    }
}

impl std::error::Error for PipelineError {}

/// The choices the standard pipeline's passes take; the default is what
/// [`Pipeline::standard`] runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineOptions {
    /// The `mixed-precision` policy.
    pub precision: crate::Precision,
    /// The `recompute` policy of training programs.
    pub recompute: crate::Recompute,
    /// Passes left out, by name (to measure what a pass buys, or to bisect a miscompile).
    pub skip: Vec<String>,
}

pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
    /// The `recompute` pass's planning, which the target-specific methods below adjust.
    planning: RecomputePlanning,
}

impl Pipeline {
    /// The standard pipeline with default options, in order.
    pub fn standard() -> Pipeline {
        Pipeline::with_options(&PipelineOptions::default())
    }

    /// The standard pipeline, in order, with `options`.
    pub fn with_options(options: &PipelineOptions) -> Pipeline {
        let planning = RecomputePlanning::new(options.recompute, options.precision);
        Pipeline {
            passes: vec![
                Box::new(crate::canonicalize::Canonicalize),
                Box::new(crate::gqa_share::GqaShare),
                Box::new(crate::attention_fusion::AttentionFusion),
                Box::new(crate::autodiff::Autodiff),
                Box::new(planning),
                Box::new(crate::mixed_precision::MixedPrecision {
                    precision: options.precision,
                }),
                Box::new(ElementwiseFusion::default()),
            ],
            planning,
        }
        .without(&options.skip)
    }

    /// This pipeline with `elementwise-fusion` for a target bound by memory bandwidth
    /// (`ElementwiseFusion::memory_bound`): values are computed again where they are read
    /// rather than stored wherever that costs no more traffic, a softmax's exponentials
    /// included. The `recompute` pass estimates memory with that fusion too.
    pub fn fusing_for_bandwidth(mut self) -> Pipeline {
        let fusion = ElementwiseFusion { memory_bound: true };
        for pass in &mut self.passes {
            if pass.name() == fusion.name() {
                *pass = Box::new(fusion);
            }
        }
        self.planning.fusion = fusion;
        self.with_planning()
    }

    /// This pipeline for a target that computes an attention and its log-sum-exp (of the same
    /// operands) in one kernel: the `recompute` pass's estimate counts them together.
    pub fn computing_attention_with_lse(mut self) -> Pipeline {
        self.planning.attention_with_lse = true;
        self.with_planning()
    }

    /// This pipeline with its `recompute` pass (if not left out) running `self.planning`.
    fn with_planning(mut self) -> Pipeline {
        let planning = self.planning;
        for pass in &mut self.passes {
            if pass.name() == planning.name() {
                *pass = Box::new(planning);
            }
        }
        self
    }

    /// This pipeline less the passes named in `skip` (names no pass has are ignored; see
    /// [`Pipeline::unknown`]).
    fn without(mut self, skip: &[String]) -> Pipeline {
        self.passes.retain(|p| !skip.iter().any(|s| s == p.name()));
        self
    }

    /// The names in `names` that no pass of the standard pipeline has.
    pub fn unknown(names: &[String]) -> Vec<String> {
        let known = Pipeline::standard().names();
        names
            .iter()
            .filter(|n| !known.contains(&n.as_str()))
            .cloned()
            .collect()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every pass in order, verifying after each and handing the result to `after`.
    pub fn run(
        &self,
        g: &mut Graph,
        mut after: impl FnMut(&'static str, &Graph),
    ) -> Result<(), PipelineError> {
        verify(g).map_err(|error| PipelineError {
            pass: "build",
            error,
        })?;
        for pass in &self.passes {
            let fail = |error| PipelineError {
                pass: pass.name(),
                error,
            };
            pass.run(g).map_err(fail)?;
            verify(g).map_err(fail)?;
            after(pass.name(), g);
        }
        Ok(())
    }
}
