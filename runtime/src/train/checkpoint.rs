//! Checkpoints: every weight with its AdamW moments, the optimizer step, the data position and
//! the spike detector's recent losses, as one safetensors file written atomically (temporary
//! file, fsync, rename), so a crash leaves the previous checkpoint whole.
//!
//! Tensors are `param.NAME`, `adam_m.NAME`, `adam_v.NAME` (f32); the metadata holds `format`
//! (`kiln-checkpoint-1`), `step`, `data.seed`, `data.epoch`, `data.index` and `spike.losses`
//! (comma-separated, printed so they read back to the same bits). Reading checks the format and
//! every tensor against the model's weights, naming what is missing or mis-shaped.

use super::data::DataPosition;
use crate::atomic;
use crate::error::{Result, RuntimeError};
use crate::manifest::{ElemType, TensorDesc};
use crate::tensor::Tensor;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "kiln-checkpoint-1";

/// The state a checkpoint holds (`T`: a tensor, or a borrowed or converted one to write).
pub struct Checkpoint<T = Tensor> {
    pub params: Vec<T>,
    pub adam_m: Vec<T>,
    pub adam_v: Vec<T>,
    pub step: u64,
    pub data: DataPosition,
    pub recent_losses: Vec<f64>,
}

/// The tensor groups of a checkpoint, in file-name prefix order.
const GROUPS: [&str; 3] = ["param.", "adam_m.", "adam_v."];

/// `tensors` (f32, one per weight) as views named `PREFIX.NAME`.
fn views<'a, T: Borrow<Tensor>>(
    file: &str,
    prefix: &str,
    weights: &[TensorDesc],
    tensors: &'a [T],
) -> Result<Vec<(String, TensorView<'a>)>> {
    weights
        .iter()
        .zip(tensors)
        .map(|(desc, t)| {
            let t: &Tensor = t.borrow();
            let view = TensorView::new(Dtype::F32, t.shape.clone(), t.bytes())
                .map_err(|e| RuntimeError::tensor(file, &desc.name, e.to_string()))?;
            Ok((format!("{prefix}{}", desc.name), view))
        })
        .collect()
}

/// The weights alone, under their own names (what `--init` and other frameworks read).
pub fn write_weights<T: Borrow<Tensor>>(
    path: &Path,
    weights: &[TensorDesc],
    params: &[T],
) -> Result<()> {
    let file = path.display().to_string();
    let bytes = safetensors::serialize(views(&file, "", weights, params)?, None)
        .map_err(|e| RuntimeError::new(&file, None, e.to_string()))?;
    atomic::write_file(path, &bytes)
}

pub fn write<T: Borrow<Tensor>>(
    path: &Path,
    weights: &[TensorDesc],
    state: &Checkpoint<T>,
) -> Result<()> {
    let file = path.display().to_string();
    let groups = [&state.params, &state.adam_m, &state.adam_v];
    let mut views_all = Vec::new();
    for (prefix, tensors) in GROUPS.iter().zip(groups) {
        views_all.extend(views(&file, prefix, weights, tensors)?);
    }
    let losses: Vec<String> = state
        .recent_losses
        .iter()
        .map(|l| format!("{l:?}"))
        .collect();
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), state.step.to_string()),
        ("data.seed".to_string(), state.data.seed.to_string()),
        ("data.epoch".to_string(), state.data.epoch.to_string()),
        ("data.index".to_string(), state.data.index.to_string()),
        ("spike.losses".to_string(), losses.join(",")),
    ]);
    let bytes = safetensors::serialize(views_all, Some(metadata))
        .map_err(|e| RuntimeError::new(&file, None, e.to_string()))?;
    atomic::write_file(path, &bytes)
}

pub fn read(path: &Path, weights: &[TensorDesc]) -> Result<Checkpoint> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(&file, e))?;
    let bad = |field: &str, m: String| RuntimeError::new(&file, Some(field), m);
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| RuntimeError::new(&file, None, format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| RuntimeError::new(&file, None, e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| bad(key, "missing from the checkpoint's metadata".into()))
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(bad(
            "format",
            format!("expected `{FORMAT}`, found `{format}`"),
        ));
    }
    let number = |key: &str| -> Result<u64> {
        let text = get(key)?;
        text.parse()
            .map_err(|_| bad(key, format!("expected a whole number, found `{text}`")))
    };
    let losses = get("spike.losses")?;
    let recent_losses = losses
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f64>()
                .map_err(|_| bad("spike.losses", format!("bad number `{s}`")))
        })
        .collect::<Result<Vec<f64>>>()?;
    let mut groups: Vec<Vec<Tensor>> = Vec::new();
    for prefix in GROUPS {
        let mut tensors = Vec::new();
        for desc in weights {
            let name = format!("{prefix}{}", desc.name);
            let view = st
                .tensor(&name)
                .map_err(|_| bad(&name, "missing from the checkpoint".into()))?;
            if view.dtype() != Dtype::F32 || view.shape() != desc.shape.as_slice() {
                return Err(bad(
                    &name,
                    format!(
                        "expected f32{:?}, found {:?}{:?}",
                        desc.shape,
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            tensors.push(Tensor::from_bytes(ElemType::F32, view.shape(), view.data()));
        }
        groups.push(tensors);
    }
    let expected = GROUPS.len() * weights.len();
    if st.len() != expected {
        return Err(RuntimeError::new(
            &file,
            None,
            format!(
                "{} tensors, expected {expected}: the checkpoint is of another model",
                st.len()
            ),
        ));
    }
    let adam_v = groups.pop().expect("three groups");
    let adam_m = groups.pop().expect("three groups");
    let params = groups.pop().expect("three groups");
    Ok(Checkpoint {
        params,
        adam_m,
        adam_v,
        step: number("step")?,
        data: DataPosition {
            seed: number("data.seed")?,
            epoch: number("data.epoch")?,
            index: number("data.index")? as usize,
        },
        recent_losses,
    })
}
