//! Dequantization against gguf-py 0.19.0: `tests/fixtures/dequant.gguf` (written by
//! `tools/fixtures/make_dequant_fixtures.py`) holds, per type, raw bytes `<TYPE>.raw` and
//! gguf-py's f32 result `<TYPE>.expected`; kiln must match it bit for bit. Also: wrong lengths,
//! partial blocks and unsupported types are errors naming the tensor, never panics.

use std::path::Path;

use kiln_gguf::{
    dequantize, dequantize_tensor, parse, tensor_data, ErrorKind, GgmlType, GgufFile, TensorInfo,
    DEQUANT_TYPES,
};

fn fixture() -> (GgufFile, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dequant.gguf");
    let bytes = std::fs::read(&path).unwrap();
    (parse(&bytes, "dequant.gguf").unwrap(), bytes)
}

fn info(name: &str, ty: GgmlType, numel: u64) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dims: vec![numel],
        ggml_type: ty,
        offset: 0,
    }
}

#[test]
fn every_supported_type_matches_gguf_py_bitwise() {
    let (file, bytes) = fixture();
    for ty in DEQUANT_TYPES {
        let raw = file.tensor(&format!("{ty}.raw")).unwrap();
        assert_eq!(raw.ggml_type, ty);
        let expected = file.tensor(&format!("{ty}.expected")).unwrap();
        let want: Vec<u32> = tensor_data(&file, &bytes, expected)
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let data = tensor_data(&file, &bytes, raw).unwrap();
        let got = dequantize_tensor(&file, raw, data).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                *w,
                "{ty} element {i}: kiln {g}, gguf-py {}",
                f32::from_bits(*w)
            );
        }
        // The slice API gives the same.
        let mut out = vec![f32::NAN; want.len()];
        dequantize(ty, data, &mut out).unwrap();
        assert!(out
            .iter()
            .zip(&got)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn fixture_has_nonzero_values_for_every_type() {
    // Guards against a fixture that would pass trivially.
    let (file, bytes) = fixture();
    for ty in DEQUANT_TYPES {
        let expected = file.tensor(&format!("{ty}.expected")).unwrap();
        let data = tensor_data(&file, &bytes, expected).unwrap();
        let values = dequantize_tensor(&file, expected, data).unwrap();
        let nonzero = values.iter().filter(|v| **v != 0.0).count();
        assert!(nonzero > values.len() / 2, "{ty}: {nonzero} nonzero");
    }
}

#[test]
fn short_or_long_data_is_an_error_for_every_type() {
    for ty in DEQUANT_TYPES {
        let numel = 2 * ty.block_size();
        let len = ty.tensor_bytes(numel).unwrap() as usize;
        for n in [0, 1, len - 1, len + 1] {
            let data = vec![0x55; n];
            let mut out = vec![0.0; numel as usize];
            let err = dequantize(ty, &data, &mut out).unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::DataLength { found, .. } if *found == n as u64),
                "{ty} with {n} bytes: {err}"
            );
        }
    }
}

#[test]
fn wrong_length_error_names_the_file_tensor_and_sizes() {
    let (file, _) = fixture();
    let err =
        dequantize_tensor(&file, &info("blk.0.w", GgmlType::Q4_K, 512), &[0; 287]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dequant.gguf: tensor data has the wrong length while reading tensor `blk.0.w` \
         (expected 288 bytes for 512 Q4_K elements, found 287)"
    );
}

#[test]
fn partial_block_is_an_error() {
    let mut out = vec![0.0; 33];
    let err = dequantize(GgmlType::Q8_0, &[0; 34], &mut out).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::PartialBlock { numel: 33, .. }),
        "{err}"
    );
}

#[test]
fn unsupported_type_names_the_type_and_tensor() {
    let (file, _) = fixture();
    let err =
        dequantize_tensor(&file, &info("tok_embd", GgmlType::Q5_K, 256), &[0; 176]).unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::DequantUnsupported {
            ggml_type: GgmlType::Q5_K
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "dequant.gguf: dequantizing Q5_K is not supported yet while reading tensor `tok_embd`"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K"),
        "{msg}"
    );
}

#[test]
fn huge_element_count_is_an_error_not_an_allocation() {
    let (file, _) = fixture();
    let err = dequantize_tensor(&file, &info("big", GgmlType::F32, 1 << 40), &[0; 16]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::DataLength { .. }), "{err}");
}

#[test]
fn empty_tensor_is_empty() {
    let (file, _) = fixture();
    let got = dequantize_tensor(&file, &info("e", GgmlType::Q6_K, 0), &[]).unwrap();
    assert!(got.is_empty());
}
