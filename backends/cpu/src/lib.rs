//! `kiln-backend-cpu`: Cranelift code generation of kernels into object code.
//!
//! Not yet implemented: the crate holds its place in the workspace so that the dependency
//! direction of the design (backends depend on `kiln-ir`, never the reverse) is fixed from the start.
