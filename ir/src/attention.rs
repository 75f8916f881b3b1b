//! The fused attention op (`flash_attention`): its parameters, typing rule, text attributes and
//! the set of keys each query may see.
//!
//! `flash_attention q, k, v[, positions][, padding]` computes, for every batch `b`, head `h` and
//! query `i`,
//!
//! ```text
//! out[b, h, i, :] = Σⱼ softmaxⱼ(scale · q[b, h, i, :] · k[b, h / group, j, :]) · v[b, h / group, j, :]
//! ```
//!
//! over the keys `j` that the mask allows for the query's position `positions[b, i]`. Key `j`
//! is at position `j` — or, with `padding=left`, at position `j − padding[b]`: a row whose
//! sequence was left-padded to the batch's length has `padding[b]` filler keys first, which no
//! query sees (their positions are negative), and the mask compares the real keys' positions.
//! Operand types: `q: T[B, H, S, D]`, `k: T[B, H/group, T, D]`, `v: T[B, H/group, T, Dv]` with
//! one float type `T`, f32 or bf16, `positions: i64|i32[B, S]` (absent exactly when the mask is
//! `none`) and `padding: i64|i32[B]` (present exactly with `padding=left`); result
//! `f32[B, H, S, Dv]`, or `bf16[B, H, S, Dv]` where so declared: the f32 result rounded to
//! nearest even, as a `cast` of it would be (`elementwise-fusion` folds such casts). Scores and softmax statistics are f32 either way; with
//! bf16 operands the probabilities are rounded to bf16 before they weight the values, as the
//! two bf16 matmuls the op replaces (`mixed-precision`'s `bf16` policy) would take them.
//! A query that sees no key gets NaN, as `softmax` over scores that are all `-inf` does.
//!
//! Its backward is two more ops over the same parameters and operands. `flash_attention_lse q, k, v, …`
//! is `lse[b, h, i] = log Σⱼ exp(scale · q·kⱼ)` over the visible keys (`f32[B, H, S]`, `-inf`
//! for a query that sees none), what the forward computes on the way. `flash_attention_grad_q`
//! (`_k`, `_v`) `q, k, v, …, out, d_out, lse` is the gradient of `Σ d_out · out` by
//! that operand: it recomputes the probabilities as `exp(scale · q·kⱼ − lse)` instead of storing
//! them, and sums the query heads that share a key/value head. Its result is f32, of that
//! operand's shape, or (with bf16 operands, declared so) that f32 result rounded to bf16, as a
//! cast of it would be. The backward ops take the forward's operands (f32 or bf16), its result
//! and a cotangent of the result's shape, each f32 or (with bf16 operands) bf16, and the f32
//! log-sum-exp. With bf16 operands the gradients weight bf16 values as the unfused graph's bf16
//! matmuls would: `d_values` weights the cotangent rows by probabilities rounded to bf16, and
//! `d_queries` and `d_keys` weight the other side by score gradients
//! `dsᵢⱼ = pᵢⱼ·(d_outᵢ·vⱼ − Δᵢ)·scale` rounded to bf16 (`Δᵢ = d_outᵢ·outᵢ`), all accumulated in
//! f32.
//!
//! Invariants: `group`, `tile_q` and `tile_k` are at least 1; `scale` is finite; a sliding window
//! is at least 1 key wide. The tiles are a schedule hint for backends and do not change the value.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::ty::TensorType;
use std::collections::HashMap;
use std::ops::Range;

/// Which keys a query at position `p` sees, by the keys' positions (key `j` of the cache is at
/// position `j`, less the row's padding under [`AttentionPadding::Left`]; a negative position is
/// never seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionMask {
    /// every key.
    None,
    /// keys `j ≤ p`.
    Causal,
    /// keys `p − w < j ≤ p` (a sliding window of `w` keys).
    Window(usize),
    /// keys `j ≤ p` and every key of the prefix `j < n` (bidirectional over the prefix).
    Prefix(usize),
}

/// Whether rows of the batch carry filler keys before their sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionPadding {
    /// key `j` is at position `j`.
    None,
    /// a `padding: int[B]` operand: key `j` of row `b` is at position `j − padding[b]`.
    Left,
}

/// What is added to the scaled scores before the softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionBias {
    /// nothing (the only kind the builders emit so far; ALiBi and relative biases are refused
    /// by the fusion pass and stay in primitives).
    None,
}

/// The operand a `flash_attention_grad_*` differentiates by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionInput {
    Queries,
    Keys,
    Values,
}

impl AttentionInput {
    pub const ALL: [AttentionInput; 3] = [
        AttentionInput::Queries,
        AttentionInput::Keys,
        AttentionInput::Values,
    ];

    /// The operand slot it has in the forward op.
    pub fn slot(self) -> usize {
        self as usize
    }

    /// The op name of its gradient.
    pub fn grad_name(self) -> &'static str {
        match self {
            AttentionInput::Queries => "flash_attention_grad_q",
            AttentionInput::Keys => "flash_attention_grad_k",
            AttentionInput::Values => "flash_attention_grad_v",
        }
    }
}

/// The parameters of one fused attention.
#[derive(Clone, Debug)]
pub struct Attention {
    pub mask: AttentionMask,
    pub padding: AttentionPadding,
    pub bias: AttentionBias,
    /// Query heads per key/value head (1: multi-head attention).
    pub group: usize,
    /// The factor on `q·k` (usually `1/√D`).
    pub scale: f64,
    /// Queries per tile.
    pub tile_q: usize,
    /// Keys per tile.
    pub tile_k: usize,
}

impl PartialEq for Attention {
    fn eq(&self, other: &Attention) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Attention {}

impl std::hash::Hash for Attention {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// Every parameter of an [`Attention`], the scale as its bits.
type AttentionKey = (
    AttentionMask,
    AttentionPadding,
    AttentionBias,
    usize,
    u64,
    usize,
    usize,
);

impl Attention {
    /// Everything, with the scale as bits (so equality and hashing agree, as for literals).
    fn key(&self) -> AttentionKey {
        (
            self.mask,
            self.padding,
            self.bias,
            self.group,
            self.scale.to_bits(),
            self.tile_q,
            self.tile_k,
        )
    }

    /// Operands: `q, k, v`, unless the mask is `none` the query positions, and under
    /// `padding=left` the rows' padding.
    pub fn arity(&self) -> usize {
        3 + self.positions_slot().is_some() as usize + self.padding_slot().is_some() as usize
    }

    /// The operand slot of the query positions, if the op has them.
    pub fn positions_slot(&self) -> Option<usize> {
        (self.mask != AttentionMask::None).then_some(3)
    }

    /// The operand slot of the rows' padding, if the op has it.
    pub fn padding_slot(&self) -> Option<usize> {
        let after_positions = 3 + self.positions_slot().is_some() as usize;
        (self.padding == AttentionPadding::Left).then_some(after_positions)
    }

    /// The keys `lo..hi` (of `keys`) a query at `position` sees in a row with `padding` filler
    /// keys (0 without [`AttentionPadding::Left`]), as one range: every mask kind allows a
    /// contiguous run of positions from 0 up, and key `j` is at position `j − padding`. Empty
    /// when it sees none. Kernels compute the same bounds: the lowest visible position (0, or
    /// the window's start if later) and the one past the highest, each shifted by the padding
    /// and clamped to the keys.
    pub fn visible_keys(&self, position: i64, keys: usize, padding: i64) -> Range<usize> {
        let t = keys as i64;
        let key = |position: i64| (position.saturating_add(padding)).clamp(0, t) as usize;
        let next = position.saturating_add(1);
        match self.mask {
            AttentionMask::None => key(0)..keys,
            AttentionMask::Causal => key(0)..key(next),
            AttentionMask::Window(w) => key((next - w as i64).max(0))..key(next),
            AttentionMask::Prefix(n) => key(0)..key(next.max(n as i64)),
        }
    }

    /// The attributes in the canonical text form.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mask = match self.mask {
            AttentionMask::None => "none".to_string(),
            AttentionMask::Causal => "causal".to_string(),
            AttentionMask::Window(w) => format!("window({w})"),
            AttentionMask::Prefix(n) => format!("prefix({n})"),
        };
        let bias = match self.bias {
            AttentionBias::None => "none",
        };
        let padding = match self.padding {
            AttentionPadding::None => "none",
            AttentionPadding::Left => "left",
        };
        vec![
            ("mask", mask),
            ("padding", padding.to_string()),
            ("bias", bias.to_string()),
            ("group", self.group.to_string()),
            ("scale", format!("{:?}", self.scale)),
            ("tile_q", self.tile_q.to_string()),
            ("tile_k", self.tile_k.to_string()),
        ]
    }

    /// Reads the attributes printed by [`Attention::attributes`].
    pub fn from_attributes(attrs: &HashMap<&str, &str>) -> Result<Attention, String> {
        let get = |key: &str| {
            attrs
                .get(key)
                .copied()
                .ok_or_else(|| format!("flash_attention needs `{key}=`"))
        };
        let count = |key: &str| -> Result<usize, String> {
            let s = get(key)?;
            s.parse().map_err(|_| format!("bad {key} `{s}`"))
        };
        let mask = get("mask")?;
        let argument = |kind: &str| -> Option<Result<usize, String>> {
            let inner = mask
                .strip_prefix(kind)?
                .strip_prefix('(')?
                .strip_suffix(')')?;
            Some(inner.parse().map_err(|_| format!("bad mask `{mask}`")))
        };
        let mask = match mask {
            "none" => AttentionMask::None,
            "causal" => AttentionMask::Causal,
            _ => match (argument("window"), argument("prefix")) {
                (Some(w), _) => AttentionMask::Window(w?),
                (_, Some(n)) => AttentionMask::Prefix(n?),
                _ => return Err(format!("unknown mask `{mask}`")),
            },
        };
        let padding = match get("padding")? {
            "none" => AttentionPadding::None,
            "left" => AttentionPadding::Left,
            other => return Err(format!("unknown padding `{other}`")),
        };
        let bias = match get("bias")? {
            "none" => AttentionBias::None,
            other => return Err(format!("unknown bias `{other}`")),
        };
        let scale = get("scale")?;
        Ok(Attention {
            mask,
            padding,
            bias,
            group: count("group")?,
            scale: scale.parse().map_err(|_| format!("bad scale `{scale}`"))?,
            tile_q: count("tile_q")?,
            tile_k: count("tile_k")?,
        })
    }

    /// The result type of `flash_attention_lse` for the given operands.
    pub fn infer_lse(&self, operands: &[&TensorType]) -> Result<TensorType, String> {
        let out = self.infer(operands)?;
        Ok(TensorType::new(DType::F32, out.shape[..3].to_vec()))
    }

    /// The result type of `flash_attention_grad_*` by `wrt`, whose operands are the forward's,
    /// then its result, the result's cotangent and the log-sum-exp.
    pub fn infer_grad(
        &self,
        wrt: AttentionInput,
        operands: &[&TensorType],
        declared: Option<&TensorType>,
    ) -> Result<TensorType, String> {
        let n = self.arity();
        if operands.len() != n + 3 {
            return Err(format!(
                "{} takes {} operands, got {}",
                wrt.grad_name(),
                n + 3,
                operands.len()
            ));
        }
        let out = self.infer(&operands[..n])?;
        let lse = self.infer_lse(&operands[..n])?;
        let (o, d_out, l) = (operands[n], operands[n + 1], operands[n + 2]);
        // The result and its cotangent may be as narrow as the operands.
        let fits = |t: &TensorType| {
            t.shape == out.shape && (t.dtype == DType::F32 || t.dtype == operands[0].dtype)
        };
        if !fits(o) || !fits(d_out) || *l != lse {
            let narrow = match operands[0].dtype {
                DType::F32 => String::new(),
                dtype => format!(" (or {dtype})"),
            };
            return Err(format!(
                "{} expects the result {out}{narrow}, its cotangent {out}{narrow} and the \
                 log-sum-exp {lse}, got {o}, {d_out} and {l}",
                wrt.grad_name()
            ));
        }
        // f32, or the operands' narrow type where the node declares it.
        let narrow = operands[0].dtype;
        let dtype = match declared {
            Some(t) if narrow != DType::F32 && t.dtype == narrow => narrow,
            _ => DType::F32,
        };
        Ok(TensorType::new(dtype, operands[wrt.slot()].shape.clone()))
    }

    /// The result type for the given operands (the typing rule in the module doc).
    pub fn infer(&self, operands: &[&TensorType]) -> Result<TensorType, String> {
        if self.group == 0 || self.tile_q == 0 || self.tile_k == 0 {
            return Err("flash_attention group and tiles must be at least 1".into());
        }
        if !self.scale.is_finite() {
            return Err(format!(
                "flash_attention scale {} is not finite",
                self.scale
            ));
        }
        if self.mask == AttentionMask::Window(0) {
            return Err("a sliding window must be at least 1 key wide".into());
        }
        let (q, k, v) = (operands[0], operands[1], operands[2]);
        for (name, t) in [("queries", q), ("keys", k), ("values", v)] {
            if !matches!(t.dtype, DType::F32 | DType::BF16) || t.rank() != 4 {
                return Err(format!(
                    "flash_attention {name} must be f32 or bf16 of rank 4, got {t}"
                ));
            }
        }
        if k.dtype != q.dtype || v.dtype != q.dtype {
            return Err(format!(
                "flash_attention operands must share one type: queries {q}, keys {k}, values {v}"
            ));
        }
        let (batch, heads, seq) = (&q.shape[0], &q.shape[1], &q.shape[2]);
        let kv_heads = &k.shape[1];
        let grouped = match (heads.as_fixed(), kv_heads.as_fixed()) {
            (Some(h), Some(kv)) => h == kv * self.group,
            _ => self.group == 1 && heads == kv_heads,
        };
        let fits = k.shape[0] == *batch
            && v.shape[0] == *batch
            && grouped
            && v.shape[1] == *kv_heads
            && v.shape[2] == k.shape[2]
            && k.shape[3] == q.shape[3];
        if !fits {
            return Err(format!(
                "flash_attention operands do not fit: queries {q}, keys {k}, values {v}, \
                 group {}",
                self.group
            ));
        }
        if let Some(p) = self.positions_slot().and_then(|i| operands.get(i)) {
            if !p.dtype.is_int() || p.shape != [batch.clone(), seq.clone()] {
                return Err(format!(
                    "flash_attention positions must be integers [{batch}, {seq}], got {p}"
                ));
            }
        }
        if let Some(p) = self.padding_slot().and_then(|i| operands.get(i)) {
            if !p.dtype.is_int() || p.shape != [batch.clone()] {
                return Err(format!(
                    "flash_attention padding must be integers [{batch}], got {p}"
                ));
            }
        }
        let shape: Vec<Dim> = vec![
            batch.clone(),
            heads.clone(),
            seq.clone(),
            v.shape[3].clone(),
        ];
        Ok(TensorType::new(DType::F32, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mask(mask: AttentionMask) -> Attention {
        Attention {
            mask,
            padding: AttentionPadding::None,
            bias: AttentionBias::None,
            group: 1,
            scale: 1.0,
            tile_q: 1,
            tile_k: 1,
        }
    }

    #[test]
    fn visible_keys_follow_each_mask() {
        let keys = |mask, position, padding| with_mask(mask).visible_keys(position, 5, padding);
        assert_eq!(keys(AttentionMask::None, 2, 0), 0..5);
        assert_eq!(keys(AttentionMask::Causal, 2, 0), 0..3);
        assert_eq!(keys(AttentionMask::Causal, 9, 0), 0..5);
        assert_eq!(keys(AttentionMask::Window(2), 3, 0), 2..4);
        assert_eq!(keys(AttentionMask::Window(2), 8, 0), 5..5);
        assert_eq!(keys(AttentionMask::Prefix(3), 0, 0), 0..3);
        assert_eq!(keys(AttentionMask::Prefix(3), 3, 0), 0..4);
        // Two filler keys: position p is key p + 2, and keys 0 and 1 are never seen.
        assert_eq!(keys(AttentionMask::None, 0, 2), 2..5);
        assert_eq!(keys(AttentionMask::Causal, 0, 2), 2..3);
        assert_eq!(keys(AttentionMask::Causal, 2, 2), 2..5);
        assert_eq!(keys(AttentionMask::Window(2), 0, 2), 2..3);
        assert_eq!(keys(AttentionMask::Window(2), 2, 2), 3..5);
        assert_eq!(keys(AttentionMask::Prefix(2), 0, 2), 2..4);
        // More padding than keys, or a negative one (key j at position j + 1).
        assert_eq!(keys(AttentionMask::Causal, 1, 7), 5..5);
        assert_eq!(keys(AttentionMask::Causal, 1, -1), 0..1);
    }

    #[test]
    fn text_round_trip_and_bad_attributes() {
        let text = "graph g
sym s <= 8
input %q : f32[1, 4, s, 8]
input %k : f32[1, 2, s, 8]
input %v : f32[1, 2, s, 4]
input %pos : i64[1, s]
input %pad : i64[1]
%0 = flash_attention %q, %k, %v, %pos mask=window(3) padding=none bias=none group=2 scale=0.125 tile_q=16 tile_k=64 : f32[1, 4, s, 4]
%1 = flash_attention %q, %k, %v, %pos, %pad mask=causal padding=left bias=none group=2 scale=0.125 tile_q=16 tile_k=64 : f32[1, 4, s, 4]
output y = %0
output z = %1
";
        let g = crate::text::parse(text).unwrap();
        assert_eq!(crate::text::print(&g), text);
        for (from, to, error) in [
            ("window(3)", "diagonal", "unknown mask `diagonal`"),
            ("padding=left", "padding=right", "unknown padding `right`"),
            (", %pad mask", ", %pos mask", "padding must be integers [1]"),
            ("group=2", "group=3", "operands do not fit"),
            ("tile_q=16", "tile_q=0", "tiles must be at least 1"),
            (
                ", %pos mask=window(3)",
                " mask=window(3)",
                "takes 4 operands",
            ),
        ] {
            let e = crate::text::parse(&text.replace(from, to)).unwrap_err();
            assert!(e.to_string().contains(error), "{from} → {to}: {e}");
        }
    }
}
