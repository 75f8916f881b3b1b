//! The IR's error type: a message naming what is wrong.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrError(pub String);

impl IrError {
    pub fn new(message: impl Into<String>) -> IrError {
        IrError(message.into())
    }

    /// Prefixes the message with where it happened.
    pub fn context(self, at: impl fmt::Display) -> IrError {
        IrError(format!("{at}: {}", self.0))
    }
}

impl fmt::Display for IrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IrError {}
