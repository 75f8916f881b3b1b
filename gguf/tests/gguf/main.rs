//! Tests of `kiln-gguf` through its public API: files built by a test-only writer are read back
//! (`round_trip`), broken on purpose (`errors`), and corrupted byte by byte (`corrupt`);
//! `dequant` checks dequantization against gguf-py's results; `tidy`
//! checks that every file opens with a module doc.

mod corrupt;
mod dequant;
mod errors;
mod round_trip;
mod tidy;
mod writer;
