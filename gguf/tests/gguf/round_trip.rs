//! Files built by the writer read back to what was written: every value type, arrays and
//! nested arrays, metadata order, tensor infos, alignment, data offset and tensor data.

use kiln_gguf::{parse, read_path, tensor_data, GgmlType, GgufFile, TensorInfo, Value};

use crate::writer::{sample, Gguf};

fn read(bytes: &[u8]) -> GgufFile {
    parse(bytes, "test.gguf").unwrap_or_else(|e| panic!("{e}"))
}

/// One value written under `key` reads back equal.
fn check_value(value: Value) {
    let bytes = Gguf::new().kv("k", value.clone()).build();
    let file = read(&bytes);
    assert_eq!(file.metadata, vec![("k".to_string(), value)]);
}

#[test]
fn every_scalar_type_round_trips() {
    for value in [
        Value::U8(0),
        Value::U8(255),
        Value::I8(-128),
        Value::U16(65535),
        Value::I16(-32768),
        Value::U32(u32::MAX),
        Value::I32(i32::MIN),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F32(3.5),
        Value::F32(f32::INFINITY),
        Value::F64(1e300),
        Value::Bool(false),
        Value::Bool(true),
        Value::String(String::new()),
        Value::String("héllo ✓".into()),
    ] {
        check_value(value);
    }
}

#[test]
fn arrays_of_every_type_round_trip() {
    let scalars = [
        Value::U8(1),
        Value::I8(-1),
        Value::U16(2),
        Value::I16(-2),
        Value::U32(3),
        Value::I32(-3),
        Value::U64(4),
        Value::I64(-4),
        Value::F32(0.5),
        Value::F64(0.25),
        Value::Bool(true),
        Value::String("x".into()),
    ];
    for value in scalars {
        check_value(Value::Array(vec![value.clone(), value.clone(), value]));
    }
    check_value(Value::Array(vec![]));
}

#[test]
fn nested_arrays_round_trip() {
    let strings =
        |xs: &[&str]| Value::Array(xs.iter().map(|s| Value::String(s.to_string())).collect());
    check_value(Value::Array(vec![
        strings(&["a", "bc"]),
        strings(&[]),
        strings(&["d"]),
    ]));
    let deep = (0..10).fold(Value::U32(7), |inner, _| Value::Array(vec![inner]));
    check_value(deep);
}

#[test]
fn sample_reads_back_in_file_order() {
    let gguf = sample();
    let (bytes, data_offset) = gguf.build_with_data_offset();
    let file = read(&bytes);
    assert_eq!(file.version, 3);
    assert_eq!(file.source, "test.gguf");
    assert_eq!(file.metadata, gguf.metadata);
    assert_eq!(file.alignment, 32);
    assert_eq!(file.data_offset, data_offset as u64);
    assert_eq!(file.data_offset % 32, 0);
    assert_eq!(
        file.tensors,
        vec![
            TensorInfo {
                name: "tok_embd.weight".into(),
                dims: vec![4, 3],
                ggml_type: GgmlType::F32,
                offset: 0,
            },
            TensorInfo {
                name: "blk.0.q.weight".into(),
                dims: vec![32, 2],
                ggml_type: GgmlType::Q4_0,
                offset: 64,
            },
        ]
    );
    assert_eq!(file.tensors[0].shape(), vec![3, 4]);
    assert_eq!(file.tensors[1].shape(), vec![2, 32]);
    for (info, t) in file.tensors.iter().zip(&gguf.tensors) {
        assert_eq!(tensor_data(&file, &bytes, info).unwrap(), &t.data[..]);
    }
    assert_eq!(file.tensor("blk.0.q.weight"), Some(&file.tensors[1]));
    assert_eq!(file.tensor("nope"), None);
}

#[test]
fn version_2_reads_like_version_3() {
    let mut gguf = sample();
    gguf.version = 2;
    let file = read(&gguf.build());
    assert_eq!(file.version, 2);
    assert_eq!(file.metadata, sample().metadata);
}

#[test]
fn alignment_comes_from_metadata() {
    for align in [1u32, 8, 64, 256] {
        let gguf = Gguf::new()
            .kv("general.alignment", Value::U32(align))
            .tensor("a", &[3], 0, vec![1; 12])
            .tensor("b", &[5], 26, vec![2; 20]);
        let (bytes, data_offset) = gguf.build_with_data_offset();
        let file = read(&bytes);
        assert_eq!(file.alignment, u64::from(align));
        assert_eq!(file.data_offset, data_offset as u64);
        assert_eq!(file.data_offset % u64::from(align), 0);
        let offsets: Vec<u64> = file.tensors.iter().map(|t| t.offset).collect();
        assert_eq!(offsets, gguf.offsets());
        assert_eq!(
            tensor_data(&file, &bytes, &file.tensors[1]).unwrap(),
            &[2; 20][..]
        );
    }
}

#[test]
fn file_without_tensors_or_metadata() {
    let file = read(&Gguf::new().build());
    assert!(file.metadata.is_empty() && file.tensors.is_empty());
    assert_eq!(file.data_offset, 32);
}

#[test]
fn read_path_streams_the_same_file() {
    let bytes = sample().build();
    let path = std::env::temp_dir().join(format!("kiln-gguf-test-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let from_path = read_path(&path);
    std::fs::remove_file(&path).unwrap();
    let from_path = from_path.unwrap();
    let from_bytes = parse(&bytes, &path.display().to_string()).unwrap();
    assert_eq!(from_path, from_bytes);
}

#[test]
fn typed_getters() {
    let file = read(&sample().build());
    assert_eq!(file.get("u8"), Some(&Value::U8(200)));
    assert_eq!(file.get("missing"), None);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(file.get_u64("u8").unwrap(), 200);
    assert_eq!(file.get_u64("u16").unwrap(), 60000);
    assert_eq!(file.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(file.get_f64("f32").unwrap(), f64::from(1e-5f32));
    assert_eq!(file.get_f64("f64").unwrap(), -0.25);
    assert_eq!(file.get_f64("i8").unwrap(), -100.0);
    assert!(file.get_bool("bool").unwrap());
    assert_eq!(file.get_str_array("tokens").unwrap(), vec!["<s>", "a"]);
    assert_eq!(
        file.get_array("scores").unwrap(),
        &[Value::F32(0.5), Value::F32(-1.0)]
    );
    assert_eq!(file.get_array("empty").unwrap(), &[]);
    assert_eq!(file.get_str_array("empty").unwrap(), Vec::<&str>::new());
}

#[test]
fn typed_getters_name_key_and_expectation() {
    let file = read(&sample().build());
    let err = |r: Result<(), kiln_gguf::GgufError>| r.unwrap_err().to_string();
    assert_eq!(
        err(file.get_u64("i8").map(drop)),
        "test.gguf: metadata `i8` has the wrong type (expected a non-negative integer, found i8 -100)"
    );
    assert_eq!(
        err(file.get_str("llama.block_count").map(drop)),
        "test.gguf: metadata `llama.block_count` has the wrong type (expected a string, found u32 2)"
    );
    assert_eq!(
        err(file.get_bool("nope").map(drop)),
        "test.gguf: missing metadata key `nope`"
    );
    assert_eq!(
        err(file.get_str_array("scores").map(drop)),
        "test.gguf: metadata `scores` has the wrong type (expected an array of strings, found f32 \
         0.5 at index 0)"
    );
    assert_eq!(
        err(file.get_str_array("bool").map(drop)),
        "test.gguf: metadata `bool` has the wrong type (expected an array of strings, found bool true)"
    );
    assert!(err(file.get_f64("general.name").map(drop)).contains("expected a number"));
    assert!(err(file.get_array("u8").map(drop)).contains("expected an array, found u8 200"));
    assert!(err(file.get_u64("f32").map(drop)).contains("`f32`"));
}

#[test]
fn value_type_names() {
    let names: Vec<&str> = [
        Value::U8(0),
        Value::I8(0),
        Value::U16(0),
        Value::I16(0),
        Value::U32(0),
        Value::I32(0),
        Value::U64(0),
        Value::I64(0),
        Value::F32(0.0),
        Value::F64(0.0),
        Value::Bool(false),
        Value::String(String::new()),
        Value::Array(vec![]),
    ]
    .iter()
    .map(Value::type_name)
    .collect();
    assert_eq!(
        names,
        [
            "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool", "string",
            "array"
        ]
    );
}

#[test]
fn ggml_type_table() {
    let expected: [(GgmlType, u32, u64, u64); 20] = [
        (GgmlType::F32, 0, 1, 4),
        (GgmlType::F16, 1, 1, 2),
        (GgmlType::Q4_0, 2, 32, 18),
        (GgmlType::Q4_1, 3, 32, 20),
        (GgmlType::Q5_0, 6, 32, 22),
        (GgmlType::Q5_1, 7, 32, 24),
        (GgmlType::Q8_0, 8, 32, 34),
        (GgmlType::Q8_1, 9, 32, 36),
        (GgmlType::Q2_K, 10, 256, 84),
        (GgmlType::Q3_K, 11, 256, 110),
        (GgmlType::Q4_K, 12, 256, 144),
        (GgmlType::Q5_K, 13, 256, 176),
        (GgmlType::Q6_K, 14, 256, 210),
        (GgmlType::Q8_K, 15, 256, 292),
        (GgmlType::I8, 24, 1, 1),
        (GgmlType::I16, 25, 1, 2),
        (GgmlType::I32, 26, 1, 4),
        (GgmlType::I64, 27, 1, 8),
        (GgmlType::F64, 28, 1, 8),
        (GgmlType::BF16, 30, 1, 2),
    ];
    for (t, id, block, size) in expected {
        assert_eq!(
            (t.id(), t.block_size(), t.type_size()),
            (id, block, size),
            "{t}"
        );
        assert_eq!(GgmlType::from_id(id), Some(t));
        assert_eq!(t.to_string(), format!("{t:?}"));
    }
    let known: Vec<u32> = expected.iter().map(|e| e.1).collect();
    for id in 0..64 {
        assert_eq!(
            GgmlType::from_id(id).is_some(),
            known.contains(&id),
            "id {id}"
        );
    }
    assert_eq!(GgmlType::Q4_0.tensor_bytes(64), Some(36));
    assert_eq!(GgmlType::Q4_0.tensor_bytes(33), None);
    assert_eq!(GgmlType::Q6_K.tensor_bytes(512), Some(420));
    assert_eq!(GgmlType::F32.tensor_bytes(0), Some(0));
    assert_eq!(GgmlType::F64.tensor_bytes(u64::MAX), None);
}
