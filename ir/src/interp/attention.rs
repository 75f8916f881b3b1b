//! The reference semantics of `flash_attention`: computed the plain way, as the primitives it
//! replaces would compute it (scores rounded to f32 after the f64 dot product and again after
//! scaling, max-shifted `exp`, an f64 sum, f32 probabilities, an f64 weighted sum of values),
//! so a fused graph and the graph it came from agree to the last bits or nearly.

use super::tensor::{Data, Tensor};
use crate::attention::Attention;

/// `out[b, h, i, :]` for every query (shapes are checked by type inference).
pub fn eval(attention: &Attention, xs: &[&Tensor]) -> Result<Data, String> {
    let (q, k, v) = (float(xs[0]), float(xs[1]), float(xs[2]));
    let [batch, heads, seq, dim] = shape4(xs[0]);
    let [_, kv_heads, keys, _] = shape4(xs[1]);
    let dv = xs[2].shape[3];
    let positions: Option<&[i64]> = match xs.get(3).map(|p| &p.data) {
        Some(Data::Int(p)) => Some(p),
        Some(_) => return Err("positions must be integers".into()),
        None => None,
    };
    let mut out = Vec::with_capacity(batch * heads * seq * dv);
    let mut probs = vec![0f32; keys];
    for b in 0..batch {
        for h in 0..heads {
            let kv = b * kv_heads + h / attention.group;
            let k_head = &k[kv * keys * dim..][..keys * dim];
            let v_head = &v[kv * keys * dv..][..keys * dv];
            for i in 0..seq {
                let query = &q[((b * heads + h) * seq + i) * dim..][..dim];
                let visible = match positions {
                    Some(p) => attention.visible_keys(p[b * seq + i], keys),
                    None => 0..keys,
                };
                if visible.is_empty() {
                    out.extend(std::iter::repeat_n(f32::NAN, dv));
                    continue;
                }
                let scores: Vec<f32> = visible
                    .clone()
                    .map(|j| {
                        let key = &k_head[j * dim..][..dim];
                        let dot: f64 = query
                            .iter()
                            .zip(key)
                            .map(|(&x, &y)| x as f64 * y as f64)
                            .sum();
                        ((dot as f32) as f64 * attention.scale) as f32
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores
                    .iter()
                    .map(|&s| ((s as f64 - max as f64) as f32 as f64).exp() as f32)
                    .collect();
                let total = exps.iter().map(|&e| e as f64).sum::<f64>() as f32;
                probs.fill(0.0);
                for (j, e) in visible.clone().zip(&exps) {
                    probs[j] = (*e as f64 / total as f64) as f32;
                }
                for c in 0..dv {
                    let acc: f64 = visible
                        .clone()
                        .map(|j| probs[j] as f64 * v_head[j * dv + c] as f64)
                        .sum();
                    out.push(acc as f32);
                }
            }
        }
    }
    Ok(Data::Float(out))
}

fn float(t: &Tensor) -> &[f32] {
    match &t.data {
        Data::Float(v) => v,
        _ => unreachable!("verified f32 operands"),
    }
}

fn shape4(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}
