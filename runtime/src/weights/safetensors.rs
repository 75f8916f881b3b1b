//! Safetensors checkpoints: a single file, or shards listed by a `model.safetensors.index.json`.
//!
//! This module owns finding the files from the path given (or taking one file's bytes as
//! given), reading the index (its `weight_map` maps each tensor to a shard file in the index's
//! directory, and each shard must hold the tensors the index puts in it), listing the tensors of
//! every shard, and converting F32, F16 and BF16 data to f32; a tensor of any other dtype is an
//! error.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use ::safetensors::tensor::TensorView;
use ::safetensors::{Dtype, SafeTensors};
use kiln_gguf::GgmlType;
use serde::Deserialize;

use super::plan::{plan, Stored};
use super::{map_file, typed};
use crate::error::{Result, RuntimeError};
use crate::manifest::{ModelInfo, TensorDesc};
use crate::tensor::Tensor;

/// The file name of a single-file checkpoint in a model directory.
const SINGLE: &str = "model.safetensors";
/// The file name of a sharded checkpoint's index in a model directory.
const INDEX: &str = "model.safetensors.index.json";

/// The expected tensors of the checkpoint at `path` (a file, an index or a model directory), in
/// order, as f32.
pub(super) fn load(path: &Path, expected: &[TensorDesc], model: &ModelInfo) -> Result<Vec<Tensor>> {
    let checkpoint = Checkpoint::find(path)?;
    let maps = checkpoint
        .shards
        .iter()
        .map(|shard| map_file(shard))
        .collect::<Result<Vec<_>>>()?;
    let shards: Vec<(String, &[u8])> = checkpoint
        .shards
        .iter()
        .zip(&maps)
        .map(|(shard, map)| (shard.display().to_string(), &map[..]))
        .collect();
    let source = path.display().to_string();
    decode(&shards, checkpoint.index.as_ref(), expected, model, &source)
}

/// The expected tensors of the single safetensors file held in `bytes`, in order;
/// `source` names it in errors.
pub(super) fn load_bytes(
    bytes: &[u8],
    source: &str,
    expected: &[TensorDesc],
    model: &ModelInfo,
) -> Result<Vec<Tensor>> {
    decode(
        &[(source.to_string(), bytes)],
        None,
        expected,
        model,
        source,
    )
}

/// The expected tensors of a checkpoint whose shards are `(file name, bytes)`, checked against
/// its index if it has one, in order, in the expected types. `source` is what the caller named.
fn decode(
    shards: &[(String, &[u8])],
    index: Option<&Index>,
    expected: &[TensorDesc],
    model: &ModelInfo,
    source: &str,
) -> Result<Vec<Tensor>> {
    let mut stored = Vec::new();
    for (file, bytes) in shards {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| {
            RuntimeError::new(file, None, format!("not a valid safetensors file: {e}"))
        })?;
        stored.extend(tensors.iter().map(|(name, view)| Stored {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            file: file.clone(),
            data: view,
        }));
    }
    // The header is a map: sort, so that errors do not depend on its order.
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(index) = index {
        index.check(&stored)?;
    }
    plan(&stored, expected, model, source)?
        .into_iter()
        .zip(expected)
        .map(|(i, desc)| Ok(typed(to_f32(&stored[i])?, desc)))
        .collect()
}

/// The files of a checkpoint.
struct Checkpoint {
    shards: Vec<PathBuf>,
    /// Present for a sharded checkpoint.
    index: Option<Index>,
}

/// A sharded checkpoint's index: which shard holds each tensor.
struct Index {
    path: PathBuf,
    /// Tensor name → shard path.
    weight_map: BTreeMap<String, PathBuf>,
}

/// The part of `model.safetensors.index.json` the loader reads.
#[derive(Deserialize)]
struct IndexJson {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    fn find(path: &Path) -> Result<Checkpoint> {
        if path.is_dir() {
            let single = path.join(SINGLE);
            let index = path.join(INDEX);
            return if single.is_file() {
                Ok(Checkpoint::single(single))
            } else if index.is_file() {
                Checkpoint::sharded(&index)
            } else {
                Err(RuntimeError::new(
                    path.display().to_string(),
                    None,
                    format!("holds neither {SINGLE} nor {INDEX}"),
                ))
            };
        }
        if path.extension().is_some_and(|e| e == "json") {
            Checkpoint::sharded(path)
        } else {
            Ok(Checkpoint::single(path.to_path_buf()))
        }
    }

    fn single(path: PathBuf) -> Checkpoint {
        Checkpoint {
            shards: vec![path],
            index: None,
        }
    }

    fn sharded(index: &Path) -> Result<Checkpoint> {
        let file = index.display().to_string();
        let text = std::fs::read_to_string(index).map_err(|e| RuntimeError::io(&file, e))?;
        let json: IndexJson = serde_json::from_str(&text).map_err(|e| {
            RuntimeError::new(&file, None, format!("not a valid safetensors index: {e}"))
        })?;
        let dir = index.parent().unwrap_or(Path::new(""));
        let weight_map: BTreeMap<String, PathBuf> = json
            .weight_map
            .into_iter()
            .map(|(name, shard)| (name, dir.join(shard)))
            .collect();
        let shards: BTreeSet<&PathBuf> = weight_map.values().collect();
        Ok(Checkpoint {
            shards: shards.into_iter().cloned().collect(),
            index: Some(Index {
                path: index.to_path_buf(),
                weight_map,
            }),
        })
    }
}

impl Index {
    /// Checks that each tensor of the weight map is in the shard the map names.
    fn check<T>(&self, stored: &[Stored<T>]) -> Result<()> {
        let held: HashSet<(&str, &str)> = stored
            .iter()
            .map(|s| (s.name.as_str(), s.file.as_str()))
            .collect();
        for (name, shard) in &self.weight_map {
            let shard = shard.display().to_string();
            if !held.contains(&(name.as_str(), shard.as_str())) {
                return Err(RuntimeError::tensor(
                    self.path.display().to_string(),
                    name,
                    format!("the index puts it in {shard}, which does not hold it"),
                ));
            }
        }
        Ok(())
    }
}

/// The values of a stored tensor as f32.
fn to_f32(tensor: &Stored<TensorView<'_>>) -> Result<Vec<f32>> {
    let ty = match tensor.data.dtype() {
        Dtype::F32 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        other => {
            return Err(RuntimeError::tensor(
                &tensor.file,
                &tensor.name,
                format!("mis-typed: stored as {other}, expected F32, F16 or BF16"),
            ))
        }
    };
    // The safetensors header was validated: the data is exactly this many elements of `ty`.
    let mut out = vec![0.0; tensor.shape.iter().product()];
    kiln_gguf::dequantize(ty, tensor.data.data(), &mut out)
        .map_err(|e| RuntimeError::tensor(&tensor.file, &tensor.name, e.to_string()))?;
    Ok(out)
}
