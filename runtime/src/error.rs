//! Errors of the runtime. Every error caused by input (an artifact, a weights file, a tokenizer,
//! program inputs) names the file or tensor at fault and what was expected; nothing a user
//! passes in makes the runtime panic.

use std::fmt;

#[derive(Debug)]
pub struct RuntimeError {
    /// The file (artifact, weights, tokenizer…) or `<input>` the problem is in.
    pub file: String,
    /// The tensor, field or input at fault, if any.
    pub field: Option<String>,
    pub message: String,
}

impl RuntimeError {
    pub fn new(
        file: impl Into<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> RuntimeError {
        RuntimeError {
            file: file.into(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// An error about a named tensor (weight, input or output) of `file`.
    pub fn tensor(
        file: impl Into<String>,
        tensor: &str,
        message: impl Into<String>,
    ) -> RuntimeError {
        RuntimeError::new(file, Some(tensor), message)
    }

    pub fn io(file: impl Into<String>, err: std::io::Error) -> RuntimeError {
        RuntimeError::new(file, None, err.to_string())
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: `{field}`: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for RuntimeError {}

pub type Result<T> = std::result::Result<T, RuntimeError>;
