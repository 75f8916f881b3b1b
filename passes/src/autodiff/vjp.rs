//! The vector–Jacobian product of every differentiable op: given the cotangent `ḡ` of a node's
//! result, the cotangent of each operand (`None`: not wanted, or the operand has no derivative).
//!
//! Conventions, stated once: `max`/`min` send the whole cotangent to the first operand on a tie;
//! `reduce_max` shares it evenly among the tied maxima; `abs` has derivative 0 at 0; `scatter`
//! (replace) assumes its indices are distinct, as its value does. The cotangent of a value has
//! the value's type; a matmul whose `bf16`/`f16` operands accumulate to `f32` casts the
//! cotangents back to the operands' type.

use kiln_ir::{
    AttentionInput, BinaryOp, Dim, Graph, IrError, Literal, NodeId, Op, ReduceOp, ScatterMode,
    TensorType, UnaryOp,
};

type R = Result<NodeId, IrError>;

/// The cotangents of `id`'s operands for cotangent `cot` of its result, for the operands marked
/// in `wanted`.
pub fn vjp(
    g: &mut Graph,
    id: NodeId,
    cot: NodeId,
    wanted: &[bool],
) -> Result<Vec<Option<NodeId>>, IrError> {
    let op = g.node(id).op.clone();
    let xs = g.operands(id);
    let y = id;
    let mut out: Vec<Option<NodeId>> = vec![None; xs.len()];
    // One closure per operand slot would fight the borrow checker; `want(i)` reads the mask.
    let want = |i: usize| wanted.get(i).copied().unwrap_or(false);
    match op {
        Op::Input { .. } | Op::Weight { .. } | Op::Const(_) | Op::Iota { .. } => {}
        Op::Unary(u) => out[0] = Some(unary(g, u, xs[0], y, cot)?),
        Op::Binary(b) if !b.is_compare() && g.ty(y).dtype.is_float() => {
            let (a, b_) = (xs[0], xs[1]);
            let [da, db] = binary(g, b, a, b_, y, cot, [want(0), want(1)])?;
            out[0] = da;
            out[1] = db;
        }
        Op::Binary(_) => {}
        Op::Select => {
            let zero = zeros_like(g, cot)?;
            if want(1) {
                out[1] = Some(g.select(xs[0], cot, zero)?);
            }
            if want(2) {
                out[2] = Some(g.select(xs[0], zero, cot)?);
            }
        }
        Op::Cast => {
            let dtype = g.ty(xs[0]).dtype;
            if dtype.is_float() {
                out[0] = Some(g.cast(cot, dtype)?);
            }
        }
        Op::Reduce { op, axes } => out[0] = Some(reduce(g, op, &axes, xs[0], y, cot)?),
        Op::MatMul => {
            let (a, b) = (xs[0], xs[1]);
            if want(0) {
                let bt = transposed_as(g, b, cot)?;
                let da = g.matmul(cot, bt)?;
                out[0] = Some(sum_to(g, da, g.ty(a).clone())?);
            }
            if want(1) {
                let at = transposed_as(g, a, cot)?;
                let db = g.matmul(at, cot)?;
                out[1] = Some(sum_to(g, db, g.ty(b).clone())?);
            }
        }
        Op::Reshape => out[0] = Some(g.reshape(cot, g.ty(xs[0]).shape.clone())?),
        Op::Permute { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            out[0] = Some(g.permute(cot, &inverse)?);
        }
        Op::Broadcast => out[0] = Some(sum_to(g, cot, g.ty(xs[0]).clone())?),
        Op::Slice { axis, start, end } => out[0] = Some(unslice(g, cot, xs[0], axis, start, end)?),
        Op::Concat { axis } => {
            let mut offset = Dim::fixed(0);
            for (i, &x) in xs.iter().enumerate() {
                let end = offset.plus(&g.ty(x).shape[axis]);
                if want(i) {
                    out[i] = Some(g.slice(cot, axis, offset.clone(), end.clone())?);
                }
                offset = end;
            }
        }
        Op::Gather { axis } => {
            if want(0) {
                let zero = zeros(g, g.ty(xs[0]).clone())?;
                out[0] = Some(scatter(g, ScatterMode::Add, axis, zero, xs[1], cot)?);
            }
        }
        Op::Scatter { axis, mode } => {
            if want(0) {
                out[0] = Some(match mode {
                    ScatterMode::Add => cot,
                    ScatterMode::Replace => {
                        let zero = zeros(g, g.ty(xs[2]).clone())?;
                        scatter(g, ScatterMode::Replace, axis, cot, xs[1], zero)?
                    }
                });
            }
            if want(2) {
                out[2] = Some(g.gather(cot, xs[1], axis)?);
            }
        }
        Op::Fused(_) => {
            return Err(IrError::new(
                "fused regions are expanded before differentiation",
            ))
        }
        // The backward recomputes the probabilities from the log-sum-exp (`attention.rs`).
        Op::FlashAttention(attention) => {
            let forward = &xs[..attention.arity()];
            let lse = g.push(Op::FlashAttentionLse(attention.clone()), forward)?;
            for wrt in AttentionInput::ALL {
                if want(wrt.slot()) {
                    let operands: Vec<NodeId> =
                        forward.iter().copied().chain([y, cot, lse]).collect();
                    let grad = Op::FlashAttentionGrad {
                        attention: attention.clone(),
                        wrt,
                    };
                    out[wrt.slot()] = Some(g.push(grad, &operands)?);
                }
            }
        }
        Op::FlashAttentionLse(_) | Op::FlashAttentionGrad { .. } => {
            return Err(IrError::new(
                "the backward of `flash_attention` is not differentiated again",
            ))
        }
        Op::StopGradient => {}
        Op::Grad => {
            return Err(IrError::new(
                "a `grad` on the path to the loss: higher derivatives are not supported",
            ))
        }
    }
    Ok(out)
}

fn unary(g: &mut Graph, op: UnaryOp, x: NodeId, y: NodeId, cot: NodeId) -> R {
    match op {
        UnaryOp::Neg => g.unary(UnaryOp::Neg, cot),
        UnaryOp::Abs => {
            let zero = zeros_like(g, cot)?;
            let positive = g.binary(BinaryOp::Gt, x, zero)?;
            let negative = g.binary(BinaryOp::Lt, x, zero)?;
            let minus = g.unary(UnaryOp::Neg, cot)?;
            let below = g.select(negative, minus, zero)?;
            g.select(positive, cot, below)
        }
        UnaryOp::Exp => g.mul(cot, y),
        UnaryOp::Log => g.div(cot, x),
        // d√x = 1 / (2√x)
        UnaryOp::Sqrt => {
            let half = g.binary_scalar(BinaryOp::Mul, cot, 0.5)?;
            g.div(half, y)
        }
        // d(x^-½) = -½ x^-3/2 = -½ y³
        UnaryOp::Rsqrt => {
            let y2 = g.mul(y, y)?;
            let y3 = g.mul(y2, y)?;
            let d = g.binary_scalar(BinaryOp::Mul, y3, -0.5)?;
            g.mul(cot, d)
        }
        // d(1/x) = -1/x² = -y²
        UnaryOp::Recip => {
            let y2 = g.mul(y, y)?;
            let d = g.unary(UnaryOp::Neg, y2)?;
            g.mul(cot, d)
        }
        UnaryOp::Tanh => {
            let y2 = g.mul(y, y)?;
            let one = g.scalar(g.ty(y).dtype, 1.0)?;
            let d = g.sub(one, y2)?;
            g.mul(cot, d)
        }
        // d erf(x) = 2/√π · e^(-x²)
        UnaryOp::Erf => {
            let x2 = g.mul(x, x)?;
            let minus = g.unary(UnaryOp::Neg, x2)?;
            let e = g.unary(UnaryOp::Exp, minus)?;
            let d = g.binary_scalar(BinaryOp::Mul, e, std::f64::consts::FRAC_2_SQRT_PI)?;
            g.mul(cot, d)
        }
        UnaryOp::Sigmoid => {
            let one = g.scalar(g.ty(y).dtype, 1.0)?;
            let rest = g.sub(one, y)?;
            let d = g.mul(y, rest)?;
            g.mul(cot, d)
        }
        UnaryOp::Sin => {
            let d = g.unary(UnaryOp::Cos, x)?;
            g.mul(cot, d)
        }
        UnaryOp::Cos => {
            let s = g.unary(UnaryOp::Sin, x)?;
            let d = g.unary(UnaryOp::Neg, s)?;
            g.mul(cot, d)
        }
        UnaryOp::Not => Err(IrError::new("`not` has no derivative")),
    }
}

fn binary(
    g: &mut Graph,
    op: BinaryOp,
    a: NodeId,
    b: NodeId,
    y: NodeId,
    cot: NodeId,
    want: [bool; 2],
) -> Result<[Option<NodeId>; 2], IrError> {
    let mut da = None;
    let mut db = None;
    match op {
        BinaryOp::Add => {
            da = Some(cot);
            db = Some(cot);
        }
        BinaryOp::Sub => {
            da = Some(cot);
            if want[1] {
                db = Some(g.unary(UnaryOp::Neg, cot)?);
            }
        }
        BinaryOp::Mul => {
            if want[0] {
                da = Some(g.mul(cot, b)?);
            }
            if want[1] {
                db = Some(g.mul(cot, a)?);
            }
        }
        // d(a/b)/da = 1/b, d(a/b)/db = -a/b² = -y/b
        BinaryOp::Div => {
            if want[0] {
                da = Some(g.div(cot, b)?);
            }
            if want[1] {
                let t = g.mul(cot, y)?;
                let t = g.div(t, b)?;
                db = Some(g.unary(UnaryOp::Neg, t)?);
            }
        }
        BinaryOp::Max | BinaryOp::Min => {
            let first = if op == BinaryOp::Max {
                BinaryOp::Ge
            } else {
                BinaryOp::Le
            };
            let takes_a = g.binary(first, a, b)?;
            let zero = zeros_like(g, cot)?;
            if want[0] {
                da = Some(g.select(takes_a, cot, zero)?);
            }
            if want[1] {
                db = Some(g.select(takes_a, zero, cot)?);
            }
        }
        // d(aᵇ)/da = b·aᵇ⁻¹, d(aᵇ)/db = ln(a)·aᵇ
        BinaryOp::Pow => {
            if want[0] {
                let b1 = g.binary_scalar(BinaryOp::Sub, b, 1.0)?;
                let p = g.binary(BinaryOp::Pow, a, b1)?;
                let d = g.mul(b, p)?;
                da = Some(g.mul(cot, d)?);
            }
            if want[1] {
                let ln = g.unary(UnaryOp::Log, a)?;
                let d = g.mul(ln, y)?;
                db = Some(g.mul(cot, d)?);
            }
        }
        _ => return Err(IrError::new(format!("`{}` has no derivative", op.name()))),
    }
    Ok([da, db])
}

fn reduce(g: &mut Graph, op: ReduceOp, axes: &[usize], x: NodeId, y: NodeId, cot: NodeId) -> R {
    let shape = g.ty(x).shape.clone();
    match op {
        ReduceOp::Sum => g.broadcast_to(cot, &shape),
        ReduceOp::Mean => {
            let count = count(g, x, axes)?;
            let share = g.div(cot, count)?;
            g.broadcast_to(share, &shape)
        }
        ReduceOp::Max => {
            let wide = g.broadcast_to(y, &shape)?;
            let hit = g.binary(BinaryOp::Eq, x, wide)?;
            let hit = g.cast(hit, g.ty(x).dtype)?;
            let ties = g.reduce(ReduceOp::Sum, hit, axes)?;
            let share = g.div(cot, ties)?;
            let share = g.broadcast_to(share, &shape)?;
            g.mul(share, hit)
        }
    }
}

/// The number of elements `reduce(x, axes)` combines into each result, as a value of the
/// reduced shape (a constant when the axes are fixed, else the sum of ones).
fn count(g: &mut Graph, x: NodeId, axes: &[usize]) -> R {
    let ty = g.ty(x).clone();
    let fixed: Option<usize> = axes.iter().map(|&a| ty.shape[a].as_fixed()).product();
    match fixed {
        Some(n) => g.scalar(ty.dtype, n as f64),
        None => {
            let ones = g.constant(ty, Literal::Splat(1.0))?;
            g.reduce(ReduceOp::Sum, ones, axes)
        }
    }
}

/// Sums `cot` over the axes a broadcast added or widened, back to `target`'s shape.
fn sum_to(g: &mut Graph, cot: NodeId, target: TensorType) -> R {
    let shape = g.ty(cot).shape.clone();
    let lead = shape.len() - target.rank();
    let axes: Vec<usize> = (0..shape.len())
        .filter(|&i| i < lead || (target.shape[i - lead].is_one() && !shape[i].is_one()))
        .collect();
    let summed = if axes.is_empty() {
        cot
    } else {
        g.reduce(ReduceOp::Sum, cot, &axes)?
    };
    let reshaped = g.reshape(summed, target.shape.clone())?;
    g.cast(reshaped, target.dtype)
}

/// `xᵀ` over its last two axes, in the cotangent's type.
fn transposed_as(g: &mut Graph, x: NodeId, cot: NodeId) -> R {
    let x = g.cast(x, g.ty(cot).dtype)?;
    g.transpose_last(x)
}

/// The cotangent of `slice(x, axis, start, end)`: `cot` between zeros.
fn unslice(g: &mut Graph, cot: NodeId, x: NodeId, axis: usize, start: Dim, end: Dim) -> R {
    let ty = g.ty(x).clone();
    let len = ty.shape[axis].clone();
    let mut parts = Vec::new();
    let zero_part = |g: &mut Graph, extent: Dim| {
        let mut shape = ty.shape.clone();
        shape[axis] = extent;
        zeros(g, TensorType::new(ty.dtype, shape))
    };
    if start != Dim::fixed(0) {
        parts.push(zero_part(g, start.clone())?);
    }
    parts.push(cot);
    if end != len {
        parts.push(zero_part(g, len.minus(&end))?);
    }
    if parts.len() == 1 {
        Ok(cot)
    } else {
        g.concat(&parts, axis)
    }
}

fn scatter(
    g: &mut Graph,
    mode: ScatterMode,
    axis: usize,
    data: NodeId,
    indices: NodeId,
    updates: NodeId,
) -> R {
    g.push(Op::Scatter { axis, mode }, &[data, indices, updates])
}

fn zeros(g: &mut Graph, ty: TensorType) -> R {
    g.constant(ty, Literal::Splat(0.0))
}

/// A rank-0 zero of `x`'s dtype (elementwise helpers broadcast it).
fn zeros_like(g: &mut Graph, x: NodeId) -> R {
    g.scalar(g.ty(x).dtype, 0.0)
}
