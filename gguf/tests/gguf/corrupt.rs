//! Corrupted files: every byte of a valid file flipped, and random multi-byte damage, must give
//! `Ok` or `Err` from `parse`, never a panic (an abort or a huge allocation would also fail the
//! test run).

use kiln_gguf::{parse, tensor_data};

use crate::writer::sample;

/// Parses `bytes`; when that succeeds, slices every tensor's data too.
fn parse_and_slice(bytes: &[u8]) {
    if let Ok(file) = parse(bytes, "t.gguf") {
        for info in &file.tensors {
            tensor_data(&file, bytes, info).expect("parse checked the extent");
        }
        let _ = file.get_str_array("tokens");
        let _ = file.get_u64("llama.block_count");
    }
}

#[test]
fn every_byte_flipped() {
    let bytes = sample().build();
    for pos in 0..bytes.len() {
        for pattern in [0xff, 0x01, 0x80] {
            let mut broken = bytes.clone();
            broken[pos] ^= pattern;
            parse_and_slice(&broken);
        }
        for value in [0x00, 0xff, 0x7f] {
            let mut broken = bytes.clone();
            broken[pos] = value;
            parse_and_slice(&broken);
        }
    }
}

#[test]
fn random_damage() {
    let bytes = sample().build();
    // xorshift64: deterministic, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut broken = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() % broken.len() as u64) as usize;
            broken[pos] = next() as u8;
        }
        let len = if next() % 4 == 0 {
            (next() % broken.len() as u64) as usize
        } else {
            broken.len()
        };
        parse_and_slice(&broken[..len]);
    }
}
