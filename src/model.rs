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

/// Seeded random weights for `weights`, each in its manifest type (norm scales 1, everything else
/// uniform in ±0.1): what the embedded demo and the benchmarks run with when no weights are
/// given.
pub fn random_weights(
    weights: &[kiln_runtime::manifest::TensorDesc],
    seed: u64,
) -> Vec<kiln_runtime::Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    weights
        .iter()
        .map(|w| {
            let numel: usize = w.shape.iter().product();
            let values: Vec<f32> = if w.name.ends_with("norm.weight") {
                vec![1.0; numel]
            } else {
                (0..numel).map(|_| rng.random_range(-0.1..0.1)).collect()
            };
            kiln_runtime::weights::typed(values, w)
        })
        .collect()
}
