//! Host tensors: an element type, a shape and 8-byte-aligned storage, the currency of program
//! inputs, outputs, weights and constants.

use crate::manifest::ElemType;

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: ElemType,
    pub shape: Vec<usize>,
    words: Vec<u64>,
}

fn words_for(bytes: usize) -> usize {
    bytes.div_ceil(8)
}

/// An empty `f32` tensor: a placeholder while storage is moved elsewhere.
impl Default for Tensor {
    fn default() -> Tensor {
        Tensor::zeros(ElemType::F32, &[0])
    }
}

impl Tensor {
    pub fn zeros(dtype: ElemType, shape: &[usize]) -> Tensor {
        let numel: usize = shape.iter().product();
        Tensor {
            dtype,
            shape: shape.to_vec(),
            words: vec![0; words_for(numel * dtype.size())],
        }
    }

    /// A tensor whose storage starts with `bytes` (zeros after them); written once, so that
    /// large downloads are not first zeroed.
    pub fn from_bytes(dtype: ElemType, shape: &[usize], bytes: &[u8]) -> Tensor {
        let numel: usize = shape.iter().product();
        let len = words_for(numel * dtype.size());
        assert!(bytes.len() <= len * 8, "more bytes than the tensor holds");
        let whole = bytes.chunks_exact(8);
        let rest = whole.remainder();
        let mut words: Vec<u64> = Vec::with_capacity(len);
        words.extend(whole.map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes"))));
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            words.push(u64::from_ne_bytes(word));
        }
        words.resize(len, 0);
        Tensor {
            dtype,
            shape: shape.to_vec(),
            words,
        }
    }

    pub fn f32(shape: &[usize], values: &[f32]) -> Tensor {
        let mut t = Tensor::zeros(ElemType::F32, shape);
        t.as_f32_mut().copy_from_slice(values);
        t
    }

    pub fn i64(shape: &[usize], values: &[i64]) -> Tensor {
        let mut t = Tensor::zeros(ElemType::I64, shape);
        t.as_i64_mut().copy_from_slice(values);
        t
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage reinterpreted as bytes, within its length.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.byte_len()) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.byte_len();
        // SAFETY: as above, with unique access.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), len) }
    }

    /// The storage pointer handed to kernels.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }

    pub fn as_f32(&self) -> &[f32] {
        assert_eq!(self.dtype, ElemType::F32, "tensor is {}", self.dtype.name());
        // SAFETY: 8-aligned storage of numel f32s.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.numel()) }
    }

    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        assert_eq!(self.dtype, ElemType::F32, "tensor is {}", self.dtype.name());
        let n = self.numel();
        // SAFETY: as above, with unique access.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), n) }
    }

    pub fn as_i64(&self) -> &[i64] {
        assert_eq!(self.dtype, ElemType::I64, "tensor is {}", self.dtype.name());
        // SAFETY: 8-aligned storage of numel i64s.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.numel()) }
    }

    pub fn as_i64_mut(&mut self) -> &mut [i64] {
        assert_eq!(self.dtype, ElemType::I64, "tensor is {}", self.dtype.name());
        let n = self.numel();
        // SAFETY: as above, with unique access.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), n) }
    }

    /// Makes room for `shape` (reusing the storage when it is large enough).
    pub fn resize(&mut self, shape: &[usize]) {
        self.shape = shape.to_vec();
        let need = words_for(self.byte_len());
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes fill the storage from the start, in order, whatever their count; the rest is zero.
    #[test]
    fn from_bytes_keeps_every_byte_and_zeros_the_rest() {
        let bytes: Vec<u8> = (1..=13).collect();
        for given in [0, 1, 7, 8, 9, 13] {
            let t = Tensor::from_bytes(ElemType::Bool, &[13], &bytes[..given]);
            let mut expected = bytes.clone();
            expected[given..].fill(0);
            assert_eq!(t.bytes(), &expected[..], "{given} bytes given");
        }
    }
}
