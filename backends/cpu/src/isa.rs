//! The target: x86-64 with a fixed feature baseline (SSE4.2, AVX, AVX2, FMA, BMI1/2, POPCNT,
//! LZCNT), so an artifact runs on any such machine, not only the one that compiled it.
//!
//! `has_avx` is set explicitly: without it Cranelift lowers `fma` to a call to `fmaf` even when
//! `has_fma` is on. The runtime checks the host has every feature listed before running code.

use crate::error::{CompileError, Result};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use std::str::FromStr;

/// The features, as the runtime checks them (`is_x86_feature_detected!` names).
pub const FEATURES: &[&str] = &[
    "sse4.2", "avx", "avx2", "fma", "bmi1", "bmi2", "popcnt", "lzcnt",
];

const FLAGS: &[&str] = &[
    "has_sse3",
    "has_ssse3",
    "has_sse41",
    "has_sse42",
    "has_avx",
    "has_avx2",
    "has_fma",
    "has_bmi1",
    "has_bmi2",
    "has_popcnt",
    "has_lzcnt",
];

pub fn target_isa() -> Result<OwnedTargetIsa> {
    let err =
        |e: &dyn std::fmt::Display| CompileError(format!("cannot set up the x86-64 target: {e}"));
    let mut shared = settings::builder();
    shared.set("opt_level", "speed").map_err(|e| err(&e))?;
    shared.set("is_pic", "false").map_err(|e| err(&e))?;
    let triple =
        target_lexicon::Triple::from_str("x86_64-unknown-linux-gnu").map_err(|e| err(&e))?;
    let mut isa = cranelift_codegen::isa::lookup(triple).map_err(|e| err(&e))?;
    for flag in FLAGS {
        isa.enable(flag).map_err(|e| err(&e))?;
    }
    isa.finish(settings::Flags::new(shared))
        .map_err(|e| err(&e))
}
