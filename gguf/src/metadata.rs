//! The metadata section: `count` entries of (key string, value type id, value).
//!
//! Keys are unique (a repeated key is an error at the repeat). Values decode by type id
//! (`ValueType`); an array is an element type id, a u64 count and the elements, and may nest up
//! to `MAX_ARRAY_DEPTH` levels, so a crafted file cannot recurse the stack away. Every count is
//! checked against the bytes left before anything is allocated, and all arrays together may
//! hold at most `MAX_VALUES` elements: a `Value` takes up to 32 bytes in memory for one byte in
//! the file, and this keeps a corrupt count from turning hundreds of MB of tensor data into
//! gigabytes of values. Real tokenizers hold about a million.

use std::collections::HashSet;
use std::io::Read;

use crate::error::{ErrorKind, GgufError};
use crate::reader::Reader;
use crate::value::{Value, ValueType};

/// Arrays of arrays nest at most this deep (llama.cpp writes none).
pub(crate) const MAX_ARRAY_DEPTH: u32 = 16;

/// At most this many array elements in all the metadata.
pub(crate) const MAX_VALUES: u64 = 1 << 23;

/// The fewest bytes a metadata entry takes: key length, type id, a one-byte value.
pub(crate) const MIN_ENTRY_BYTES: u64 = 8 + 4 + 1;

/// Reads `count` metadata entries, in file order.
pub(crate) fn read_metadata<R: Read>(
    r: &mut Reader<'_, R>,
    count: u64,
) -> Result<Vec<(String, Value)>, GgufError> {
    let mut entries = Vec::with_capacity(count.min(1024) as usize);
    let mut seen = HashSet::new();
    let mut budget = MAX_VALUES;
    for index in 0..count {
        let key_at = r.pos();
        let key = r
            .string()
            .map_err(|e| e.reading(|| format!("the key of metadata entry {index}")))?;
        if !seen.insert(key.clone()) {
            return Err(r.error(key_at, ErrorKind::DuplicateKey { key }));
        }
        let value = read_typed_value(r, 0, &mut budget)
            .map_err(|e| e.reading(|| format!("the value of `{key}`")))?;
        entries.push((key, value));
    }
    Ok(entries)
}

/// A value type id, then a value of that type.
fn read_typed_value<R: Read>(
    r: &mut Reader<'_, R>,
    depth: u32,
    budget: &mut u64,
) -> Result<Value, GgufError> {
    let ty = read_type(r)?;
    read_value(r, ty, depth, budget)
}

fn read_type<R: Read>(r: &mut Reader<'_, R>) -> Result<ValueType, GgufError> {
    let at = r.pos();
    let id = r.u32()?;
    ValueType::from_id(id).ok_or_else(|| r.error(at, ErrorKind::UnknownValueType { id }))
}

fn read_value<R: Read>(
    r: &mut Reader<'_, R>,
    ty: ValueType,
    depth: u32,
    budget: &mut u64,
) -> Result<Value, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8()?),
        ValueType::I8 => Value::I8(i8::from_le_bytes(r.bytes()?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(r.bytes()?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.bytes()?)),
        ValueType::U32 => Value::U32(r.u32()?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(r.bytes()?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(r.bytes()?)),
        ValueType::U64 => Value::U64(r.u64()?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.bytes()?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.bytes()?)),
        ValueType::Bool => {
            let at = r.pos();
            match r.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => return Err(r.error(at, ErrorKind::InvalidBool { byte })),
            }
        }
        ValueType::String => Value::String(r.string()?),
        ValueType::Array => Value::Array(read_array(r, depth + 1, budget)?),
    })
}

/// An array's element type, count and elements; `depth` counts this array.
fn read_array<R: Read>(
    r: &mut Reader<'_, R>,
    depth: u32,
    budget: &mut u64,
) -> Result<Vec<Value>, GgufError> {
    let at = r.pos();
    if depth > MAX_ARRAY_DEPTH {
        return Err(r.error(
            at,
            ErrorKind::NestingTooDeep {
                limit: MAX_ARRAY_DEPTH,
            },
        ));
    }
    let ty = read_type(r)?;
    let count = r.count("array count", ty.min_encoded_size())?;
    if count > *budget {
        return Err(r.error(at, ErrorKind::TooManyValues { limit: MAX_VALUES }));
    }
    *budget -= count;
    let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        items.push(read_value(r, ty, depth, budget)?);
    }
    Ok(items)
}
