//! RoPE frequency tables: the inverse frequencies of each rotated pair and the factor applied to
//! cos/sin, for every `RopeScaling`, computed the way transformers' `rope_type`s define them.
//!
//! Computed once at build time in f64 and embedded as constants in the graph.

use crate::spec::{Rope, RopeScaling};
use std::f64::consts::PI;

#[derive(Clone, Debug, PartialEq)]
pub struct RopeTables {
    /// One inverse frequency per rotated pair (`rotary_dim / 2` of them).
    pub inv_freq: Vec<f64>,
    /// Multiplies cos and sin (YaRN's attention temperature; 1 otherwise).
    pub attention_scaling: f64,
}

/// The number of each head's dimensions that rotate.
pub fn rotary_dim(rope: &Rope, head_dim: usize) -> usize {
    (head_dim as f64 * rope.partial_rotary_factor) as usize
}

/// The tables for a model whose config declares `max_positions`. `Dynamic` scaling gives the
/// unscaled table, which is exact for sequences up to its original maximum (the builder caps
/// the sequence length there).
pub fn tables(rope: &Rope, head_dim: usize, max_positions: usize) -> RopeTables {
    let dim = rotary_dim(rope, head_dim);
    let base = rope.theta;
    let plain: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
        .collect();
    let unscaled = |inv_freq| RopeTables {
        inv_freq,
        attention_scaling: 1.0,
    };
    match &rope.scaling {
        RopeScaling::None | RopeScaling::Dynamic { .. } => unscaled(plain),
        RopeScaling::Linear { factor } => unscaled(plain.iter().map(|f| f / factor).collect()),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => {
            let old = *original_max_positions as f64;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            unscaled(
                plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect(),
            )
        }
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            attention_factor,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            // With an explicit original length, the factor is the ratio of the two lengths.
            let (factor, original) = match original_max_positions {
                Some(orig) => (max_positions as f64 / *orig as f64, *orig as f64),
                None => (*factor, max_positions as f64),
            };
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_scaling = match (attention_factor, mscale, mscale_all_dim) {
                (Some(a), _, _) => *a,
                (None, Some(m), Some(all)) if *m != 0.0 && *all != 0.0 => {
                    get_mscale(factor, *m) / get_mscale(factor, *all)
                }
                _ => get_mscale(factor, 1.0),
            };
            let correction_dim = |rotations: f64| {
                dim as f64 * (original / (rotations * 2.0 * PI)).ln() / (2.0 * base.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
            if low == high {
                high += 0.001;
            }
            let inv_freq = plain
                .iter()
                .enumerate()
                .map(|(i, &extrapolation)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_weight = 1.0 - ramp;
                    let interpolation = extrapolation / factor;
                    interpolation * (1.0 - extrapolation_weight)
                        + extrapolation * extrapolation_weight
                })
                .collect();
            RopeTables {
                inv_freq,
                attention_scaling,
            }
        }
    }
}
