//! `kiln-runtime`: loads compiled artifacts and executes them (decoding, training).
//!
//! Invariant: this crate depends on no compiler crate (`kiln-ir`, `kiln-frontend`,
//! `kiln-passes`, backends), so an application embedding an artifact links only the runtime;
//! `tests/architecture.rs` enforces it. The artifact format (`manifest`, `artifact`, `poly`) is
//! defined here, and the compiler writes it. Text in and out of a model is here too: `tokenizer`
//! (text ↔ ids), `chat` (chat templates) and `sampling` (choosing the next token); `train` drives
//! the compiled training programs.

pub mod arena;
pub mod artifact;
pub mod atomic;
pub mod capacity;
pub mod chat;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod executor;
pub mod functions;
pub mod generate;
pub mod loader;
pub mod manifest;
pub mod memory_plan;
pub mod open;
pub mod packed;
pub mod poly;
pub mod pool;
pub mod profile;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use artifact::Artifact;
pub use chat::{render_chat, ChatMessage};
pub use error::{Result, RuntimeError};
pub use executor::{Model, Runner};
pub use generate::{GenerateOptions, Generation, Generator};
pub use manifest::{ElemType, Manifest};
pub use open::{open_model, open_tokenizer};
pub use poly::Poly;
pub use sampling::{Sampler, Sampling};
pub use tensor::Tensor;
pub use tokenizer::{DecodeStream, Tokenizer};
pub use weights::{load_weights, load_weights_from_bytes, WeightSet};
