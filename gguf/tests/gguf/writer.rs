//! A test-only GGUF writer: builds little-endian GGUF bytes from values, tensor infos and data,
//! independently of the reader (type ids and layout are spelled out here again). It writes only
//! what it is given, so tests can also write broken files through the `raw` helpers.

use kiln_gguf::Value;

/// Appends little-endian primitives and GGUF strings to a byte buffer.
#[derive(Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }

    /// The header: magic, version, tensor count, metadata count.
    pub fn header(&mut self, version: u32, tensors: u64, entries: u64) -> &mut Self {
        self.raw(b"GGUF").u32(version).u64(tensors).u64(entries)
    }

    /// A value's bytes, without its type id.
    pub fn value(&mut self, value: &Value) -> &mut Self {
        match value {
            Value::U8(v) => self.raw(&v.to_le_bytes()),
            Value::I8(v) => self.raw(&v.to_le_bytes()),
            Value::U16(v) => self.raw(&v.to_le_bytes()),
            Value::I16(v) => self.raw(&v.to_le_bytes()),
            Value::U32(v) => self.raw(&v.to_le_bytes()),
            Value::I32(v) => self.raw(&v.to_le_bytes()),
            Value::U64(v) => self.raw(&v.to_le_bytes()),
            Value::I64(v) => self.raw(&v.to_le_bytes()),
            Value::F32(v) => self.raw(&v.to_le_bytes()),
            Value::F64(v) => self.raw(&v.to_le_bytes()),
            Value::Bool(v) => self.raw(&[u8::from(*v)]),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                // An empty array is written as an array of u8.
                let elem = items.first().map_or(0, type_id);
                assert!(items.iter().all(|i| type_id(i) == elem), "mixed array");
                self.u32(elem).u64(items.len() as u64);
                for item in items {
                    self.value(item);
                }
                self
            }
        }
    }

    /// A metadata entry: key, type id, value.
    pub fn entry(&mut self, key: &str, value: &Value) -> &mut Self {
        self.string(key).u32(type_id(value)).value(value)
    }

    /// A tensor-info entry: name, dim count, dims, type id, offset.
    pub fn tensor_info(
        &mut self,
        name: &str,
        dims: &[u64],
        type_id: u32,
        offset: u64,
    ) -> &mut Self {
        self.string(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }

    /// Zero bytes up to a multiple of `alignment`.
    pub fn pad_to(&mut self, alignment: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }
}

/// GGUF's value type id of `value`.
pub fn type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A tensor for [`Gguf`]: name, dims (GGUF order), ggml type id, data.
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

/// A whole file: metadata and tensors, laid out with the data section aligned and each
/// tensor's data at the next aligned offset.
pub struct Gguf {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

impl Gguf {
    pub fn new() -> Gguf {
        Gguf {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, value: Value) -> Gguf {
        self.metadata.push((key.to_string(), value));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Gguf {
        let t = Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            type_id,
            data,
        };
        self.tensors.push(t);
        self
    }

    /// `general.alignment` when set as a u32 power of two, else 32.
    pub fn alignment(&self) -> usize {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as usize,
            _ => 32,
        }
    }

    /// The offsets (relative to the data section) the tensors' data get.
    pub fn offsets(&self) -> Vec<u64> {
        let align = self.alignment();
        let mut at = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            at = at.div_ceil(align) * align;
            offsets.push(at as u64);
            at += t.data.len();
        }
        offsets
    }

    /// The file's bytes, and the byte where its data section starts.
    pub fn build_with_data_offset(&self) -> (Vec<u8>, usize) {
        let mut b = Bytes::default();
        b.header(
            self.version,
            self.tensors.len() as u64,
            self.metadata.len() as u64,
        );
        for (k, v) in &self.metadata {
            b.entry(k, v);
        }
        let offsets = self.offsets();
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            b.tensor_info(&t.name, &t.dims, t.type_id, offset);
        }
        let align = self.alignment();
        b.pad_to(align);
        let data_offset = b.0.len();
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            b.0.resize(data_offset + offset as usize, 0);
            b.raw(&t.data);
        }
        (b.0, data_offset)
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_data_offset().0
    }
}

/// A small file that uses every value type, nested arrays and two tensors with data.
pub fn sample() -> Gguf {
    Gguf::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("general.name", Value::String("tiny ünïcode".into()))
        .kv("llama.block_count", Value::U32(2))
        .kv("u8", Value::U8(200))
        .kv("i8", Value::I8(-100))
        .kv("u16", Value::U16(60000))
        .kv("i16", Value::I16(-30000))
        .kv("i32", Value::I32(-2_000_000_000))
        .kv("u64", Value::U64(u64::MAX))
        .kv("i64", Value::I64(i64::MIN))
        .kv("f32", Value::F32(1e-5))
        .kv("f64", Value::F64(-0.25))
        .kv("bool", Value::Bool(true))
        .kv(
            "tokens",
            Value::Array(vec![Value::String("<s>".into()), Value::String("a".into())]),
        )
        .kv(
            "scores",
            Value::Array(vec![Value::F32(0.5), Value::F32(-1.0)]),
        )
        .kv(
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::I16(1), Value::I16(-2)]),
                Value::Array(vec![Value::I16(3)]),
            ]),
        )
        .kv("empty", Value::Array(vec![]))
        .tensor("tok_embd.weight", &[4, 3], 0, (0..48).collect())
        .tensor(
            "blk.0.q.weight",
            &[32, 2],
            2,
            (0..36).map(|b| b as u8 ^ 0x5a).collect(),
        )
}
