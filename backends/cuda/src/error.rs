//! Errors of the CUDA backend: a value or op the PTX emitter cannot compile (named with the
//! program and kernel so the user can find it in `kiln ir`), or one the shared lowering refused.
//! They are the lowering's own error type, so both kinds read alike.

pub use kiln_backend_cpu::{CompileError, Result};
