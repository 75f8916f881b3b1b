//! Opening a model from files: an artifact, its weights and the tokenizer that goes with them —
//! what the CLI and an embedding application do first.

use crate::artifact::Artifact;
use crate::error::{Result, RuntimeError};
use crate::executor::Model;
use crate::manifest::ModelInfo;
use crate::tokenizer::Tokenizer;
use crate::weights::load_weights;
use std::path::{Path, PathBuf};

/// Loads the artifact at `artifact` and the weights at `weights` (see [`load_weights`]).
pub fn open_model(artifact: &Path, weights: &Path, threads: usize) -> Result<Model> {
    let art = Artifact::read(artifact)?;
    let set = load_weights(weights, &art.manifest.weights, &art.manifest.model)?;
    Model::new(art, &artifact.display().to_string(), set.tensors, threads)
}

/// The tokenizer for a model: `explicit` if given; else the one a GGUF weights file embeds;
/// else a `tokenizer.json` beside the weights (or in the weights directory); else byte tokens
/// when the vocabulary has at least 256 entries.
pub fn open_tokenizer(
    explicit: Option<&Path>,
    weights: &Path,
    info: &ModelInfo,
) -> Result<Tokenizer> {
    let tokenizer = if let Some(path) = explicit {
        Tokenizer::from_file(path)?
    } else if weights.extension().is_some_and(|e| e == "gguf") {
        let file = kiln_gguf::read_path(weights)
            .map_err(|e| RuntimeError::new(weights.display().to_string(), None, e.to_string()))?;
        Tokenizer::from_gguf(&file)?
    } else if let Some(path) = beside(weights, "tokenizer.json") {
        Tokenizer::from_file(path)?
    } else if info.vocab_size >= 256 {
        Tokenizer::bytes()
    } else {
        return Err(RuntimeError::new(
            weights.display().to_string(),
            None,
            "no tokenizer: pass --tokenizer tokenizer.json",
        ));
    };
    Ok(tokenizer.with_model_info(info))
}

fn beside(weights: &Path, name: &str) -> Option<PathBuf> {
    let dir = if weights.is_dir() {
        weights
    } else {
        weights.parent()?
    };
    let path = dir.join(name);
    path.is_file().then_some(path)
}
