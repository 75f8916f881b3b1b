//! [`GgufError`]: what went wrong, in which file, where, and what was expected.
//!
//! An error carries the file (the path, or the `source` name given to `parse`), the byte offset
//! where the offending item starts when there is one, what was being read (the key of a
//! metadata entry, the value of a key, a tensor), and an [`ErrorKind`] holding the found and
//! expected facts. `Display` renders all of it on one line:
//! `model.gguf: truncated at byte 1234 while reading the value of `llama.block_count` (expected 4
//! more bytes, found 0)`.

use std::fmt;
use std::io;

use crate::dequant::DEQUANT_TYPES;
use crate::ggml_type::GgmlType;

/// An error reading a GGUF file, or asking its metadata for a value it does not hold. Boxed,
/// so results stay one word wide.
#[derive(Debug)]
pub struct GgufError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    file: String,
    offset: Option<u64>,
    reading: Option<String>,
    kind: ErrorKind,
}

/// What went wrong, with the facts found and expected.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system failed to open or read the file.
    Io(io::Error),
    /// The first four bytes are not `GGUF`; `found` holds what is there (fewer when the file is
    /// shorter).
    NotGguf { found: Vec<u8> },
    /// The version is not 2 or 3.
    UnsupportedVersion { version: u32 },
    /// The file ends before an item that needs `needed` bytes; `available` are left.
    Truncated { needed: u64, available: u64 },
    /// A length or count that the rest of the file cannot hold: `count` items of at least
    /// `item_bytes` bytes each, with `remaining` bytes left of `file_len`. Shown as "absurd"
    /// when even the whole file could not hold it, else as a truncation.
    TooLong {
        what: &'static str,
        count: u64,
        item_bytes: u64,
        remaining: u64,
        file_len: u64,
    },
    /// A metadata value type id outside 0..=12.
    UnknownValueType { id: u32 },
    /// A string's bytes are not UTF-8; the first bad byte is at `valid_up_to` in the string.
    InvalidUtf8 { valid_up_to: usize },
    /// A bool stored as a byte other than 0 or 1.
    InvalidBool { byte: u8 },
    /// Arrays nested deeper than `limit` levels.
    NestingTooDeep { limit: u32 },
    /// More than `limit` metadata values in all arrays together.
    TooManyValues { limit: u64 },
    /// A metadata key that appears twice.
    DuplicateKey { key: String },
    /// A tensor with more than `max` dimensions.
    TooManyDims { n_dims: u32, max: u32 },
    /// A ggml type id this reader does not know.
    UnknownGgmlType { id: u32 },
    /// A tensor name that appears twice.
    DuplicateTensor { name: String },
    /// `general.alignment` is not a non-zero power of two stored as u32; `found` describes it.
    BadAlignment { found: String },
    /// A tensor's element count or byte size does not fit in 64 bits.
    SizeOverflow { dims: Vec<u64> },
    /// A tensor's element count is not a whole number of its type's blocks.
    PartialBlock { numel: u64, ggml_type: GgmlType },
    /// A tensor's data offset is not a multiple of the file's alignment.
    Misaligned { offset: u64, alignment: u64 },
    /// A tensor's data, bytes `start..end` of the file, goes past its `file_len` bytes.
    TensorOutOfBounds { start: u64, end: u64, file_len: u64 },
    /// Dequantizing this type is not implemented yet.
    DequantUnsupported { ggml_type: GgmlType },
    /// Tensor data of `found` bytes where `numel` elements of `ggml_type` take `expected`.
    DataLength {
        ggml_type: GgmlType,
        numel: u64,
        expected: u64,
        found: u64,
    },
    /// A metadata key that is not in the file.
    MissingKey { key: String },
    /// A metadata value of another type than asked for.
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
}

impl GgufError {
    pub(crate) fn new(file: &str, kind: ErrorKind) -> GgufError {
        GgufError(Box::new(Inner {
            file: file.to_string(),
            offset: None,
            reading: None,
            kind,
        }))
    }

    pub(crate) fn at(mut self, offset: u64) -> GgufError {
        self.0.offset = Some(offset);
        self
    }

    /// Records what was being read, unless a more precise description is already there.
    pub(crate) fn reading(mut self, what: impl FnOnce() -> String) -> GgufError {
        if self.0.reading.is_none() {
            self.0.reading = Some(what());
        }
        self
    }

    /// The file: its path, or the name given to [`crate::parse`].
    pub fn file(&self) -> &str {
        &self.0.file
    }

    /// The byte offset in the file where the offending item starts, when there is one.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// What was being read, e.g. "the value of `general.name`" or "tensor `output.weight`".
    pub fn what_was_read(&self) -> Option<&str> {
        self.0.reading.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    pub fn into_kind(self) -> ErrorKind {
        self.0.kind
    }
}

impl ErrorKind {
    /// The headline of the message, and the found-versus-expected detail in parentheses.
    fn parts(&self) -> (String, Option<String>) {
        use ErrorKind::*;
        match self {
            Io(e) => ("I/O error".into(), Some(e.to_string())),
            NotGguf { found } => {
                let found = match found.len() {
                    0 => "found an empty file".to_string(),
                    n if n < 4 => format!("found only {n} bytes: {}", show_bytes(found)),
                    _ => format!("found {}", show_bytes(found)),
                };
                (
                    "not a GGUF file".into(),
                    Some(format!("expected magic `GGUF` at byte 0, {found}")),
                )
            }
            UnsupportedVersion { version } => {
                let mut detail = "expected 2 or 3".to_string();
                if *version == 1 {
                    detail.push_str("; version 1 used 32-bit lengths and is not read");
                } else if matches!(version.swap_bytes(), 2 | 3) {
                    detail.push_str("; the file looks big-endian, which is not read");
                }
                (format!("unsupported GGUF version {version}"), Some(detail))
            }
            Truncated { needed, available } => (
                "truncated".into(),
                Some(format!("expected {needed} more bytes, found {available}")),
            ),
            TooLong {
                what,
                count,
                item_bytes,
                remaining,
                file_len,
            } => {
                let needed = count.saturating_mul(*item_bytes);
                if needed <= *file_len {
                    let at_least = if *item_bytes == 1 { "" } else { "at least " };
                    let detail = format!(
                        "{what} {count} needs {at_least}{needed} more bytes, found {remaining}"
                    );
                    return ("truncated".into(), Some(detail));
                }
                let detail = if *item_bytes == 1 {
                    format!("only {remaining} bytes remain in the file")
                } else {
                    format!(
                        "each takes at least {item_bytes} bytes and only {remaining} bytes remain \
                         in the file"
                    )
                };
                (format!("absurd {what} {count}"), Some(detail))
            }
            UnknownValueType { id } => (
                format!("unknown metadata value type id {id}"),
                Some("expected 0 to 12".into()),
            ),
            InvalidUtf8 { valid_up_to } => (
                "string is not UTF-8".into(),
                Some(format!("invalid byte at index {valid_up_to} of the string")),
            ),
            InvalidBool { byte } => (
                "invalid bool".into(),
                Some(format!("expected byte 0 or 1, found {byte}")),
            ),
            NestingTooDeep { limit } => (
                "arrays nested too deeply".into(),
                Some(format!("expected at most {limit} levels")),
            ),
            TooManyValues { limit } => (
                "too many metadata values".into(),
                Some(format!("expected at most {limit} array elements in all")),
            ),
            DuplicateKey { key } => (format!("duplicate metadata key `{key}`"), None),
            TooManyDims { n_dims, max } => (
                format!("tensor with {n_dims} dimensions"),
                Some(format!("expected at most {max}")),
            ),
            UnknownGgmlType { id } => (
                format!("unknown ggml type id {id}"),
                Some(format!("expected one of {}", known_types())),
            ),
            DuplicateTensor { name } => (format!("duplicate tensor name `{name}`"), None),
            BadAlignment { found } => (
                "invalid `general.alignment`".into(),
                Some(format!(
                    "expected a non-zero power of two stored as u32, found {found}"
                )),
            ),
            SizeOverflow { dims } => (
                "tensor size overflows 64 bits".into(),
                Some(format!("dims {dims:?}")),
            ),
            PartialBlock { numel, ggml_type } => (
                "tensor is not a whole number of blocks".into(),
                Some(format!(
                    "expected a multiple of {} elements for {ggml_type}, found {numel}",
                    ggml_type.block_size()
                )),
            ),
            Misaligned { offset, alignment } => (
                format!("misaligned tensor data offset {offset}"),
                Some(format!("expected a multiple of the alignment {alignment}")),
            ),
            TensorOutOfBounds {
                start,
                end,
                file_len,
            } => (
                "tensor data past the end of the file".into(),
                Some(format!(
                    "data spans bytes {start}..{end}, the file has {file_len} bytes"
                )),
            ),
            DequantUnsupported { ggml_type } => (
                format!("dequantizing {ggml_type} is not supported yet"),
                Some(format!("supported: {}", dequant_types())),
            ),
            DataLength {
                ggml_type,
                numel,
                expected,
                found,
            } => (
                "tensor data has the wrong length".into(),
                Some(format!(
                    "expected {expected} bytes for {numel} {ggml_type} elements, found {found}"
                )),
            ),
            MissingKey { key } => (format!("missing metadata key `{key}`"), None),
            WrongType {
                key,
                expected,
                found,
            } => (
                format!("metadata `{key}` has the wrong type"),
                Some(format!("expected {expected}, found {found}")),
            ),
        }
    }
}

/// The ids of the known ggml types, for the unknown-type message.
fn known_types() -> String {
    let names: Vec<String> = GgmlType::ALL
        .iter()
        .map(|t| format!("{t}={}", t.id()))
        .collect();
    names.join(", ")
}

/// The names of the types that can be dequantized, for the unsupported-type message.
fn dequant_types() -> String {
    let names: Vec<&str> = DEQUANT_TYPES.iter().map(|t| t.name()).collect();
    names.join(", ")
}

/// Bytes as text when printable ASCII, else as hex.
fn show_bytes(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic()) {
        format!("`{}`", String::from_utf8_lossy(bytes))
    } else {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (headline, detail) = self.0.kind.parts();
        write!(f, "{}: {headline}", self.0.file)?;
        if let Some(offset) = self.0.offset {
            write!(f, " at byte {offset}")?;
        }
        if let Some(reading) = &self.0.reading {
            write!(f, " while reading {reading}")?;
        }
        if let Some(detail) = detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
