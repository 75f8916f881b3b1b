//! Views: how a kernel reads a value without copying it.
//!
//! A view is a source (a buffer, a splatted constant, or the index ramp of `iota`) read at
//! `offset + Σ idxᵢ·strideᵢ`, with offset and strides as polynomials in the size symbols.
//! `permute`, `broadcast`, `slice` and most `reshape`s are views of their operand, so the
//! transposed weight of a linear layer or a broadcast norm scale is never materialized.
//!
//! Invariant: `dims` and `strides` have equal length; a view of a buffer never reads outside the
//! buffer when the symbols are within their declared maxima (slices stay in range by type
//! inference).

use kiln_ir::DType;
use kiln_runtime::Poly;

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Buffer `i` of the program.
    Buffer(usize),
    /// Every element is this value.
    Splat(f64),
    /// The element is its own linear index `offset + Σ idxᵢ·strideᵢ`.
    Iota,
}

#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub source: Source,
    pub dtype: DType,
    pub offset: Poly,
    pub dims: Vec<Poly>,
    pub strides: Vec<Poly>,
}

/// Row-major strides of `dims`.
pub fn contiguous_strides(dims: &[Poly]) -> Vec<Poly> {
    let mut strides = vec![Poly::constant(1); dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].mul(&dims[i + 1]);
    }
    strides
}

impl View {
    pub fn contiguous(source: Source, dtype: DType, dims: Vec<Poly>) -> View {
        View {
            source,
            dtype,
            offset: Poly::constant(0),
            strides: contiguous_strides(&dims),
            dims,
        }
    }

    pub fn splat(value: f64, dtype: DType, dims: Vec<Poly>) -> View {
        View {
            source: Source::Splat(value),
            dtype,
            offset: Poly::constant(0),
            strides: vec![Poly::constant(0); dims.len()],
            dims,
        }
    }

    pub fn iota(axis: usize, dtype: DType, dims: Vec<Poly>) -> View {
        let strides = (0..dims.len())
            .map(|i| Poly::constant((i == axis) as i64))
            .collect();
        View {
            source: Source::Iota,
            dtype,
            offset: Poly::constant(0),
            dims,
            strides,
        }
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn numel(&self) -> Poly {
        Poly::product(&self.dims)
    }

    pub fn buffer(&self) -> Option<usize> {
        match self.source {
            Source::Buffer(b) => Some(b),
            _ => None,
        }
    }

    pub fn permute(&self, perm: &[usize]) -> View {
        View {
            dims: perm.iter().map(|&p| self.dims[p].clone()).collect(),
            strides: perm.iter().map(|&p| self.strides[p].clone()).collect(),
            ..self.clone()
        }
    }

    /// Numpy-style broadcast to `dims` (right-aligned; size-1 axes stretch with stride 0).
    pub fn broadcast(&self, dims: Vec<Poly>) -> View {
        let pad = dims.len() - self.rank();
        let strides = (0..dims.len())
            .map(|i| match i.checked_sub(pad) {
                Some(j) if !self.dims[j].is_constant(1) => self.strides[j].clone(),
                _ => Poly::constant(0),
            })
            .collect();
        View {
            dims,
            strides,
            ..self.clone()
        }
    }

    pub fn slice(&self, axis: usize, start: &Poly, end: &Poly) -> View {
        let mut view = self.clone();
        view.offset = self.offset.add(&start.mul(&self.strides[axis]));
        view.dims[axis] = end.sub(start);
        view
    }

    /// Whether the elements lie in row-major order from `offset` (axes of size 1 may have any
    /// stride).
    pub fn is_contiguous(&self) -> bool {
        let expected = contiguous_strides(&self.dims);
        self.dims
            .iter()
            .zip(self.strides.iter().zip(&expected))
            .all(|(d, (s, e))| d.is_constant(1) || s == e)
    }

    /// The same elements under a new shape, when no copy is needed: any reshape of a
    /// contiguous view, and one that only inserts or drops axes of size 1 of any view (a cache
    /// at capacity gains an axis for its repeated heads).
    pub fn reshape(&self, dims: Vec<Poly>) -> Option<View> {
        match self.source {
            Source::Splat(v) => Some(View::splat(v, self.dtype, dims)),
            _ if self.is_contiguous() => Some(View {
                strides: contiguous_strides(&dims),
                dims,
                ..self.clone()
            }),
            _ => self.reshape_unit_axes(dims),
        }
    }

    /// [`View::reshape`] when `dims` are this view's axes of size other than 1, in order, with
    /// axes of size 1 inserted or dropped: each kept axis keeps its stride.
    fn reshape_unit_axes(&self, dims: Vec<Poly>) -> Option<View> {
        let mut kept = (0..self.rank()).filter(|&i| !self.dims[i].is_constant(1));
        let mut strides = Vec::with_capacity(dims.len());
        for d in &dims {
            if d.is_constant(1) {
                strides.push(Poly::constant(0));
                continue;
            }
            let i = kept.next().filter(|&i| self.dims[i] == *d)?;
            strides.push(self.strides[i].clone());
        }
        kept.next().is_none().then(|| View {
            dims,
            strides,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strided_view_gains_and_loses_unit_axes_without_a_copy() {
        let p = Poly::constant;
        // Four of eight rows of a buffer at capacity: not contiguous.
        let full = View::contiguous(Source::Buffer(0), DType::F32, vec![p(2), p(8), p(4)]);
        let rows = full.slice(1, &p(0), &p(4));
        let wider = rows.reshape(vec![p(2), p(1), p(4), p(4)]).unwrap();
        assert_eq!(wider.strides, [p(32), p(0), p(4), p(1)]);
        assert_eq!(wider.reshape(vec![p(2), p(4), p(4)]).unwrap(), rows);
        assert_eq!(rows.reshape(vec![p(8), p(4)]), None, "merging needs a copy");
    }
}
