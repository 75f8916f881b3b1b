//! Where a command's model comes from: a path given on the command line (config.json, a model
//! directory, a .gguf file) or, when none is given, the tiny Llama config embedded in the binary.

use kiln_frontend::{hf, load_spec, ModelSpec};
use std::path::Path;

const EMBEDDED_TINY_LLAMA: &str = include_str!("embedded/tiny_llama.json");

pub fn spec(path: Option<&Path>) -> Result<ModelSpec, String> {
    match path {
        Some(path) => load_spec(path),
        None => hf::read_config(EMBEDDED_TINY_LLAMA, "<embedded tiny-llama>"),
    }
    .map_err(|e| e.to_string())
}
