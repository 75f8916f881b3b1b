//! `kiln` as a library: the compiler driver shared by the CLI, the tests and benchmarks.
//!
//! `compile` takes a model spec through the frontend's builders, the pass pipeline and a backend
//! to an artifact; `model` resolves where a command's model comes from.

pub mod compile;
pub mod model;
