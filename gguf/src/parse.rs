//! The file's grammar, front to back: magic `GGUF`, version (2 or 3), tensor count, metadata
//! count, the metadata entries, the tensor-info table, then padding up to the data section.
//!
//! Both entry points read through one `Reader` and stop at the end of the tensor-info table:
//! [`read_path`] streams from a `BufReader` over the file and never reads tensor data, [`parse`]
//! reads a byte slice. What a tensor entry must satisfy beyond its encoding (alignment, extent
//! inside the file) is checked by `layout`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{ErrorKind, GgufError};
use crate::file::GgufFile;
use crate::ggml_type::GgmlType;
use crate::layout;
use crate::metadata::{self, MIN_ENTRY_BYTES};
use crate::reader::Reader;
use crate::tensor::TensorInfo;

/// ggml tensors have at most this many dims.
const MAX_DIMS: u32 = 4;

/// The fewest bytes a tensor-info entry takes: name length, dim count, type id, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// Reads the header, metadata and tensor infos of the GGUF file at `path`, streaming; tensor
/// data is not read, only checked to lie inside the file.
pub fn read_path(path: &Path) -> Result<GgufFile, GgufError> {
    let source = path.display().to_string();
    let opening = || "the file".to_string();
    let io_error = |e| GgufError::new(&source, ErrorKind::Io(e)).reading(opening);
    let file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    parse_stream(&mut Reader::new(BufReader::new(file), len, &source))
}

/// Reads the header, metadata and tensor infos of a whole GGUF file held in `bytes`; `source`
/// names the file in errors.
pub fn parse(bytes: &[u8], source: &str) -> Result<GgufFile, GgufError> {
    parse_stream(&mut Reader::new(bytes, bytes.len() as u64, source))
}

fn parse_stream<R: Read>(r: &mut Reader<'_, R>) -> Result<GgufFile, GgufError> {
    let version = read_magic_and_version(r)?;
    let header = |e: GgufError| e.reading(|| "the header".to_string());
    let tensor_count = r
        .count("tensor count", MIN_TENSOR_INFO_BYTES)
        .map_err(header)?;
    let metadata_count = r
        .count("metadata entry count", MIN_ENTRY_BYTES)
        .map_err(header)?;
    let metadata = metadata::read_metadata(r, metadata_count)?;
    let tensors = read_tensor_infos(r, tensor_count)?;
    let alignment = layout::alignment(&metadata, r.source())?;
    let data_offset = layout::data_offset(r.pos(), alignment);
    let file = GgufFile {
        source: r.source().to_string(),
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    };
    for info in &file.tensors {
        layout::extent(&file, info, r.len())?;
    }
    Ok(file)
}

fn read_magic_and_version<R: Read>(r: &mut Reader<'_, R>) -> Result<u32, GgufError> {
    let found = r.up_to(4)?;
    if found != b"GGUF" {
        return Err(GgufError::new(r.source(), ErrorKind::NotGguf { found }));
    }
    let at = r.pos();
    let version = r
        .u32()
        .map_err(|e| e.reading(|| "the version".to_string()))?;
    if !matches!(version, 2 | 3) {
        return Err(r.error(at, ErrorKind::UnsupportedVersion { version }));
    }
    Ok(version)
}

fn read_tensor_infos<R: Read>(
    r: &mut Reader<'_, R>,
    count: u64,
) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::with_capacity(count.min(1024) as usize);
    let mut seen = HashSet::new();
    for index in 0..count {
        let name_at = r.pos();
        let name = r
            .string()
            .map_err(|e| e.reading(|| format!("the name of tensor {index}")))?;
        if !seen.insert(name.clone()) {
            return Err(r.error(name_at, ErrorKind::DuplicateTensor { name }));
        }
        let info = read_tensor_info_rest(r, name.clone())
            .map_err(|e| e.reading(|| format!("tensor `{name}`")))?;
        tensors.push(info);
    }
    Ok(tensors)
}

/// The dim count, dims, type id and offset after a tensor's name.
fn read_tensor_info_rest<R: Read>(
    r: &mut Reader<'_, R>,
    name: String,
) -> Result<TensorInfo, GgufError> {
    let at = r.pos();
    let n_dims = r.u32()?;
    if n_dims > MAX_DIMS {
        return Err(r.error(
            at,
            ErrorKind::TooManyDims {
                n_dims,
                max: MAX_DIMS,
            },
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.u64()?);
    }
    let at = r.pos();
    let id = r.u32()?;
    let ggml_type =
        GgmlType::from_id(id).ok_or_else(|| r.error(at, ErrorKind::UnknownGgmlType { id }))?;
    let offset = r.u64()?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
    })
}
