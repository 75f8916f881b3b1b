//! Concrete tensors of the reference interpreter.
//!
//! Floats are held as `f64` whatever their dtype. Under [`Arithmetic::Native`] every value is
//! rounded to its dtype after the op that produces it, so the interpreter reproduces f32 and
//! narrow-type rounding; under [`Arithmetic::Exact`] nothing is rounded (gradient checks by
//! finite differences need that). `i32` and `i64` are held as `i64` (an `i32` result always wraps
//! to 32 bits), `bool` as `bool`.

use crate::dtype::DType;
use half::{bf16, f16};

/// How float values are stored between ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arithmetic {
    /// Rounded to their dtype after every op: what a backend computes.
    #[default]
    Native,
    /// Kept in f64 whatever their dtype: the real-number semantics, up to f64 rounding.
    Exact,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Float(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements at `indices`, in that order.
    pub fn take(&self, indices: &[usize]) -> Data {
        match self {
            Data::Float(v) => Data::Float(indices.iter().map(|&i| v[i]).collect()),
            Data::Int(v) => Data::Int(indices.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(indices.iter().map(|&i| v[i]).collect()),
        }
    }

    /// Appends `other`'s elements (of the same kind).
    pub fn append(&mut self, other: &Data) {
        match (self, other) {
            (Data::Float(a), Data::Float(b)) => a.extend_from_slice(b),
            (Data::Int(a), Data::Int(b)) => a.extend_from_slice(b),
            (Data::Bool(a), Data::Bool(b)) => a.extend_from_slice(b),
            _ => unreachable!("verified same dtypes"),
        }
    }

    /// Data of `dtype` from f64 values (floats as they are, integers truncated toward zero,
    /// bool as `≠ 0`).
    pub fn from_f64(dtype: DType, values: impl IntoIterator<Item = f64>) -> Data {
        match dtype {
            d if d.is_float() => Data::Float(values.into_iter().collect()),
            d if d.is_int() => Data::Int(values.into_iter().map(|v| v as i64).collect()),
            _ => Data::Bool(values.into_iter().map(|v| v != 0.0).collect()),
        }
    }

    /// Element `i` as f64 (bool as 0/1).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::Float(v) => v[i],
            Data::Int(v) => v[i] as f64,
            Data::Bool(v) => v[i] as u8 as f64,
        }
    }
}

impl Tensor {
    /// A tensor with its values rounded to `dtype`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Data) -> Tensor {
        Tensor::with_arithmetic(dtype, shape, data, Arithmetic::Native)
    }

    /// A tensor whose float values are rounded as `arithmetic` says.
    pub fn with_arithmetic(
        dtype: DType,
        shape: Vec<usize>,
        data: Data,
        arithmetic: Arithmetic,
    ) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data does not fill its shape"
        );
        let mut t = Tensor { dtype, shape, data };
        t.round(arithmetic);
        t
    }

    pub fn f32(shape: &[usize], values: Vec<f32>) -> Tensor {
        let values = values.into_iter().map(f64::from).collect();
        Tensor::new(DType::F32, shape.to_vec(), Data::Float(values))
    }

    pub fn i64(shape: &[usize], values: Vec<i64>) -> Tensor {
        Tensor::new(DType::I64, shape.to_vec(), Data::Int(values))
    }

    /// A tensor of `dtype` from f64 values (floats rounded to the type, integers truncated
    /// toward zero, bool as `≠ 0`).
    pub fn from_f64(
        dtype: DType,
        shape: &[usize],
        values: impl IntoIterator<Item = f64>,
    ) -> Tensor {
        Tensor::new(dtype, shape.to_vec(), Data::from_f64(dtype, values))
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.data.len()).map(|i| self.data.get_f64(i)).collect()
    }

    /// Rounds values to what the dtype can hold (floats only under native arithmetic). Narrow
    /// floats round through f32, as a backend computing in f32 rounds them.
    fn round(&mut self, arithmetic: Arithmetic) {
        let native = arithmetic == Arithmetic::Native;
        match (&mut self.data, self.dtype) {
            (Data::Float(v), DType::F32) if native => {
                v.iter_mut().for_each(|x| *x = *x as f32 as f64)
            }
            (Data::Float(v), DType::F16) if native => v
                .iter_mut()
                .for_each(|x| *x = f16::from_f32(*x as f32).to_f64()),
            (Data::Float(v), DType::BF16) if native => v
                .iter_mut()
                .for_each(|x| *x = bf16::from_f32(*x as f32).to_f64()),
            (Data::Int(v), DType::I32) => v.iter_mut().for_each(|x| *x = *x as i32 as i64),
            _ => {}
        }
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
