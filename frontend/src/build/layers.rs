//! The dense building blocks of a decoder layer, written in IR primitives: linear projections,
//! RMSNorm, activations and the gated MLP.

use crate::spec::{Activation, Ffn};
use kiln_ir::{BinaryOp, DType, Dim, Graph, IrError, NodeId, ReduceOp, TensorType, UnaryOp};

type R = Result<NodeId, IrError>;

/// `x · Wᵀ (+ b)` with a Hugging Face `[out, in]` weight named `{name}.weight` (and `.bias`).
pub fn linear(
    g: &mut Graph,
    x: NodeId,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> R {
    let w = g.weight(
        &format!("{name}.weight"),
        TensorType::fixed(DType::F32, &[out_dim, in_dim]),
    )?;
    let wt = g.transpose_last(w)?;
    let mut y = g.matmul(x, wt)?;
    if bias {
        let b = g.weight(
            &format!("{name}.bias"),
            TensorType::fixed(DType::F32, &[out_dim]),
        )?;
        y = g.add(y, b)?;
    }
    g.set_label(y, name);
    Ok(y)
}

/// `x · rsqrt(mean(x²) + eps) · w` over the last axis, in the order transformers computes it.
pub fn rms_norm(g: &mut Graph, x: NodeId, name: &str, eps: f64) -> R {
    let hidden = g
        .ty(x)
        .shape
        .last()
        .and_then(Dim::as_fixed)
        .expect("fixed hidden size");
    let axis = g.ty(x).rank() - 1;
    let w = g.weight(
        &format!("{name}.weight"),
        TensorType::fixed(DType::F32, &[hidden]),
    )?;
    let sq = g.mul(x, x)?;
    let mean = g.reduce(ReduceOp::Mean, sq, &[axis])?;
    let shifted = g.binary_scalar(BinaryOp::Add, mean, eps)?;
    let inv = g.unary(UnaryOp::Rsqrt, shifted)?;
    let normed = g.mul(x, inv)?;
    let y = g.mul(normed, w)?;
    g.set_label(y, name);
    Ok(y)
}

pub fn activation(g: &mut Graph, x: NodeId, act: Activation) -> R {
    match act {
        Activation::Silu => {
            let s = g.unary(UnaryOp::Sigmoid, x)?;
            g.mul(x, s)
        }
        Activation::Relu => g.binary_scalar(BinaryOp::Max, x, 0.0),
        Activation::Gelu => {
            // 0.5·x·(1 + erf(x/√2))
            let scaled = g.binary_scalar(BinaryOp::Mul, x, std::f64::consts::FRAC_1_SQRT_2)?;
            let erf = g.unary(UnaryOp::Erf, scaled)?;
            half_x_one_plus(g, x, erf)
        }
        Activation::GeluTanh => {
            // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            let x2 = g.mul(x, x)?;
            let x3 = g.mul(x2, x)?;
            let cubic = g.binary_scalar(BinaryOp::Mul, x3, 0.044715)?;
            let inner = g.add(x, cubic)?;
            let scaled =
                g.binary_scalar(BinaryOp::Mul, inner, (2.0 / std::f64::consts::PI).sqrt())?;
            let t = g.unary(UnaryOp::Tanh, scaled)?;
            half_x_one_plus(g, x, t)
        }
    }
}

fn half_x_one_plus(g: &mut Graph, x: NodeId, t: NodeId) -> R {
    let one_plus = g.binary_scalar(BinaryOp::Add, t, 1.0)?;
    let half_x = g.binary_scalar(BinaryOp::Mul, x, 0.5)?;
    g.mul(half_x, one_plus)
}

/// `down(act(gate(x)) ⊙ up(x))`.
pub fn gated_mlp(g: &mut Graph, x: NodeId, prefix: &str, hidden: usize, ffn: &Ffn) -> R {
    let n = ffn.intermediate_size;
    let gate = linear(g, x, &format!("{prefix}.gate_proj"), hidden, n, ffn.bias)?;
    let up = linear(g, x, &format!("{prefix}.up_proj"), hidden, n, ffn.bias)?;
    let act = activation(g, gate, ffn.activation)?;
    let h = g.mul(act, up)?;
    linear(g, h, &format!("{prefix}.down_proj"), n, hidden, ffn.bias)
}
