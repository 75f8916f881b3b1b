//! Errors of the CPU backend: an op or type the backend cannot compile (named with the node's
//! label so the user can find it in `kiln ir`), or a failure inside Cranelift.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct CompileError(pub String);

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CompileError {}

impl From<cranelift_module::ModuleError> for CompileError {
    fn from(e: cranelift_module::ModuleError) -> CompileError {
        CompileError(format!("code generation failed: {e:?}"))
    }
}

pub type Result<T> = std::result::Result<T, CompileError>;
