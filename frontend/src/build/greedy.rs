//! Greedy next tokens inside the graph: `next_tokens i64[batch]`, the index of each row's
//! highest last-position logit, so that a greedy decoding loop reads `batch` ids back from the
//! device instead of `batch × vocab` logits.
//!
//! The choice is the host sampler's, exactly: the lowest index among the highest logits, NaN
//! ranked below everything (a row of NaN and −∞ only picks index 0). In primitives: the row
//! maximum with NaN taken as −∞, then a second maximum over `vocab − 1 − index` at the positions
//! holding it (every position, when it is −∞) finds the lowest such index. Both maxima read the
//! logits themselves, so fusion leaves no intermediate the size of the logits. Indices are
//! counted in f32, exact below 2²⁴.
//!
//! A row is long (128K logits) and a batch short, so each maximum is taken in two steps: of
//! each of [`parts`] equal parts of the row (`[batch, parts, vocab / parts]`, one reduction per
//! part: many of them to run side by side), then of the parts. The maximum does not depend on
//! the grouping.

use kiln_ir::{BinaryOp, DType, Dim, Graph, IrError, NodeId, ReduceOp, TensorType};

/// The vocabulary sizes whose indices f32 holds exactly.
const MAX_VOCAB: usize = 1 << 24;
/// Most parts a row is split into, and fewest logits in a part.
const MAX_PARTS: usize = 128;
const MIN_PART: usize = 64;

/// How many equal parts a row of `vocab` logits is reduced in: the most that divide it, at
/// most [`MAX_PARTS`], of at least [`MIN_PART`] logits each (1 when none do).
pub fn parts(vocab: usize) -> usize {
    (1..=MAX_PARTS.min(vocab / MIN_PART))
        .rev()
        .find(|&p| vocab.is_multiple_of(p))
        .unwrap_or(1)
}

/// The maximum of each row of `x [batch, parts, len]`: of each part, then of the parts.
fn row_max(g: &mut Graph, x: NodeId) -> Result<NodeId, IrError> {
    let of_parts = g.reduce(ReduceOp::Max, x, &[2])?;
    g.reduce(ReduceOp::Max, of_parts, &[1])
}

/// `next_tokens` of `logits f32[batch, 1, vocab]`.
pub fn greedy_tokens(g: &mut Graph, logits: NodeId) -> Result<NodeId, IrError> {
    let shape = g.ty(logits).shape.clone();
    let [batch, one, vocab] = &shape[..] else {
        return Err(IrError::new(format!(
            "greedy tokens need logits [batch, 1, vocab], not rank {}",
            shape.len()
        )));
    };
    let vocab = match vocab.as_fixed() {
        Some(v) if (1..=MAX_VOCAB).contains(&v) && one.as_fixed() == Some(1) => v,
        _ => {
            return Err(IrError::new(format!(
                "greedy tokens need one position and a fixed vocabulary of at most {MAX_VOCAB}"
            )))
        }
    };
    let (parts, len) = (parts(vocab), vocab / parts(vocab));
    let rows = vec![batch.clone(), Dim::fixed(parts), Dim::fixed(len)];
    let x = g.reshape(logits, rows)?;
    let is_nan = g.binary(BinaryOp::Ne, x, x)?;
    let below_all = g.scalar(DType::F32, f64::NEG_INFINITY)?;
    let ranked = g.select(is_nan, below_all, x)?;
    let best = row_max(g, ranked)?;
    // `x ≥ best` holds at the maxima and nowhere else (never at NaN); a best of −∞ ranks every
    // position equal.
    let at_best = g.binary(BinaryOp::Ge, x, best)?;
    let all_tied = g.binary(BinaryOp::Eq, best, below_all)?;
    let hit = g.binary(BinaryOp::Or, at_best, all_tied)?;
    // Position `i` of part `p` is logit `p · len + i`.
    let index_ty = TensorType::fixed(DType::F32, &[parts, len]);
    let part = g.iota(index_ty.clone(), 0)?;
    let within = g.iota(index_ty, 1)?;
    let part_start = g.binary_scalar(BinaryOp::Mul, part, len as f64)?;
    let index = g.add(part_start, within)?;
    let last_index = g.scalar(DType::F32, (vocab - 1) as f64)?;
    let countdown = g.sub(last_index, index)?;
    let missed = g.scalar(DType::F32, -1.0)?;
    let scores = g.select(hit, countdown, missed)?;
    let top = row_max(g, scores)?;
    let token = g.sub(last_index, top)?;
    let token = g.cast(token, DType::I64)?;
    g.reshape(token, vec![batch.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::interp::{interpret, Tensor, TensorMap};
    use kiln_ir::Dim;

    /// The host sampler's greedy rule, written as a plain scan: the first index of the highest
    /// logit, NaN below everything.
    fn first_highest(row: &[f32]) -> i64 {
        let rank = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        let mut best = 0;
        for (i, &x) in row.iter().enumerate() {
            if rank(x) > rank(row[best]) {
                best = i;
            }
        }
        best as i64
    }

    /// `next_tokens` of `rows` (one vocabulary each) by the interpreter.
    fn greedy_by_the_graph(rows: &[Vec<f32>]) -> Vec<f64> {
        let vocab = rows[0].len();
        let mut g = Graph::new("greedy");
        let batch = g.symbol("batch", rows.len()).unwrap();
        let ty = TensorType::new(DType::F32, vec![batch, Dim::fixed(1), Dim::fixed(vocab)]);
        let logits = g.input("logits", ty).unwrap();
        let tokens = greedy_tokens(&mut g, logits).unwrap();
        g.output("next_tokens", tokens).unwrap();
        let values: Vec<f32> = rows.iter().flatten().copied().collect();
        let inputs = TensorMap::from([(
            "logits".to_string(),
            Tensor::f32(&[rows.len(), 1, vocab], values),
        )]);
        let out = interpret(&g, &inputs, &TensorMap::new()).unwrap();
        assert_eq!(out["next_tokens"].shape, vec![rows.len()]);
        out["next_tokens"].to_f64()
    }

    fn check(rows: &[Vec<f32>]) {
        let expected: Vec<f64> = rows.iter().map(|r| first_highest(r) as f64).collect();
        assert_eq!(
            greedy_by_the_graph(rows),
            expected,
            "{} logits",
            rows[0].len()
        );
    }

    /// Rows with ties, NaN, infinities and nothing but NaN pick what the plain scan picks.
    #[test]
    fn greedy_tokens_pick_the_first_highest_logit() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        check(&[
            vec![0.5, 2.0, -1.0, 2.0, 1.0, 0.0],
            vec![nan, 1.0, nan, 3.0, 3.0, -inf],
            vec![nan, nan, nan, nan, nan, nan],
            vec![-inf, -inf, nan, -inf, -inf, -inf],
            vec![1.0, 1.0, 1.0, 1.0, 1.0, inf],
            vec![-3.0, -2.5, -2.5, -7.0, -2.5, -9.0],
        ]);
    }

    /// Rows reduced in parts (16 of 64, 10 of 100): ties in different parts, NaN and −∞ rows.
    #[test]
    fn greedy_tokens_over_parts_pick_the_first_highest_logit() {
        assert_eq!(
            (parts(1024), parts(1000), parts(256), parts(128256)),
            (16, 10, 4, 128)
        );
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        for vocab in [1024, 1000] {
            let row = |f: &dyn Fn(usize) -> f32| (0..vocab).map(f).collect::<Vec<f32>>();
            check(&[
                row(&|i| {
                    if [300, 700, 900].contains(&i) {
                        5.0
                    } else {
                        0.0
                    }
                }),
                row(&|i| {
                    if i == 777 {
                        1.0
                    } else if i % 3 == 0 {
                        nan
                    } else {
                        -inf
                    }
                }),
                row(&|_| nan),
                row(&|i| if (511..520).contains(&i) { nan } else { -inf }),
                row(&|i| if i == vocab - 1 { inf } else { 1.0 }),
                row(&|i| ((i * 37) % 101) as f32),
                row(&|i| -(i as f32)),
            ]);
        }
    }
}
