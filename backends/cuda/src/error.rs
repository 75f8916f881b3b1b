//! Errors of the CUDA backend: a value or op the PTX emitter cannot compile (named with the
//! program and kernel so the user can find it in `kiln ir`), or one the shared lowering refused.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct CompileError(pub String);

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CompileError {}

impl From<kiln_backend_cpu::CompileError> for CompileError {
    fn from(e: kiln_backend_cpu::CompileError) -> CompileError {
        CompileError(e.0)
    }
}

pub type Result<T> = std::result::Result<T, CompileError>;
