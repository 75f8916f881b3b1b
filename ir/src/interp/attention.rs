//! The reference semantics of `flash_attention` and its backward.
//!
//! The forward is computed the plain way, as the primitives it replaces would compute it (scores
//! rounded to f32 after the f64 dot product and again after scaling, max-shifted `exp`, an f64
//! sum, f32 probabilities — then bf16 ones for bf16 operands —, an f64 weighted sum of values), so a fused graph and the graph it came
//! from agree to the last bits or nearly; under exact arithmetic nothing is rounded. The
//! log-sum-exp and the gradients are computed in f64 from the definitions in `attention.rs` and
//! rounded once, as their result is stored; with bf16 operands the probabilities (for the
//! values' gradient) and the score gradients (for the queries' and keys') are rounded to bf16
//! where they weight the other side, as that definition states.

use super::tensor::{Arithmetic, Data, Tensor};
use crate::attention::{Attention, AttentionInput};
use crate::dtype::DType;
use std::ops::Range;

/// `out[b, h, i, :]` for every query (shapes are checked by type inference).
pub fn eval(attention: &Attention, xs: &[&Tensor], arithmetic: Arithmetic) -> Result<Data, String> {
    let f32 = |x: f64| match arithmetic {
        Arithmetic::Native => x as f32 as f64,
        Arithmetic::Exact => x,
    };
    // bf16 operands: the probabilities are rounded to bf16 (see `kiln_ir::attention`).
    let narrow = |x: f64| match (xs[2].dtype, arithmetic) {
        (DType::BF16, Arithmetic::Native) => half::bf16::from_f32(x as f32).to_f64(),
        _ => x,
    };
    let a = Operands::new(attention, xs)?;
    let mut out = Vec::with_capacity(a.batch * a.heads * a.seq * a.dv);
    let mut probs = vec![0f64; a.keys];
    for (b, h, i) in a.queries() {
        let visible = a.visible(b, i);
        if visible.is_empty() {
            out.extend(std::iter::repeat_n(f64::NAN, a.dv));
            continue;
        }
        let scores: Vec<f64> = visible
            .clone()
            .map(|j| f32(f32(a.dot(b, h, i, j)) * attention.scale))
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|&s| f32(f32(s - max).exp())).collect();
        let total = f32(exps.iter().sum::<f64>());
        probs.fill(0.0);
        for (j, e) in visible.clone().zip(&exps) {
            probs[j] = narrow(f32(e / total));
        }
        for c in 0..a.dv {
            let acc: f64 = visible
                .clone()
                .map(|j| probs[j] * a.value(b, h, j)[c])
                .sum();
            // Rounded to f32 first, so that a result declared bf16 rounds as a cast of it.
            out.push(f32(acc));
        }
    }
    Ok(Data::Float(out))
}

/// `lse[b, h, i]` for every query.
pub fn eval_lse(attention: &Attention, xs: &[&Tensor]) -> Result<Data, String> {
    let a = Operands::new(attention, xs)?;
    let lse = a
        .queries()
        .map(|(b, h, i)| {
            let scores: Vec<f64> = a.visible(b, i).map(|j| a.score(b, h, i, j)).collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                return max;
            }
            max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln()
        })
        .collect();
    Ok(Data::Float(lse))
}

/// The gradient by `wrt`: operands are the forward's, then `out`, `d_out` and `lse`.
pub fn eval_grad(
    attention: &Attention,
    wrt: AttentionInput,
    xs: &[&Tensor],
    arithmetic: Arithmetic,
) -> Result<Data, String> {
    let narrow = |x: f64| match (xs[0].dtype, arithmetic) {
        (DType::BF16, Arithmetic::Native) => half::bf16::from_f64(x).to_f64(),
        _ => x,
    };
    let n = attention.arity();
    let a = Operands::new(attention, &xs[..n])?;
    let (out, d_out, lse) = (float(xs[n]), float(xs[n + 1]), float(xs[n + 2]));
    let mut grad = vec![0f64; xs[wrt.slot()].numel()];
    for (b, h, i) in a.queries() {
        let row = (b * a.heads + h) * a.seq + i;
        let d_o = &d_out[row * a.dv..][..a.dv];
        let o = &out[row * a.dv..][..a.dv];
        // Δᵢ = Σ_c dOᵢ꜀ Oᵢ꜀: the cotangent's share that every probability of the row carries.
        let delta: f64 = d_o.iter().zip(o).map(|(x, y)| x * y).sum();
        for j in a.visible(b, i) {
            let p = (a.score(b, h, i, j) - lse[row]).exp();
            let value = a.value(b, h, j);
            if wrt == AttentionInput::Values {
                let (at, p) = (a.kv_row(b, h, j) * a.dv, narrow(p));
                for (g, d) in grad[at..at + a.dv].iter_mut().zip(d_o) {
                    *g += p * d;
                }
                continue;
            }
            let d_p: f64 = d_o.iter().zip(value).map(|(x, y)| x * y).sum();
            let d_s = narrow(p * (d_p - delta) * attention.scale);
            let (at, other) = match wrt {
                AttentionInput::Queries => (row * a.dim, a.key(b, h, j)),
                _ => (a.kv_row(b, h, j) * a.dim, a.query(b, h, i)),
            };
            for (g, x) in grad[at..at + a.dim].iter_mut().zip(other) {
                *g += d_s * x;
            }
        }
    }
    Ok(Data::Float(grad))
}

/// The operands of one attention, indexed the way the definitions read them.
struct Operands<'a> {
    attention: &'a Attention,
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    positions: Option<&'a [i64]>,
    padding: Option<&'a [i64]>,
    batch: usize,
    heads: usize,
    seq: usize,
    dim: usize,
    kv_heads: usize,
    keys: usize,
    dv: usize,
}

impl<'a> Operands<'a> {
    fn new(attention: &'a Attention, xs: &[&'a Tensor]) -> Result<Operands<'a>, String> {
        let ints = |slot: Option<usize>, what: &str| match slot.map(|i| &xs[i].data) {
            Some(Data::Int(p)) => Ok(Some(p.as_slice())),
            Some(_) => Err(format!("{what} must be integers")),
            None => Ok(None),
        };
        let positions = ints(attention.positions_slot(), "positions")?;
        let padding = ints(attention.padding_slot(), "padding")?;
        let [batch, heads, seq, dim] = shape4(xs[0]);
        let [_, kv_heads, keys, _] = shape4(xs[1]);
        Ok(Operands {
            attention,
            q: float(xs[0]),
            k: float(xs[1]),
            v: float(xs[2]),
            positions,
            padding,
            batch,
            heads,
            seq,
            dim,
            kv_heads,
            keys,
            dv: xs[2].shape[3],
        })
    }

    /// Every `(batch, head, query)` in row-major order.
    fn queries(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.batch).flat_map(move |b| {
            (0..self.heads).flat_map(move |h| (0..self.seq).map(move |i| (b, h, i)))
        })
    }

    fn visible(&self, b: usize, i: usize) -> Range<usize> {
        let position = self.positions.map_or(0, |p| p[b * self.seq + i]);
        let padding = self.padding.map_or(0, |p| p[b]);
        self.attention.visible_keys(position, self.keys, padding)
    }

    /// The row of key/value `j` of the head that query head `h` reads.
    fn kv_row(&self, b: usize, h: usize, j: usize) -> usize {
        (b * self.kv_heads + h / self.attention.group) * self.keys + j
    }

    fn query(&self, b: usize, h: usize, i: usize) -> &'a [f64] {
        &self.q[((b * self.heads + h) * self.seq + i) * self.dim..][..self.dim]
    }

    fn key(&self, b: usize, h: usize, j: usize) -> &'a [f64] {
        &self.k[self.kv_row(b, h, j) * self.dim..][..self.dim]
    }

    fn value(&self, b: usize, h: usize, j: usize) -> &'a [f64] {
        &self.v[self.kv_row(b, h, j) * self.dv..][..self.dv]
    }

    fn dot(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        let (q, k) = (self.query(b, h, i), self.key(b, h, j));
        q.iter().zip(k).map(|(x, y)| x * y).sum()
    }

    /// `scale · q·k` in f64.
    fn score(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        self.dot(b, h, i, j) * self.attention.scale
    }
}

fn float(t: &Tensor) -> &[f64] {
    match &t.data {
        Data::Float(v) => v,
        _ => unreachable!("verified float operands"),
    }
}

fn shape4(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}
