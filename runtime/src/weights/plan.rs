//! Matching the tensors a weights file holds against the tensors an artifact expects.
//!
//! Every reader lists what it holds as [`Stored`] entries under Hugging Face names; [`plan`]
//! decides which of them to decode, before anything is decoded. The rules, the same for every
//! format: each expected tensor is held exactly once, with the expected shape; nothing else is
//! held, except a `lm_head.weight` that a model with tied embeddings does not expect (some
//! checkpoints store the tied copy).

use std::collections::{HashMap, HashSet};

use crate::error::{Result, RuntimeError};
use crate::manifest::{ModelInfo, TensorDesc};

/// The tied copy of the embeddings that some checkpoints store.
const TIED_HEAD: &str = "lm_head.weight";

/// A tensor a weights file holds, under its Hugging Face name, with what its reader needs to
/// decode it.
pub(super) struct Stored<T> {
    pub name: String,
    /// Row-major, outermost first.
    pub shape: Vec<usize>,
    /// The file that holds it, for errors.
    pub file: String,
    pub data: T,
}

/// For each expected tensor, in order, the index in `stored` of the one to load. `source` is
/// the path the caller gave, named in errors about missing tensors.
pub(super) fn plan<T>(
    stored: &[Stored<T>],
    expected: &[TensorDesc],
    model: &ModelInfo,
    source: &str,
) -> Result<Vec<usize>> {
    let mut by_name = HashMap::with_capacity(stored.len());
    for (i, s) in stored.iter().enumerate() {
        if let Some(first) = by_name.insert(s.name.as_str(), i) {
            return Err(RuntimeError::tensor(
                &s.file,
                &s.name,
                format!("stored twice (also in {})", stored[first].file),
            ));
        }
    }
    let indices = expected
        .iter()
        .map(|t| {
            let &i = by_name.get(t.name.as_str()).ok_or_else(|| {
                RuntimeError::tensor(
                    source,
                    &t.name,
                    format!("missing (the artifact expects shape {:?})", t.shape),
                )
            })?;
            let found = &stored[i];
            if found.shape != t.shape {
                return Err(RuntimeError::tensor(
                    &found.file,
                    &t.name,
                    format!("expected shape {:?}, found {:?}", t.shape, found.shape),
                ));
            }
            Ok(i)
        })
        .collect::<Result<Vec<_>>>()?;
    let wanted: HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    let ignored = |name: &str| model.tied_embeddings && name == TIED_HEAD;
    if let Some(extra) = stored
        .iter()
        .find(|s| !wanted.contains(s.name.as_str()) && !ignored(&s.name))
    {
        return Err(RuntimeError::tensor(
            &extra.file,
            &extra.name,
            "not a weight of the artifact (is this the model it was compiled for?)",
        ));
    }
    Ok(indices)
}
