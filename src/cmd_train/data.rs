//! The token stream `kiln train` learns from: a text file encoded with the model's tokenizer, a
//! safetensors file of token ids (a tensor named `tokens` or `input_ids`, any shape, read in
//! order), or, with no file, the text embedded in the binary. Every id must be below the model's
//! vocabulary size, so a tokenizer that does not belong to the model is caught here.

use kiln_runtime::Tokenizer;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

const EMBEDDED_TEXT: &str = include_str!("../embedded/kiln_text.txt");

/// The token ids of `path` (or of the embedded text), checked against `vocab`.
pub fn tokens(
    path: Option<&Path>,
    tokenizer: &Tokenizer,
    vocab: usize,
) -> Result<Vec<u32>, String> {
    let (source, ids) = match path {
        None => (
            "<embedded text>".to_string(),
            encode(EMBEDDED_TEXT, tokenizer, "<embedded text>")?,
        ),
        Some(p) if p.extension().is_some_and(|e| e == "safetensors") => {
            (p.display().to_string(), read_ids(p)?)
        }
        Some(p) => {
            let file = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| format!("{file}: {e}"))?;
            let ids = encode(&text, tokenizer, &file)?;
            (file, ids)
        }
    };
    if let Some((at, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(format!(
            "{source}: token {at} is id {id}, outside the model's vocabulary of {vocab}: the \
             tokenizer or the token file does not belong to this model"
        ));
    }
    Ok(ids)
}

fn encode(text: &str, tokenizer: &Tokenizer, source: &str) -> Result<Vec<u32>, String> {
    tokenizer
        .encode(text, false)
        .map_err(|e| format!("{source}: {e}"))
}

fn read_ids(path: &Path) -> Result<Vec<u32>, String> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{file}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{file}: {e}"))?;
    let (name, view) = ["tokens", "input_ids"]
        .iter()
        .find_map(|n| st.tensor(n).ok().map(|v| (*n, v)))
        .ok_or_else(|| format!("{file}: expected a tensor named `tokens` or `input_ids`"))?;
    let data = view.data();
    let ids: Vec<i64> = match view.dtype() {
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        other => {
            return Err(format!(
                "{file}: `{name}`: expected i64 or i32 token ids, found {other:?}"
            ))
        }
    };
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            u32::try_from(id).map_err(|_| format!("{file}: `{name}`[{i}] = {id} is not a token id"))
        })
        .collect()
}
