//! Compiles the model into the artifact the application embeds, at build time: the tiny Hugging
//! Face Llama fixture's `config.json` goes through kiln's compiler (`kiln::compile::compile_cpu`,
//! prefill and decode programs) into `$OUT_DIR/tiny_llama.kiln`, which `src/lib.rs` embeds with
//! `include_bytes!`. The compiler is a build-dependency only: the binary links `kiln-runtime`.
//!
//! The artifact is compiled for one sequence at a time (batch 1) and for sequences up to the
//! model's position limit (`max_position_embeddings`), which is what the application checks
//! prompts against.

use std::env;
use std::path::PathBuf;

use kiln::compile::{compile_cpu, DECODING_PROGRAMS};
use kiln_frontend::{load_spec, BuildOptions};

/// The model's config, relative to this package's directory.
const CONFIG: &str = "../../tests/fixtures/hf/llama/config.json";

/// The artifact's file name in `OUT_DIR` (`src/lib.rs` names it too).
const ARTIFACT: &str = "tiny_llama.kiln";

fn main() -> Result<(), String> {
    let manifest_dir =
        env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?;
    let config = PathBuf::from(manifest_dir).join(CONFIG);
    println!("cargo:rerun-if-changed={}", config.display());
    println!("cargo:rerun-if-changed=build.rs");
    let spec = load_spec(&config).map_err(|e| e.to_string())?;
    let opts = BuildOptions {
        max_batch: 1,
        max_seq: spec.max_positions,
        ..BuildOptions::for_spec(&spec)
    };
    let artifact = compile_cpu(&spec, &DECODING_PROGRAMS, opts)
        .map_err(|e| format!("compiling {}: {e}", config.display()))?;
    let out =
        PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?).join(ARTIFACT);
    std::fs::write(&out, artifact.to_bytes()).map_err(|e| format!("{}: {e}", out.display()))
}
