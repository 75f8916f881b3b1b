//! Elementwise kernels (`Kernel::Map`): one thread per output element, by grid stride. Each
//! thread splits its linear index into coordinates, reads every leaf through its view (bf16
//! leaves are widened by the expression's casts), evaluates the expression and writes through
//! the output's view. Copies, concat parts and widened copies are maps too.
//!
//! Axes that every view walks as one (`stride[d] = stride[d + 1] · dim[d + 1]` in each) are
//! merged before the split, so a map over contiguous tensors of one shape divides nothing and a
//! row broadcast divides once. The split divides once per axis, in 32-bit arithmetic where the
//! domain has fewer than 2³¹ elements (`Ctx::unravel_in`; tested at run time when the count
//! depends on symbols): a 64-bit division by a symbol's value is a long subroutine, and such
//! divisions were most of a training step's map instructions. On an H200 that took the
//! Llama-3.2-1B training step from 3,119–3,190 to 4,048–4,096 tok/s
//! (`bench/results/gpu-train-map-index-2026-11-30-h200/`). A view laid out row-major over the
//! domain ([`dense`]) needs no coordinates at all: it is read or written at the element's
//! linear index, and views of equal offset and strides share one index.
//!
//! Where every map of a launch allows it ([`run_length`]: the merged innermost axis a
//! multiple of 8, or else 4, long whatever the symbols, and every view unit-stride or broadcast
//! along it), a thread takes that many neighbouring elements instead of one: it splits the
//! first one's index and addresses each view once, loads every element of the run (all in
//! flight), then computes and stores them in order. The index arithmetic is paid once per run. A view whose
//! runs are aligned to their size ([`vectors`]: f32 or bf16, its offset and other strides
//! multiples of the run) moves its run in vector loads or stores of up to 16 bytes
//! (`ld.global.nc.v4.f32`, `st.global.v4.b16`, 8 bf16 as `ld.global.nc.v4.b32`, …) instead of
//! one instruction per element: a warp's access is then one contiguous span, whole sectors,
//! rather than strided ones that the caches must merge.

use super::context::{Addressed, Ctx, Fits, Granule};
use super::dtype::elem_bytes;
use super::expr::evaluate;
use crate::error::Result;
use crate::ptx::{Cmp, Operand, Reg};
use kiln_backend_cpu::kernel::{ExprNode, Kernel};
use kiln_backend_cpu::view::{contiguous_strides, View};
use kiln_ir::DType;
use kiln_runtime::manifest::{Launch, WorkFactor};
use kiln_runtime::Poly;

/// The views with the axes all of them walk as one merged (see the module doc).
fn merge_axes(views: &[&View]) -> Vec<View> {
    let mut merged: Vec<View> = views.iter().map(|&v| v.clone()).collect();
    let mut d = merged[0].rank();
    while d >= 2 {
        d -= 1;
        let joins = merged
            .iter()
            .all(|v| v.strides[d - 1] == v.strides[d].mul(&v.dims[d]));
        if joins {
            for v in &mut merged {
                let size = v.dims[d - 1].mul(&v.dims[d]);
                v.dims[d - 1] = size;
                v.strides[d - 1] = v.strides[d].clone();
                v.dims.remove(d);
                v.strides.remove(d);
            }
        }
    }
    merged
}

/// Elements a thread takes in a row where the views allow it, longest first (see the module
/// doc): 8 bf16 are one 16-byte access, 8 f32 two.
const RUNS: [i64; 2] = [8, 4];

/// The longest run of [`RUNS`] a thread of map `(out, leaves, _)` may take (1: none): with the
/// axes merged, the innermost one is a multiple of it long for any symbols, and every view is
/// unit-stride (the output) or broadcast (stride 0, a leaf) along it.
pub(super) fn run_length((out, leaves, _): Parts) -> i64 {
    let views: Vec<&View> = std::iter::once(out).chain(leaves).collect();
    let merged = merge_axes(&views);
    let inner = |v: &View| v.strides.last().cloned().unwrap_or(Poly::constant(1));
    let length = merged[0].dims.last().cloned().unwrap_or(Poly::constant(1));
    let along = inner(&merged[0]).is_constant(1)
        && merged[1..]
            .iter()
            .all(|l| inner(l).is_constant(1) || inner(l).is_constant(0));
    RUNS.into_iter()
        .find(|&n| along && length.div_exact(n).is_some())
        .unwrap_or(1)
}

/// Whether a thread of the map may take runs of elements ([`run_length`]).
pub(super) fn takes_runs(parts: Parts) -> bool {
    run_length(parts) > 1
}

/// Whether runs of `n` elements of `v` (starting at multiples of `n` along its last axis, as
/// the runs of [`run_length`] do) move as vectors: an f32 or bf16 buffer, unit-stride along
/// that axis, its offset and other strides multiples of `n` (buffers start 64-byte aligned),
/// and a run of at most 16 bytes (one vector) or of whole 16-byte chunks (one vector each).
fn vectors(v: &View, n: i64) -> bool {
    let multiple = |p: &Poly| p.terms.iter().all(|t| t.coeff % n == 0);
    let Some((inner, outer)) = v.strides.split_last() else {
        return false;
    };
    v.buffer().is_some()
        && matches!(v.dtype, DType::F32 | DType::BF16)
        && elem_bytes(v.dtype).is_ok_and(|b| b * n <= 16 || (b * n) % 16 == 0)
        && inner.is_constant(1)
        && multiple(&v.offset)
        && outer.iter().all(multiple)
}

/// One map's views, ready to address, with its axes merged.
struct Prepared<'a> {
    dims: Vec<Operand>,
    out: Addressed,
    leaves: Vec<Addressed>,
    expr: &'a [ExprNode],
}

/// Whether `v` lies row-major over its own dims from offset 0: its element at linear index `i`
/// of the domain is element `i` of its buffer.
pub(super) fn dense(v: &View) -> bool {
    v.offset.is_constant(0) && v.strides == contiguous_strides(&v.dims)
}

impl<'a> Prepared<'a> {
    fn new(c: &mut Ctx, out: &View, leaves: &[View], expr: &'a [ExprNode]) -> Prepared<'a> {
        let views: Vec<&View> = std::iter::once(out).chain(leaves).collect();
        let merged = merge_axes(&views);
        Prepared {
            dims: merged[0].dims.iter().map(|d| c.value(d)).collect(),
            out: c.addressed(&merged[0]),
            leaves: merged[1..].iter().map(|l| c.addressed(l)).collect(),
            expr,
        }
    }

    /// Computes and stores output elements `i .. i + n` (`i` a row-major linear index, `n` 1 or
    /// a run that [`takes_runs`] allows) of a domain that `fits` describes. A dense view
    /// ([`dense`]) is read at `i` itself, and a view with the offset and strides of one before it
    /// at that one's index, so coordinates are split only where some view needs them, and each
    /// index is computed once.
    fn elements(&self, c: &mut Ctx, i: Reg, n: i64, fits: Fits) -> Result<()> {
        let views: Vec<&Addressed> = self.leaves.iter().chain([&self.out]).collect();
        let split = views.iter().any(|v| !dense(&v.view));
        let coords = if split {
            c.unravel_in(i, &self.dims, fits)
        } else {
            Vec::new()
        };
        let mut placed: Vec<(&View, Reg)> = Vec::new();
        let mut ats = Vec::with_capacity(views.len());
        for v in &views {
            let same =
                |(w, _): &&(&View, Reg)| w.offset == v.view.offset && w.strides == v.view.strides;
            let at = if dense(&v.view) {
                i
            } else if let Some((_, at)) = placed.iter().find(same) {
                *at
            } else {
                let at = c.linear(&v.offset, &coords, &v.strides);
                placed.push((&v.view, at));
                at
            };
            ats.push(at);
        }
        // Element `u` of the run: `u` past the first where a view is unit-stride along the run.
        let step = |c: &mut Ctx, v: &View, at: Reg, u: i64| match v.strides.last() {
            Some(s) if s.is_constant(0) => at,
            _ if u == 0 => at,
            _ => c.b.add(at, u),
        };
        let vector = |v: &View| n > 1 && vectors(v, n);
        // Each leaf's run: one vector load, or a load per element.
        let mut runs: Vec<Vec<Reg>> = Vec::with_capacity(self.leaves.len());
        for (l, &at) in self.leaves.iter().zip(&ats) {
            runs.push(match vector(&l.view) {
                true => c.load_vector(l, at, n as usize)?,
                false => (0..n)
                    .map(|u| {
                        let at = step(c, &l.view, at, u);
                        c.load(l, at)
                    })
                    .collect::<Result<_>>()?,
            });
        }
        let base = self.out.base.expect("maps write buffers");
        let (out, out_at) = (&self.out.view, ats[self.leaves.len()]);
        let out_vector = vector(out);
        let mut results = Vec::with_capacity(n as usize);
        for u in 0..n as usize {
            let values: Vec<Reg> = runs.iter().map(|run| run[u]).collect();
            let v = evaluate(c, self.expr, &values)?;
            if !out_vector {
                let at = step(c, out, out_at, u as i64);
                c.store(base, at, out.dtype, v)?;
            }
            results.push(v);
        }
        if out_vector {
            c.store_vector(base, out_at, out.dtype, &results)?;
        }
        Ok(())
    }
}

/// A map's output, leaves and expression.
pub type Parts<'a> = (&'a View, &'a [View], &'a [ExprNode]);

/// The parts of `kernel`, where it is a map.
pub fn parts(kernel: &Kernel) -> Option<Parts<'_>> {
    match kernel {
        Kernel::Map { out, leaves, expr } => Some((out, leaves.as_slice(), expr.as_slice())),
        _ => None,
    }
}

pub fn emit(c: &mut Ctx, out: &View, leaves: &[View], expr: &[ExprNode]) -> Result<Launch> {
    emit_together(c, &[vec![(out, leaves, expr)]])
}

/// Maps as one kernel, in bundles: the maps of a bundle have domains of one shape, and a thread
/// computes element `i` of each of them in turn ([`together`] says when that is the same as
/// running them in order); the bundles' domains follow one another along the threads, a
/// thread computing the element of the bundle its index falls in. The caller has checked that
/// no map reads what another writes.
pub fn emit_together(c: &mut Ctx, bundles: &[Vec<Parts>]) -> Result<Launch> {
    let prepared: Vec<Vec<Prepared>> = bundles
        .iter()
        .map(|maps| {
            maps.iter()
                .map(|&(out, leaves, expr)| Prepared::new(c, out, leaves, expr))
                .collect()
        })
        .collect();
    let mut total = Poly::constant(0);
    let mut starts = Vec::new();
    for maps in bundles {
        starts.push(c.value(&total));
        total = total.add(&maps[0].0.numel());
    }
    let count = c.value(&total);
    let fits = c.fits(&count);
    let single = bundles.len() == 1;
    // The longest run every map allows (each bundle's length is then a multiple of it, so no
    // run crosses into the next bundle).
    let run = bundles
        .iter()
        .flatten()
        .map(|&parts| run_length(parts))
        .min()
        .unwrap_or(1);
    let threads = total.div_exact(run).expect("runs divide every bundle");
    let thread_count = c.value(&threads);
    c.grid_loop(thread_count, Granule::Thread, |c, t| {
        let i = match run {
            1 => t,
            _ => c.b.mul(t, run),
        };
        for (b, maps) in prepared.iter().enumerate() {
            let elements =
                |c: &mut Ctx, at: Reg| maps.iter().try_for_each(|p| p.elements(c, at, run, fits));
            if single {
                elements(c, i)?;
                continue;
            }
            let past_start = c.b.setp(Cmp::Ge, i, starts[b].clone());
            let end = starts.get(b + 1).cloned().unwrap_or(count.clone());
            let before_end = c.b.setp(Cmp::Lt, i, end);
            let inside = c.b.and(past_start, before_end);
            c.when(inside, |c| {
                let at = c.b.sub(i, starts[b].clone());
                elements(c, at)
            })?;
        }
        Ok(())
    })?;
    Ok(super::one_thread_each(threads))
}

/// Whether `first` and `second`, maps run in that order, may run as one kernel: the same
/// output shape, neither reading what the other writes, outputs in different buffers or
/// provably apart in one ([`apart`]: the two halves of a concat written in place), and both
/// taking runs of elements or neither ([`takes_runs`]).
pub fn together<'a>(first: &'a Kernel, second: &'a Kernel) -> Option<[Parts<'a>; 2]> {
    let (a, b) = (parts(first)?, parts(second)?);
    let reads = |leaves: &[View], out: &View| leaves.iter().any(|l| l.buffer() == out.buffer());
    let independent = a.0.dims == b.0.dims
        && a.0.buffer().is_some()
        && !reads(a.1, b.0)
        && !reads(b.1, a.0)
        && (a.0.buffer() != b.0.buffer() || apart(a.0, b.0))
        && takes_runs(a) == takes_runs(b);
    independent.then_some([a, b])
}

/// Whether two views of one buffer with the same dims never share an element: equal strides,
/// offsets a constant `δ` apart, a unit-stride axis of constant extent `n`, and every other
/// stride a multiple of a constant `M` with `n ≤ δ mod M ≤ M − n` (no step along the other
/// axes and fewer than `n` along the unit one covers `δ`).
pub(super) fn apart(a: &View, b: &View) -> bool {
    let Some(delta) = b.offset.sub(&a.offset).as_constant() else {
        return false;
    };
    let Some(unit) = (0..a.rank()).rev().find(|&d| a.strides[d].is_constant(1)) else {
        return false;
    };
    let Some(n) = a.dims[unit].as_constant() else {
        return false;
    };
    let others = (0..a.rank()).filter(|&d| d != unit && !a.dims[d].is_constant(1));
    let modulus = others
        .flat_map(|d| a.strides[d].terms.iter().map(|t| t.coeff.abs()))
        .fold(0i64, gcd);
    let r = if modulus == 0 {
        delta.abs()
    } else {
        delta.rem_euclid(modulus)
    };
    let upper = if modulus == 0 { i64::MAX } else { modulus - n };
    a.strides == b.strides && n <= r && r <= upper
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One block per item of `extent` items.
pub fn per_block(extent: Poly, threads: u32, shared_bytes: u32) -> Launch {
    Launch {
        blocks: vec![WorkFactor { extent, tile: 1 }],
        threads,
        shared_bytes,
        buffers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_backend_cpu::view::Source;

    /// A `[4, 8]` view of buffer 0 at `offset` with row stride `row`.
    fn view(dtype: DType, offset: i64, row: i64) -> View {
        View {
            offset: Poly::constant(offset),
            strides: vec![Poly::constant(row), Poly::constant(1)],
            ..View::contiguous(
                Source::Buffer(0),
                dtype,
                vec![Poly::constant(4), Poly::constant(8)],
            )
        }
    }

    /// Runs of 4 or 8 move as vectors only where every run starts aligned to its size: offsets
    /// and row strides multiples of the run, unit stride along it, f32 or bf16, a buffer.
    #[test]
    fn only_aligned_runs_move_as_vectors() {
        assert!(vectors(&view(DType::F32, 0, 8), 4));
        assert!(vectors(&view(DType::F32, 12, 8), 4));
        assert!(vectors(&view(DType::BF16, 4, 16), 4));
        assert!(vectors(&view(DType::BF16, 8, 16), 8), "one 16-byte vector");
        assert!(vectors(&view(DType::F32, 8, 16), 8), "two 16-byte vectors");
        assert!(
            !vectors(&view(DType::BF16, 4, 16), 8),
            "offset of half a run"
        );
        assert!(!vectors(&view(DType::F32, 2, 8), 4), "offset");
        assert!(!vectors(&view(DType::F32, 0, 10), 4), "row stride");
        assert!(!vectors(&view(DType::I64, 0, 8), 4), "type");
        let mut broadcast = view(DType::F32, 0, 8);
        broadcast.strides[1] = Poly::constant(0);
        assert!(!vectors(&broadcast, 4), "a broadcast reads one element");
        let splat = View {
            source: Source::Splat(1.0),
            ..view(DType::F32, 0, 8)
        };
        assert!(!vectors(&splat, 4), "not a buffer");
    }
}
