//! Broken files give errors that name the file, the byte, what was being read and what was
//! expected; none panics or allocates for a length the file cannot hold.

use kiln_gguf::{parse, read_path, tensor_data, ErrorKind, GgufError, Value};

use crate::writer::{sample, Bytes, Gguf};

fn parse_err(bytes: &[u8]) -> GgufError {
    match parse(bytes, "t.gguf") {
        Ok(file) => panic!("expected an error, parsed {file:?}"),
        Err(e) => e,
    }
}

/// Parsing `bytes` fails with exactly the message `expect`.
fn check(bytes: &[u8], expect: &str) {
    assert_eq!(parse_err(bytes).to_string(), expect);
}

/// A file whose only metadata entry is `key` with raw type id and value bytes.
fn one_entry(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut b = Bytes::default();
    b.header(3, 0, 1).string(key).u32(type_id).raw(value);
    b.0
}

/// A file whose only tensor info is as given, then padding and `data_len` bytes of data.
fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = Bytes::default();
    b.header(3, 1, 0)
        .tensor_info("w", dims, type_id, offset)
        .pad_to(32);
    b.0.resize(b.0.len() + data_len, 0);
    b.0
}

#[test]
fn empty_file() {
    check(
        b"",
        "t.gguf: not a GGUF file (expected magic `GGUF` at byte 0, found an empty file)",
    );
}

#[test]
fn wrong_magic() {
    check(
        b"GGML\x03\0\0\0",
        "t.gguf: not a GGUF file (expected magic `GGUF` at byte 0, found `GGML`)",
    );
    check(
        b"\x89PNG\r\n",
        "t.gguf: not a GGUF file (expected magic `GGUF` at byte 0, found bytes 89 50 4e 47)",
    );
    check(
        b"GG",
        "t.gguf: not a GGUF file (expected magic `GGUF` at byte 0, found only 2 bytes: `GG`)",
    );
}

#[test]
fn unsupported_versions() {
    let mut b = Bytes::default();
    b.header(1, 0, 0);
    check(
        &b.0,
        "t.gguf: unsupported GGUF version 1 at byte 4 (expected 2 or 3; version 1 used 32-bit \
         lengths and is not read)",
    );
    let mut b = Bytes::default();
    b.raw(b"GGUF").raw(&3u32.to_be_bytes()).raw(&[0; 16]);
    check(
        &b.0,
        "t.gguf: unsupported GGUF version 50331648 at byte 4 (expected 2 or 3; the file looks \
         big-endian, which is not read)",
    );
    let mut b = Bytes::default();
    b.header(4, 0, 0);
    assert!(matches!(
        parse_err(&b.0).kind(),
        ErrorKind::UnsupportedVersion { version: 4 }
    ));
}

#[test]
fn truncated_value_names_key_and_byte() {
    let full = one_entry("llama.block_count", 4, &2u32.to_le_bytes());
    let e = parse_err(&full[..full.len() - 4]);
    assert_eq!((e.file(), e.offset()), ("t.gguf", Some(53)));
    assert_eq!(e.what_was_read(), Some("the value of `llama.block_count`"));
    assert!(matches!(
        e.kind(),
        ErrorKind::Truncated {
            needed: 4,
            available: 0
        }
    ));
    // 24 header bytes, 8 + 17 key bytes, 4 type bytes: the value starts at byte 53.
    check(
        &full[..full.len() - 4],
        "t.gguf: truncated at byte 53 while reading the value of `llama.block_count` (expected 4 \
         more bytes, found 0)",
    );
    check(
        &full[..full.len() - 1],
        "t.gguf: truncated at byte 53 while reading the value of `llama.block_count` (expected 4 \
         more bytes, found 3)",
    );
    check(
        &full[..30],
        "t.gguf: truncated at byte 16 while reading the header (metadata entry count 1 needs at \
         least 13 more bytes, found 6)",
    );
    check(
        &full[..37],
        "t.gguf: truncated at byte 24 while reading the key of metadata entry 0 (string length 17 \
         needs 17 more bytes, found 5)",
    );
    check(
        &full[..10],
        "t.gguf: truncated at byte 8 while reading the header (expected 8 more bytes, found 2)",
    );
    check(
        &full[..6],
        "t.gguf: truncated at byte 4 while reading the version (expected 4 more bytes, found 2)",
    );
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error() {
    let bytes = sample().build();
    parse(&bytes, "t.gguf").unwrap();
    for len in 0..bytes.len() {
        let e = parse_err(&bytes[..len]);
        let message = e.to_string();
        assert!(message.starts_with("t.gguf: "), "{message}");
        assert!(
            matches!(
                e.kind(),
                ErrorKind::NotGguf { .. }
                    | ErrorKind::Truncated { .. }
                    | ErrorKind::TooLong { .. }
                    | ErrorKind::TensorOutOfBounds { .. }
            ),
            "prefix {len}: {message}"
        );
    }
}

#[test]
fn absurd_string_lengths() {
    let mut b = Bytes::default();
    b.header(3, 0, 1).u64(1 << 60).raw(&[b'x'; 20]);
    check(
        &b.0,
        "t.gguf: absurd string length 1152921504606846976 at byte 24 while reading the key of \
         metadata entry 0 (only 20 bytes remain in the file)",
    );
    let bytes = one_entry("k", 8, &(1u64 << 60).to_le_bytes());
    check(
        &bytes,
        "t.gguf: absurd string length 1152921504606846976 at byte 37 while reading the value of \
         `k` (only 0 bytes remain in the file)",
    );
    let mut b = Bytes::default();
    b.header(3, 1, 0).u64(u64::MAX).raw(&[0; 40]);
    let e = parse_err(&b.0);
    assert!(matches!(
        e.kind(),
        ErrorKind::TooLong {
            count: u64::MAX,
            ..
        }
    ));
    assert_eq!(e.what_was_read(), Some("the name of tensor 0"));
}

#[test]
fn absurd_counts() {
    let mut value = Bytes::default();
    value.u32(0).u64(1 << 60).raw(&[1; 10]);
    check(
        &one_entry("a", 9, &value.0),
        "t.gguf: absurd array count 1152921504606846976 at byte 41 while reading the value of `a` \
         (only 10 bytes remain in the file)",
    );
    // An array of strings needs at least 8 bytes an element: a count the file as a whole could
    // hold reads as a truncation.
    let mut value = Bytes::default();
    value.u32(8).u64(3).raw(&[0; 16]);
    check(
        &one_entry("a", 9, &value.0),
        "t.gguf: truncated at byte 41 while reading the value of `a` (array count 3 needs at \
         least 24 more bytes, found 16)",
    );
    let mut b = Bytes::default();
    b.header(3, 0, 1 << 60);
    check(
        &b.0,
        "t.gguf: absurd metadata entry count 1152921504606846976 at byte 16 while reading the \
         header (each takes at least 13 bytes and only 0 bytes remain in the file)",
    );
    let mut b = Bytes::default();
    b.header(3, u64::MAX, 0);
    assert!(parse_err(&b.0)
        .to_string()
        .contains("absurd tensor count 18446744073709551615 at byte 8"));
}

#[test]
fn too_many_array_elements_in_all() {
    let count = (1u64 << 23) + 1;
    let mut value = Bytes::default();
    value.u32(0).u64(count);
    value.0.resize(value.0.len() + count as usize, 0);
    let e = parse_err(&one_entry("big", 9, &value.0));
    assert!(
        matches!(e.kind(), ErrorKind::TooManyValues { limit: 8388608 }),
        "{e}"
    );
}

#[test]
fn unknown_value_types() {
    check(
        &one_entry("k", 13, &[0; 8]),
        "t.gguf: unknown metadata value type id 13 at byte 33 while reading the value of `k` \
         (expected 0 to 12)",
    );
    let mut value = Bytes::default();
    value.u32(99).u64(1).raw(&[0; 8]);
    check(
        &one_entry("k", 9, &value.0),
        "t.gguf: unknown metadata value type id 99 at byte 37 while reading the value of `k` \
         (expected 0 to 12)",
    );
}

#[test]
fn invalid_strings_and_bools() {
    let mut b = Bytes::default();
    b.header(3, 0, 1).u64(3).raw(b"a\xffb").u32(0).raw(&[0]);
    check(
        &b.0,
        "t.gguf: string is not UTF-8 at byte 24 while reading the key of metadata entry 0 \
         (invalid byte at index 1 of the string)",
    );
    check(
        &one_entry("flag", 7, &[2]),
        "t.gguf: invalid bool at byte 40 while reading the value of `flag` (expected byte 0 or 1, \
         found 2)",
    );
}

#[test]
fn deep_nesting_is_refused() {
    let ok = (0..16).fold(Value::U8(1), |inner, _| Value::Array(vec![inner]));
    parse(&Gguf::new().kv("k", ok).build(), "t.gguf").unwrap();
    let deep = Value::Array(vec![
        (0..16).fold(Value::U8(1), |inner, _| Value::Array(vec![inner]))
    ]);
    let e = parse_err(&Gguf::new().kv("k", deep).build());
    assert!(
        matches!(e.kind(), ErrorKind::NestingTooDeep { limit: 16 }),
        "{e}"
    );
    assert_eq!(e.what_was_read(), Some("the value of `k`"));
}

#[test]
fn duplicates_are_refused() {
    let bytes = Gguf::new()
        .kv("k", Value::U8(1))
        .kv("k", Value::U8(2))
        .build();
    check(&bytes, "t.gguf: duplicate metadata key `k` at byte 38");
    let bytes = Gguf::new()
        .tensor("w", &[1], 0, vec![0; 4])
        .tensor("w", &[1], 0, vec![0; 4])
        .build();
    assert!(matches!(
        parse_err(&bytes).kind(),
        ErrorKind::DuplicateTensor { .. }
    ));
}

#[test]
fn bad_alignments() {
    for (value, found) in [
        (Value::U32(0), "u32 0"),
        (Value::U32(3), "u32 3"),
        (Value::U64(32), "u64 32"),
        (Value::String("32".into()), "string \"32\""),
    ] {
        check(
            &Gguf::new().kv("general.alignment", value).build(),
            &format!(
                "t.gguf: invalid `general.alignment` while reading metadata `general.alignment` \
                 (expected a non-zero power of two stored as u32, found {found})"
            ),
        );
    }
}

#[test]
fn bad_tensor_infos() {
    check(
        &one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4),
        "t.gguf: tensor with 5 dimensions at byte 33 while reading tensor `w` (expected at most 4)",
    );
    let e = parse_err(&one_tensor(&[32], 4, 0, 64));
    assert!(matches!(e.kind(), ErrorKind::UnknownGgmlType { id: 4 }));
    let message = e.to_string();
    assert!(
        message.starts_with("t.gguf: unknown ggml type id 4 at byte 45 while reading tensor `w` (expected one of F32=0, F16=1, Q4_0=2,"),
        "{message}"
    );
    check(
        &one_tensor(&[33], 2, 0, 64),
        "t.gguf: tensor is not a whole number of blocks while reading tensor `w` (expected a \
         multiple of 32 elements for Q4_0, found 33)",
    );
    check(
        &one_tensor(&[1 << 32, 1 << 32], 0, 0, 0),
        "t.gguf: tensor size overflows 64 bits while reading tensor `w` (dims [4294967296, \
         4294967296])",
    );
    check(
        &one_tensor(&[1 << 62], 0, 0, 0),
        "t.gguf: tensor size overflows 64 bits while reading tensor `w` (dims [4611686018427387904])",
    );
}

#[test]
fn tensor_data_out_of_bounds_or_misaligned() {
    // Header 24, info 8+1 + 4 + 8 + 4 + 8 = 33: the data section starts at byte 64.
    check(
        &one_tensor(&[4], 0, 0, 15),
        "t.gguf: tensor data past the end of the file while reading tensor `w` (data spans bytes \
         64..80, the file has 79 bytes)",
    );
    check(
        &one_tensor(&[4], 0, 32, 16),
        "t.gguf: tensor data past the end of the file while reading tensor `w` (data spans bytes \
         96..112, the file has 80 bytes)",
    );
    check(
        &one_tensor(&[4], 0, u64::MAX - 31, 16),
        "t.gguf: tensor size overflows 64 bits while reading tensor `w` (dims [4])",
    );
    check(
        &one_tensor(&[4], 0, 4, 20),
        "t.gguf: misaligned tensor data offset 4 while reading tensor `w` (expected a multiple of \
         the alignment 32)",
    );
}

#[test]
fn tensor_data_checks_the_bytes_it_is_given() {
    let bytes = sample().build();
    let file = parse(&bytes, "t.gguf").unwrap();
    let last = file.tensors.last().unwrap();
    let e = tensor_data(&file, &bytes[..bytes.len() - 1], last).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::TensorOutOfBounds { .. }),
        "{e}"
    );
    let mut odd = file.clone();
    odd.alignment = 0;
    assert!(tensor_data(&odd, &bytes, last).is_err());
    odd.data_offset = u64::MAX;
    odd.alignment = 32;
    assert!(tensor_data(&odd, &bytes, last).is_err());
}

#[test]
fn read_path_names_the_missing_file() {
    let path = std::path::Path::new("/nonexistent/kiln/model.gguf");
    let e = read_path(path).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Io(_)));
    let message = e.to_string();
    assert!(
        message.starts_with("/nonexistent/kiln/model.gguf: I/O error while reading the file ("),
        "{message}"
    );
    assert!(std::error::Error::source(&e).is_some());
}
