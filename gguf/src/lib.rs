//! `kiln-gguf`: a reader of GGUF, llama.cpp's model file format (versions 2 and 3,
//! little-endian).
//!
//! It owns the file's header, metadata and tensor-info grammar, the ggml tensor types with their
//! block sizes, and the layout of the tensor data section. It reads the header part only:
//! [`read_path`] streams it through a `BufReader` and never loads tensor data; [`tensor_data`]
//! slices one tensor's bytes out of the whole file's bytes when the caller has them.
//!
//! Invariants of every [`GgufFile`] this crate returns:
//! - metadata keys and tensor names are unique, metadata is in file order;
//! - every tensor has a known [`GgmlType`], at most 4 dims, an element count that is a whole
//!   number of blocks, an offset that is a multiple of `alignment`, and data that lies inside
//!   the file;
//! - `alignment` is a non-zero power of two and `data_offset` is a multiple of it.
//!
//! No input makes it panic or allocate much more than the file holds: every length and count is
//! checked against the bytes left before anything is allocated. It knows nothing of model
//! architectures or the IR.
//!
//! [`dequantize`] and [`dequantize_tensor`] decode tensor data of the common types (F32, F16,
//! BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) to `f32`, matching gguf-py bit for bit.

mod dequant;
mod error;
mod file;
mod ggml_type;
mod layout;
mod metadata;
mod parse;
mod reader;
mod tensor;
mod value;

pub use dequant::{dequantize, dequantize_tensor, DEQUANT_TYPES};
pub use error::{ErrorKind, GgufError};
pub use file::GgufFile;
pub use ggml_type::GgmlType;
pub use layout::tensor_data;
pub use parse::{parse, read_path};
pub use tensor::TensorInfo;
pub use value::Value;
