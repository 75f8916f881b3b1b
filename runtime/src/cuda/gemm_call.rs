//! A step's [`LibraryGemm`] at the bound symbols and buffer addresses, as cuBLASLt takes it: a
//! [`Call`] of column-major matrices, or `None` where the library cannot take the views (the
//! step's kernel then runs).
//!
//! cuBLASLt is column-major, kiln row-major: a row-major `X[R, C]` with a unit column stride is
//! the column-major `Xᵀ` (`C × R`, leading dimension the row stride), and one with a unit row
//! stride is the column-major `X`, used transposed. So the call computes
//! `outᵀ (n × m) = bᵀ (n × k) · aᵀ (k × m)`: the library's `A` is kiln's `b`, its `B` kiln's `a`,
//! its `D` (and `C`, with β = 0) the output, which must have unit column stride.
//!
//! Batch axes of extent 1 are dropped; neighbouring axes that all three views walk as one
//! (each outer stride the inner one times the inner extent) merge; the innermost merged axis is
//! the library's strided batch and any others are walked by up to [`MAX_CALLS`] calls.
//!
//! Invariants of a [`Call`]: every extent is at least 1, every leading dimension at least its
//! matrix's row count, no stride is negative, the output's batch stride is nonzero when the
//! batch has more than one matrix, and `pointers` holds one address triple per call.

use crate::manifest::{ElemType, LibraryGemm};

/// The most library calls one step may take (outer batch axes walked from the host).
pub const MAX_CALLS: usize = 64;

/// One column-major matrix of a call (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Matrix {
    pub dtype: ElemType,
    /// Whether the library reads it transposed (`CUBLAS_OP_T`).
    pub transposed: bool,
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    /// Elements between consecutive matrices of the strided batch.
    pub batch_stride: i64,
}

/// What fixes the library's plan for a call: the three matrices, the batch count, and the
/// alignment in bytes (a power of two, at most 256) of every address of `A`, `B` and `D`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub a: Matrix,
    pub b: Matrix,
    pub d: Matrix,
    pub batch: i32,
    pub align: [u32; 3],
}

/// A step's library calls for one run: the shape, and the addresses of `A`, `B` and `D` of
/// each call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Call {
    pub shape: Shape,
    pub pointers: Vec<[u64; 3]>,
}

/// The call computing `gemm` at `symbols`, with buffer `i` at `address(i)`.
pub fn call(gemm: &LibraryGemm, symbols: &[i64], address: impl Fn(usize) -> u64) -> Option<Call> {
    let eval = |p: &crate::Poly| p.eval(symbols);
    let (m, n, k) = (eval(&gemm.m), eval(&gemm.n), eval(&gemm.k));
    let operands = [&gemm.b, &gemm.a, &gemm.out];
    let strides: Vec<Vec<i64>> = operands
        .iter()
        .map(|o| o.strides.iter().map(eval).collect())
        .collect();
    let offsets: Vec<i64> = operands.iter().map(|o| eval(&o.offset)).collect();
    if m < 1 || n < 1 || k < 1 || strides.iter().flatten().chain(&offsets).any(|&s| s < 0) {
        return None;
    }
    let r = strides[2].len();
    let matrix_strides = |o: usize| (strides[o][r - 2], strides[o][r - 1]);
    let (sbk, sbn) = matrix_strides(0);
    let (sam, sak) = matrix_strides(1);
    let (som, son) = matrix_strides(2);
    let (a_ta, a_rows, a_cols, a_ld) = column_major([k, n], [sbk, sbn])?;
    let (b_ta, b_rows, b_cols, b_ld) = column_major([m, k], [sam, sak])?;
    let (d_ta, d_rows, d_cols, d_ld) = column_major([m, n], [som, son])?;
    if d_ta {
        return None;
    }
    let axes: Vec<(i64, [i64; 3])> = gemm
        .batch
        .iter()
        .enumerate()
        .map(|(x, e)| (eval(e), [strides[0][x], strides[1][x], strides[2][x]]))
        .collect();
    if axes.iter().any(|&(e, _)| e < 1) {
        return None;
    }
    let mut groups = merged(&axes);
    let (batch, batch_strides) = groups.pop().unwrap_or((1, [0; 3]));
    if batch > 1 && batch_strides[2] == 0 {
        return None;
    }
    let outer: i64 = groups.iter().map(|g| g.0).product();
    if outer as usize > MAX_CALLS {
        return None;
    }
    let dtypes = [gemm.b.dtype, gemm.a.dtype, gemm.out.dtype];
    let bases: Vec<u64> = operands.iter().map(|o| address(o.buffer)).collect();
    let mut pointers = Vec::with_capacity(outer as usize);
    for mut index in 0..outer {
        let mut at = offsets.clone();
        for &(extent, s) in groups.iter().rev() {
            let i = index % extent;
            index /= extent;
            for (at, s) in at.iter_mut().zip(s) {
                *at += i * s;
            }
        }
        let triple: Vec<u64> = (0..3)
            .map(|o| bases[o] + (at[o] as u64) * dtypes[o].size() as u64)
            .collect();
        pointers.push([triple[0], triple[1], triple[2]]);
    }
    let align = std::array::from_fn(|o| {
        let stride_bytes = (batch_strides[o] as u64) * dtypes[o].size() as u64;
        let bits = pointers
            .iter()
            .map(|p| p[o])
            .fold(stride_bytes | 256, |acc, p| acc | p);
        1u32 << bits.trailing_zeros().min(8)
    });
    let matrix = |o: usize, (transposed, rows, cols, ld): (bool, i64, i64, i64)| Matrix {
        dtype: dtypes[o],
        transposed,
        rows: rows as u64,
        cols: cols as u64,
        ld,
        batch_stride: batch_strides[o],
    };
    Some(Call {
        shape: Shape {
            a: matrix(0, (a_ta, a_rows, a_cols, a_ld)),
            b: matrix(1, (b_ta, b_rows, b_cols, b_ld)),
            d: matrix(2, (false, d_rows, d_cols, d_ld)),
            batch: i32::try_from(batch).ok()?,
            align,
        },
        pointers,
    })
}

/// The row-major matrix `X[R, C]` with strides `[sr, sc]` as a column-major one: `Xᵀ`
/// (`C × R`, not transposed) where its columns are unit-stride, else `X` (`R × C`, read
/// transposed) where its rows are; `(transposed, rows, cols, ld)`. A unit extent makes its
/// stride irrelevant.
fn column_major([r, c]: [i64; 2], [sr, sc]: [i64; 2]) -> Option<(bool, i64, i64, i64)> {
    if c == 1 || sc == 1 {
        let ld = if r == 1 { c } else { sr };
        return (ld >= c).then_some((false, c, r, ld));
    }
    if r == 1 || sr == 1 {
        let ld = if c == 1 { r } else { sc };
        return (ld >= r).then_some((true, r, c, ld));
    }
    None
}

/// The batch axes of extent above 1, neighbours that every view walks as one merged; outermost
/// first, as `(extent, strides)`.
fn merged(axes: &[(i64, [i64; 3])]) -> Vec<(i64, [i64; 3])> {
    let mut groups: Vec<(i64, [i64; 3])> = Vec::new();
    for &(extent, strides) in axes.iter().filter(|a| a.0 > 1) {
        match groups.last_mut() {
            Some((outer, outer_strides))
                if (0..3).all(|o| outer_strides[o] == strides[o] * extent) =>
            {
                *outer *= extent;
                *outer_strides = strides;
            }
            _ => groups.push((extent, strides)),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::GemmOperand;
    use crate::Poly;

    fn operand(buffer: usize, dtype: ElemType, strides: &[i64]) -> GemmOperand {
        GemmOperand {
            buffer,
            dtype,
            offset: Poly::constant(0),
            strides: strides.iter().map(|&s| Poly::constant(s)).collect(),
        }
    }

    /// `out[b, m, n] = a[b, m, k]·b[k, n]` with `b` broadcast over the batch, `a` row-major or
    /// transposed.
    fn gemm(batch: &[i64], a: &[i64], b: &[i64], out: &[i64]) -> LibraryGemm {
        LibraryGemm {
            a: operand(0, ElemType::Bf16, a),
            b: operand(1, ElemType::Bf16, b),
            out: operand(2, ElemType::F32, out),
            batch: batch.iter().map(|&e| Poly::constant(e)).collect(),
            m: Poly::constant(32),
            n: Poly::constant(48),
            k: Poly::constant(64),
        }
    }

    fn address(b: usize) -> u64 {
        (b as u64 + 1) << 20
    }

    #[test]
    fn row_major_operands_map_to_the_transposed_product() {
        // x·Wᵀ: a[m, k] row-major, b = Wᵀ with W[n, k] row-major (unit stride along k).
        let g = gemm(&[4], &[32 * 64, 64, 1], &[0, 1, 64], &[32 * 48, 48, 1]);
        let c = call(&g, &[], address).unwrap();
        // A = bᵀ = W (n × k) would need unit stride along n; b has it along k: W read as
        // column-major k × n, transposed.
        assert_eq!(
            (c.shape.a.transposed, c.shape.a.rows, c.shape.a.cols),
            (true, 64, 48)
        );
        assert_eq!(c.shape.a.ld, 64);
        assert_eq!(
            (c.shape.b.transposed, c.shape.b.rows, c.shape.b.cols),
            (false, 64, 32)
        );
        assert_eq!((c.shape.d.rows, c.shape.d.cols, c.shape.d.ld), (48, 32, 48));
        assert_eq!(c.shape.batch, 4);
        assert_eq!(c.shape.a.batch_stride, 0);
        assert_eq!(c.shape.d.batch_stride, 32 * 48);
        assert_eq!(c.pointers, vec![[address(1), address(0), address(2)]]);
        assert_eq!(c.shape.align, [256; 3]);
    }

    #[test]
    fn batch_axes_merge_where_every_view_walks_them_as_one() {
        // [2, 3] batch, contiguous everywhere: one strided batch of 6.
        let contiguous = gemm(
            &[2, 3],
            &[3 * 32 * 64, 32 * 64, 64, 1],
            &[3 * 64 * 48, 64 * 48, 48, 1],
            &[3 * 32 * 48, 32 * 48, 48, 1],
        );
        let c = call(&contiguous, &[], address).unwrap();
        assert_eq!((c.shape.batch, c.pointers.len()), (6, 1));
        // `a` with its two batch axes swapped in memory: the inner axis is the strided batch,
        // the outer one is walked by two calls, each offset by its strides.
        let swapped = gemm(
            &[2, 3],
            &[32 * 64, 2 * 32 * 64, 64, 1],
            &[3 * 64 * 48, 64 * 48, 48, 1],
            &[3 * 32 * 48, 32 * 48, 48, 1],
        );
        let c = call(&swapped, &[], address).unwrap();
        assert_eq!((c.shape.batch, c.pointers.len()), (3, 2));
        let second = [address(1) + 2 * 3 * 64 * 48, address(0) + 2 * 32 * 64];
        assert_eq!(
            c.pointers[1],
            [second[0], second[1], address(2) + 4 * 3 * 32 * 48]
        );
        assert_eq!(c.shape.align, [256, 256, 256]);
    }

    #[test]
    fn views_the_library_cannot_take_are_refused() {
        let rows = &[32 * 64, 64, 1];
        // Neither axis of `b` unit-stride.
        assert!(call(
            &gemm(&[4], rows, &[0, 2, 128], &[1536, 48, 1]),
            &[],
            address
        )
        .is_none());
        // A transposed output.
        assert!(call(&gemm(&[4], rows, &[0, 48, 1], &[1536, 1, 32]), &[], address).is_none());
        // A leading dimension shorter than the rows.
        assert!(call(
            &gemm(&[4], &[2048, 16, 1], &[0, 48, 1], &[1536, 48, 1]),
            &[],
            address
        )
        .is_none());
        // More outer calls than allowed.
        let many = gemm(
            &[65, 2],
            &[32 * 64, 65 * 32 * 64, 64, 1],
            &[0, 0, 48, 1],
            &[2 * 32 * 48, 32 * 48, 48, 1],
        );
        assert!(call(&many, &[], address).is_none());
    }

    #[test]
    fn alignment_is_the_coarsest_every_address_keeps() {
        let mut g = gemm(&[4], &[32 * 64, 64, 1], &[0, 48, 1], &[32 * 48, 48, 1]);
        g.a.offset = Poly::constant(8);
        let c = call(&g, &[], address).unwrap();
        // bf16 `a` 16 bytes in: the library's B is aligned to 16.
        assert_eq!(c.shape.align, [256, 16, 256]);
    }
}
