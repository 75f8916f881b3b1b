//! The data section: alignment, where it starts, and where each tensor's bytes lie.
//!
//! The alignment is `general.alignment` (a u32, a non-zero power of two) or 32 when absent. The
//! data section starts at the end of the tensor-info table rounded up to the alignment; a
//! tensor's bytes start at `data_offset + offset`, with `offset` a multiple of the alignment,
//! and span `GgmlType::tensor_bytes(numel)` bytes, all inside the file. [`tensor_data`] slices
//! them out of the whole file's bytes after checking the same.

use crate::error::{ErrorKind, GgufError};
use crate::file::GgufFile;
use crate::tensor::TensorInfo;
use crate::value::Value;

/// The alignment when the metadata does not say.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key that sets the alignment.
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";

/// The file's alignment, from its metadata.
pub(crate) fn alignment(metadata: &[(String, Value)], source: &str) -> Result<u64, GgufError> {
    let Some((_, value)) = metadata.iter().find(|(key, _)| key == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value {
        Value::U32(a) if a.is_power_of_two() => Ok(u64::from(*a)),
        other => {
            let found = other.describe();
            Err(GgufError::new(source, ErrorKind::BadAlignment { found })
                .reading(|| format!("metadata `{ALIGNMENT_KEY}`")))
        }
    }
}

/// `end_of_infos` rounded up to `alignment`, a power of two.
pub(crate) fn data_offset(end_of_infos: u64, alignment: u64) -> u64 {
    // end_of_infos is at most the file's length, far below u64::MAX - alignment.
    end_of_infos.div_ceil(alignment).saturating_mul(alignment)
}

/// The file bytes `start..end` of `info`'s data, checked against a file of `file_len` bytes.
pub(crate) fn extent(
    file: &GgufFile,
    info: &TensorInfo,
    file_len: u64,
) -> Result<(u64, u64), GgufError> {
    let fail =
        |kind| GgufError::new(&file.source, kind).reading(|| format!("tensor `{}`", info.name));
    // checked_rem: a hand-built GgufFile may carry alignment 0.
    if info.offset.checked_rem(file.alignment) != Some(0) {
        return Err(fail(ErrorKind::Misaligned {
            offset: info.offset,
            alignment: file.alignment,
        }));
    }
    let numel = info.numel().ok_or_else(|| {
        fail(ErrorKind::SizeOverflow {
            dims: info.dims.clone(),
        })
    })?;
    if numel % info.ggml_type.block_size() != 0 {
        return Err(fail(ErrorKind::PartialBlock {
            numel,
            ggml_type: info.ggml_type,
        }));
    }
    let overflow = || {
        fail(ErrorKind::SizeOverflow {
            dims: info.dims.clone(),
        })
    };
    let bytes = info.ggml_type.tensor_bytes(numel).ok_or_else(overflow)?;
    let start = file
        .data_offset
        .checked_add(info.offset)
        .ok_or_else(overflow)?;
    let end = start.checked_add(bytes).ok_or_else(overflow)?;
    if end > file_len {
        return Err(fail(ErrorKind::TensorOutOfBounds {
            start,
            end,
            file_len,
        }));
    }
    Ok((start, end))
}

/// The bytes of `info`'s data within `bytes`, the whole file that `file` was read from.
pub fn tensor_data<'a>(
    file: &GgufFile,
    bytes: &'a [u8],
    info: &TensorInfo,
) -> Result<&'a [u8], GgufError> {
    let (start, end) = extent(file, info, bytes.len() as u64)?;
    // Both are at most bytes.len(), so they fit in usize.
    Ok(&bytes[start as usize..end as usize])
}
