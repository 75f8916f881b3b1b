//! `kiln-runtime`: loads compiled artifacts and executes them (decoding, training).
//!
//! Invariant: this crate depends on no compiler crate (`kiln-ir`, `kiln-frontend`,
//! `kiln-passes`, backends), so an application embedding an artifact links only the runtime;
//! `tests/architecture.rs` enforces it. The artifact format (`manifest`, `artifact`, `poly`) is
//! defined here, and the compiler writes it.

pub mod artifact;
pub mod atomic;
pub mod error;
pub mod executor;
pub mod functions;
pub mod loader;
pub mod manifest;
pub mod poly;
pub mod pool;
pub mod tensor;
pub mod weights;

pub use artifact::Artifact;
pub use error::{Result, RuntimeError};
pub use executor::{Model, Runner};
pub use manifest::{ElemType, Manifest};
pub use poly::Poly;
pub use tensor::Tensor;
pub use weights::{load_weights, WeightSet};
