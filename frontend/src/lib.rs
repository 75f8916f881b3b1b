//! `kiln-frontend`: from a model description to graphs.
//!
//! Readers turn a Hugging Face `config.json` (`hf`) or a GGUF file's metadata (`gguf`) into a
//! [`ModelSpec`]; builders (`build`) turn a spec into the graph of one program. [`load_spec`]
//! picks the reader from the path. Every error names the file, the field and what was expected.

pub mod build;
pub mod error;
pub mod gguf;
pub mod hf;
mod json;
pub mod rope;
pub mod spec;

pub use build::{build, BuildOptions, LossOptions, Program};
pub use error::FrontendError;
pub use spec::ModelSpec;

use std::path::Path;

/// Reads the spec of the model at `path`: a `config.json`, a directory holding one, or a
/// `.gguf` file.
pub fn load_spec(path: &Path) -> Result<ModelSpec, FrontendError> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let file_shown = file.display().to_string();
    let read_error =
        |e: std::io::Error| FrontendError::new(&file_shown, None, format!("cannot read: {e}"));
    if file.extension().is_some_and(|e| e == "gguf") {
        let gguf = kiln_gguf::read_path(&file).map_err(|e| {
            let text = e.to_string();
            let message = text
                .strip_prefix(&format!("{}: ", e.file()))
                .unwrap_or(&text);
            FrontendError::new(e.file(), None, message)
        })?;
        return gguf::read_spec(&gguf);
    }
    let text = std::fs::read_to_string(&file).map_err(read_error)?;
    hf::read_config(&text, &file_shown)
}
