//! Self-attention in primitives: projections, RoPE, the KV cache append, the explicit repeat of
//! KV heads, scaled scores, the causal / sliding-window mask, softmax and the output projection.

use super::layers::linear;
use crate::spec::{Attention, AttentionWindow};
use kiln_ir::{
    BinaryOp, DType, Dim, Graph, IrError, Literal, NodeId, ReduceOp, TensorType, UnaryOp,
};

type R = Result<NodeId, IrError>;

/// Cos and sin of every position's rotation angles, `f32[batch, 1, seq, head_dim]`, ready to
/// broadcast over heads.
pub struct RopeAngles {
    pub cos: NodeId,
    pub sin: NodeId,
}

pub fn rope_angles(
    g: &mut Graph,
    positions: NodeId,
    inv_freq: &[f64],
    scaling: f64,
) -> Result<RopeAngles, IrError> {
    let shape = g.ty(positions).shape.clone();
    let (batch, seq) = (shape[0].clone(), shape[1].clone());
    let half = inv_freq.len();
    let pos = g.cast(positions, DType::F32)?;
    let pos = g.reshape(pos, vec![batch.clone(), seq.clone(), Dim::fixed(1)])?;
    let inv_values = inv_freq.iter().map(|&f| f as f32 as f64).collect();
    let inv = g.constant(
        TensorType::fixed(DType::F32, &[half]),
        Literal::Dense(inv_values),
    )?;
    let freqs = g.mul(pos, inv)?;
    let emb = g.concat(&[freqs, freqs], 2)?;
    let emb = g.reshape(emb, vec![batch, Dim::fixed(1), seq, Dim::fixed(2 * half)])?;
    let mut cos = g.unary(UnaryOp::Cos, emb)?;
    let mut sin = g.unary(UnaryOp::Sin, emb)?;
    if scaling != 1.0 {
        cos = g.binary_scalar(BinaryOp::Mul, cos, scaling)?;
        sin = g.binary_scalar(BinaryOp::Mul, sin, scaling)?;
    }
    g.set_label(cos, "rope.cos");
    g.set_label(sin, "rope.sin");
    Ok(RopeAngles { cos, sin })
}

/// `x·cos + rotate_half(x)·sin`, where `rotate_half(x) = [-x₂, x₁]` over the last axis.
fn apply_rope(g: &mut Graph, x: NodeId, angles: &RopeAngles) -> R {
    let d = g.ty(x).shape[3].as_fixed().expect("fixed head_dim");
    let first = g.slice(x, 3, Dim::fixed(0), Dim::fixed(d / 2))?;
    let second = g.slice(x, 3, Dim::fixed(d / 2), Dim::fixed(d))?;
    let neg = g.unary(UnaryOp::Neg, second)?;
    let rotated = g.concat(&[neg, first], 3)?;
    let a = g.mul(x, angles.cos)?;
    let b = g.mul(rotated, angles.sin)?;
    g.add(a, b)
}

/// `[batch, seq, heads·d]` → `[batch, heads, seq, d]`.
fn split_heads(g: &mut Graph, x: NodeId, heads: usize, d: usize) -> R {
    let shape = g.ty(x).shape.clone();
    let x = g.reshape(
        x,
        vec![
            shape[0].clone(),
            shape[1].clone(),
            Dim::fixed(heads),
            Dim::fixed(d),
        ],
    )?;
    g.permute(x, &[0, 2, 1, 3])
}

/// `[batch, kv_heads, t, d]` → `[batch, kv_heads·group, t, d]`, each KV head repeated `group`
/// times in a row (transformers' `repeat_kv`).
fn repeat_kv(g: &mut Graph, x: NodeId, group: usize) -> R {
    if group == 1 {
        return Ok(x);
    }
    let s = g.ty(x).shape.clone();
    let kv = s[1].as_fixed().expect("fixed kv_heads");
    let x = g.reshape(
        x,
        vec![
            s[0].clone(),
            s[1].clone(),
            Dim::fixed(1),
            s[2].clone(),
            s[3].clone(),
        ],
    )?;
    let x = g.broadcast_to(
        x,
        &[
            s[0].clone(),
            s[1].clone(),
            Dim::fixed(group),
            s[2].clone(),
            s[3].clone(),
        ],
    )?;
    let y = g.reshape(
        x,
        vec![
            s[0].clone(),
            Dim::fixed(kv * group),
            s[2].clone(),
            s[3].clone(),
        ],
    )?;
    g.set_label(y, "repeat_kv");
    Ok(y)
}

/// Where the tokens of a program's sequences sit.
#[derive(Clone, Copy)]
pub struct Positions {
    /// `position_ids`, `i64[batch, seq]`: each query's position.
    pub queries: NodeId,
    /// `left_padding`, `i64[batch]`: filler keys before each row's sequence in the cache (key
    /// `j` is at position `j − left_padding[b]`); absent in the training programs, whose
    /// sequences all start at key 0.
    pub padding: Option<NodeId>,
}

/// Which keys each query may see: key position ≤ query position (and, in a sliding window of
/// `w`, key position > query position − w), and with padding key position ≥ 0 (no filler key).
/// `bool[batch, 1, seq, t]`.
fn mask(g: &mut Graph, positions: Positions, t: Dim, window: &AttentionWindow) -> R {
    let shape = g.ty(positions.queries).shape.clone();
    let one = Dim::fixed(1);
    let qpos = g.reshape(
        positions.queries,
        vec![shape[0].clone(), one.clone(), shape[1].clone(), one.clone()],
    )?;
    let mut kpos = g.iota(
        TensorType::new(DType::I64, vec![one.clone(), one.clone(), one.clone(), t]),
        3,
    )?;
    if let Some(padding) = positions.padding {
        let padding = g.reshape(
            padding,
            vec![shape[0].clone(), one.clone(), one.clone(), one],
        )?;
        kpos = g.binary(BinaryOp::Sub, kpos, padding)?;
    }
    let mut allowed = g.binary(BinaryOp::Le, kpos, qpos)?;
    if let AttentionWindow::Sliding(w) = window {
        let lowest = g.binary_scalar(BinaryOp::Sub, qpos, *w as f64)?;
        let inside = g.binary(BinaryOp::Gt, kpos, lowest)?;
        allowed = g.binary(BinaryOp::And, allowed, inside)?;
    }
    if positions.padding.is_some() {
        let zero = g.scalar(DType::I64, 0.0)?;
        let real = g.binary(BinaryOp::Ge, kpos, zero)?;
        allowed = g.binary(BinaryOp::And, allowed, real)?;
    }
    g.set_label(allowed, "attention.mask");
    Ok(allowed)
}

/// Softmax over the last axis: `exp(x - max) / Σ exp(x - max)`.
fn softmax(g: &mut Graph, x: NodeId) -> R {
    let axis = g.ty(x).rank() - 1;
    let m = g.reduce(ReduceOp::Max, x, &[axis])?;
    let shifted = g.sub(x, m)?;
    let e = g.unary(UnaryOp::Exp, shifted)?;
    let s = g.reduce(ReduceOp::Sum, e, &[axis])?;
    g.div(e, s)
}

pub struct LayerCache {
    pub key: NodeId,
    pub value: NodeId,
}

/// One attention sublayer. `past` is the layer's cache so far (decode); the returned cache holds
/// every key and value up to and including this step.
#[allow(clippy::too_many_arguments)]
pub fn self_attention(
    g: &mut Graph,
    x: NodeId,
    prefix: &str,
    hidden: usize,
    cfg: &Attention,
    window: &AttentionWindow,
    positions: Positions,
    angles: &RopeAngles,
    past: Option<LayerCache>,
) -> Result<(NodeId, LayerCache), IrError> {
    let (h, kvh, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let q = linear(
        g,
        x,
        &format!("{prefix}.q_proj"),
        hidden,
        h * d,
        cfg.qkv_bias,
    )?;
    let k = linear(
        g,
        x,
        &format!("{prefix}.k_proj"),
        hidden,
        kvh * d,
        cfg.qkv_bias,
    )?;
    let v = linear(
        g,
        x,
        &format!("{prefix}.v_proj"),
        hidden,
        kvh * d,
        cfg.qkv_bias,
    )?;
    let q = split_heads(g, q, h, d)?;
    let k = split_heads(g, k, kvh, d)?;
    let v = split_heads(g, v, kvh, d)?;
    let q = apply_rope(g, q, angles)?;
    let k = apply_rope(g, k, angles)?;
    let (k, v) = match past {
        Some(past) => (g.concat(&[past.key, k], 2)?, g.concat(&[past.value, v], 2)?),
        None => (k, v),
    };
    let t = g.ty(k).shape[2].clone();
    let k_rep = repeat_kv(g, k, h / kvh)?;
    let v_rep = repeat_kv(g, v, h / kvh)?;
    let kt = g.transpose_last(k_rep)?;
    let scores = g.matmul(q, kt)?;
    let scores = g.binary_scalar(BinaryOp::Mul, scores, 1.0 / (d as f64).sqrt())?;
    let allowed = mask(g, positions, t, window)?;
    let neg_inf = g.scalar(DType::F32, f64::NEG_INFINITY)?;
    let scores = g.select(allowed, scores, neg_inf)?;
    let probs = softmax(g, scores)?;
    g.set_label(probs, format!("{prefix}.probs"));
    let out = g.matmul(probs, v_rep)?;
    let out = g.permute(out, &[0, 2, 1, 3])?;
    let shape = g.ty(out).shape.clone();
    let out = g.reshape(
        out,
        vec![shape[0].clone(), shape[1].clone(), Dim::fixed(h * d)],
    )?;
    let y = linear(
        g,
        out,
        &format!("{prefix}.o_proj"),
        h * d,
        hidden,
        cfg.out_bias,
    )?;
    Ok((y, LayerCache { key: k, value: v }))
}
