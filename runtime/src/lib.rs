//! `kiln-runtime`: loads compiled artifacts and executes them (decoding, training).
//!
//! Invariant: this crate depends on no compiler crate (`kiln-ir`, `kiln-frontend`,
//! `kiln-passes`, backends), so an application embedding an artifact links only the runtime.
//! Not yet implemented beyond this contract; `tests/architecture.rs` enforces it.
