//! One plain-Rust implementation per op: the semantics of the IR, written to be obviously right
//! rather than fast. Float math is done in f64 and the result rounded to its type as the
//! [`Arithmetic`] says; reductions and matmul accumulate in f64.

use super::tensor::{strides, Arithmetic, Data, Tensor};
use crate::dim::Bindings;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::op::{BinaryOp, Literal, Op, ReduceOp, ScatterMode, UnaryOp};
use crate::region::{Region, RegionKind};
use crate::ty::TensorType;

/// Evaluates `op` on concrete operands, producing a tensor of the given dtype and shape (the
/// node's type under the current symbol bindings), its values rounded to the dtype.
pub fn eval(
    op: &Op,
    xs: &[&Tensor],
    dtype: DType,
    shape: Vec<usize>,
    env: &Bindings,
) -> Result<Tensor, String> {
    eval_with(op, xs, dtype, shape, env, Arithmetic::Native)
}

/// [`eval`] under the given arithmetic.
pub fn eval_with(
    op: &Op,
    xs: &[&Tensor],
    dtype: DType,
    shape: Vec<usize>,
    env: &Bindings,
    arithmetic: Arithmetic,
) -> Result<Tensor, String> {
    let numel: usize = shape.iter().product();
    let data = match op {
        Op::Input { .. } | Op::Weight { .. } => unreachable!("sources are bound, not evaluated"),
        Op::Const(Literal::Splat(v)) => Data::from_f64(dtype, std::iter::repeat_n(*v, numel)),
        Op::Const(Literal::Dense(vs)) => Data::from_f64(dtype, vs.iter().copied()),
        Op::Iota { axis } => {
            let st = strides(&shape);
            let values = (0..numel).map(|i| ((i / st[*axis]) % shape[*axis]) as f64);
            Data::from_f64(dtype, values)
        }
        Op::Unary(u) => unary(*u, &xs[0].data),
        Op::Binary(b) => binary(*b, &xs[0].data, &xs[1].data)?,
        Op::Select => {
            let Data::Bool(c) = &xs[0].data else {
                unreachable!("verified bool condition")
            };
            match (&xs[1].data, &xs[2].data) {
                (Data::Float(a), Data::Float(b)) => Data::Float(zip3(c, a, b)),
                (Data::Int(a), Data::Int(b)) => Data::Int(zip3(c, a, b)),
                (Data::Bool(a), Data::Bool(b)) => Data::Bool(zip3(c, a, b)),
                _ => unreachable!("verified same types"),
            }
        }
        Op::Cast => cast(xs[0], dtype),
        Op::Reduce { op, axes } => reduce(*op, xs[0], axes, &shape),
        Op::MatMul => matmul(xs[0], xs[1], &shape),
        Op::Reshape => xs[0].data.clone(),
        Op::Permute { perm } => {
            let src = strides(&xs[0].shape);
            let src_strides: Vec<usize> = perm.iter().map(|&p| src[p]).collect();
            xs[0].data.take(&map_indices(&shape, &src_strides))
        }
        Op::Broadcast => {
            let x = xs[0];
            let offset = shape.len() - x.shape.len();
            let src = strides(&x.shape);
            let mut src_strides = vec![0; shape.len()];
            for (i, &n) in x.shape.iter().enumerate() {
                src_strides[offset + i] = if n == 1 { 0 } else { src[i] };
            }
            x.data.take(&map_indices(&shape, &src_strides))
        }
        Op::Slice { axis, start, end } => {
            let x = xs[0];
            let (s, e) = (
                start.eval(env).ok_or("unbound slice start")?,
                end.eval(env).ok_or("unbound slice end")?,
            );
            if s > e || e > x.shape[*axis] {
                return Err(format!(
                    "slice {s}..{e} out of range for axis length {}",
                    x.shape[*axis]
                ));
            }
            let src = strides(&x.shape);
            let base = s * src[*axis];
            let idx: Vec<usize> = map_indices(&shape, &src)
                .into_iter()
                .map(|i| i + base)
                .collect();
            x.data.take(&idx)
        }
        Op::Concat { axis } => concat(xs, *axis, &shape),
        Op::Gather { axis } => {
            let (data, idx) = (xs[0], xs[1]);
            let pre: usize = data.shape[..*axis].iter().product();
            let len = data.shape[*axis];
            let post: usize = data.shape[axis + 1..].iter().product();
            let indices = int_values(idx, len)?;
            let mut out = Vec::with_capacity(numel);
            for p in 0..pre {
                for &i in &indices {
                    out.extend((0..post).map(|q| (p * len + i) * post + q));
                }
            }
            data.data.take(&out)
        }
        Op::Scatter { axis, mode } => scatter(xs, *axis, *mode)?,
        Op::Fused(region) => return fused(region, xs, dtype, shape, env, arithmetic),
        Op::FlashAttention(attention) => super::attention::eval(attention, xs, arithmetic)?,
        Op::FlashAttentionLse(attention) => super::attention::eval_lse(attention, xs)?,
        Op::FlashAttentionGrad { attention, wrt } => {
            // A narrow gradient is the f32 one rounded, as a cast of it would be.
            let grad = super::attention::eval_grad(attention, *wrt, xs, arithmetic)?;
            Tensor::with_arithmetic(DType::F32, shape.clone(), grad, arithmetic).data
        }
        Op::StopGradient => xs[0].data.clone(),
        Op::Grad => return Err("`grad` has no value until the autodiff pass expands it".into()),
    };
    Ok(Tensor::with_arithmetic(dtype, shape, data, arithmetic))
}

/// A region evaluated step by step on whole tensors of the leaves' shape, then reduced if its
/// kind says so: the same primitives, in the same order, as the unfused graph. A matmul
/// epilogue first computes the product, its value `$0`.
fn fused(
    region: &Region,
    xs: &[&Tensor],
    dtype: DType,
    shape: Vec<usize>,
    env: &Bindings,
    arithmetic: Arithmetic,
) -> Result<Tensor, String> {
    let fixed =
        |t: &Tensor| TensorType::new(t.dtype, t.shape.iter().map(|&n| Dim::fixed(n)).collect());
    let operand_types: Vec<TensorType> = xs.iter().map(|t| fixed(t)).collect();
    let types = region.types(&operand_types.iter().collect::<Vec<_>>())?;
    let product;
    let values: Vec<&Tensor> = if region.kind == RegionKind::MatMul {
        product = eval_with(
            &Op::MatMul,
            &xs[..2],
            types[0].dtype,
            shape.clone(),
            env,
            arithmetic,
        )?;
        std::iter::once(&product)
            .chain(xs[2..].iter().copied())
            .collect()
    } else {
        xs.to_vec()
    };
    let domain = values[0].shape.clone();
    let n = values.len();
    let mut steps: Vec<Tensor> = Vec::with_capacity(region.steps.len());
    for (step, ty) in region.steps.iter().zip(&types[n..]) {
        let args: Vec<&Tensor> = step
            .args
            .iter()
            .map(|&a| values.get(a).copied().unwrap_or_else(|| &steps[a - n]))
            .collect();
        let value = eval_with(
            &step.op.primitive(),
            &args,
            ty.dtype,
            domain.clone(),
            env,
            arithmetic,
        )?;
        steps.push(value);
    }
    let last = steps.pop().expect("a region has steps");
    match &region.kind {
        RegionKind::Map | RegionKind::MatMul => Ok(last),
        RegionKind::Reduce { op, axes } => eval_with(
            &Op::Reduce {
                op: *op,
                axes: axes.clone(),
            },
            &[&last],
            dtype,
            shape,
            env,
            arithmetic,
        ),
    }
}

fn zip3<T: Copy>(c: &[bool], a: &[T], b: &[T]) -> Vec<T> {
    c.iter()
        .zip(a.iter().zip(b))
        .map(|(&c, (&a, &b))| if c { a } else { b })
        .collect()
}

/// For every result position (row-major over `shape`), the source index `Σ idxᵢ·src_strides[i]`.
fn map_indices(shape: &[usize], src_strides: &[usize]) -> Vec<usize> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; shape.len()];
    let mut offset = 0usize;
    for _ in 0..numel {
        out.push(offset);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            offset += src_strides[d];
            if idx[d] < shape[d] {
                break;
            }
            offset -= src_strides[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}

fn int_values(t: &Tensor, bound: usize) -> Result<Vec<usize>, String> {
    let Data::Int(v) = &t.data else {
        unreachable!("verified integer indices")
    };
    v.iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < bound)
                .ok_or_else(|| format!("index {i} out of range 0..{bound}"))
        })
        .collect()
}

fn unary(op: UnaryOp, x: &Data) -> Data {
    match x {
        Data::Float(v) => Data::Float(
            v.iter()
                .map(|&a| match op {
                    UnaryOp::Neg => -a,
                    UnaryOp::Abs => a.abs(),
                    UnaryOp::Exp => a.exp(),
                    UnaryOp::Log => a.ln(),
                    UnaryOp::Sqrt => a.sqrt(),
                    UnaryOp::Rsqrt => 1.0 / a.sqrt(),
                    UnaryOp::Recip => 1.0 / a,
                    UnaryOp::Tanh => a.tanh(),
                    UnaryOp::Erf => libm::erf(a),
                    UnaryOp::Sigmoid => 1.0 / (1.0 + (-a).exp()),
                    UnaryOp::Sin => a.sin(),
                    UnaryOp::Cos => a.cos(),
                    UnaryOp::Not => unreachable!("verified dtype"),
                })
                .collect(),
        ),
        Data::Int(v) => Data::Int(
            v.iter()
                .map(|&a| match op {
                    UnaryOp::Neg => a.wrapping_neg(),
                    UnaryOp::Abs => a.wrapping_abs(),
                    _ => unreachable!("verified dtype"),
                })
                .collect(),
        ),
        Data::Bool(v) => Data::Bool(v.iter().map(|&a| !a).collect()),
    }
}

/// `f(a, b)`, or NaN when either is NaN (`max` and `min` propagate NaN, as PyTorch's do).
fn nan_or(a: f64, b: f64, f: fn(f64, f64) -> f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        f(a, b)
    }
}

fn compare<T: PartialOrd>(op: BinaryOp, a: T, b: T) -> bool {
    match op {
        BinaryOp::Eq => a == b,
        BinaryOp::Ne => a != b,
        BinaryOp::Lt => a < b,
        BinaryOp::Le => a <= b,
        BinaryOp::Gt => a > b,
        BinaryOp::Ge => a >= b,
        _ => unreachable!("not a comparison"),
    }
}

fn binary(op: BinaryOp, x: &Data, y: &Data) -> Result<Data, String> {
    Ok(match (x, y) {
        (Data::Float(a), Data::Float(b)) if op.is_compare() => {
            Data::Bool(a.iter().zip(b).map(|(&a, &b)| compare(op, a, b)).collect())
        }
        (Data::Float(a), Data::Float(b)) => Data::Float(
            a.iter()
                .zip(b)
                .map(|(&a, &b)| match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::Max => nan_or(a, b, f64::max),
                    BinaryOp::Min => nan_or(a, b, f64::min),
                    BinaryOp::Pow => a.powf(b),
                    _ => unreachable!("verified dtype"),
                })
                .collect(),
        ),
        (Data::Int(a), Data::Int(b)) if op.is_compare() => {
            Data::Bool(a.iter().zip(b).map(|(&a, &b)| compare(op, a, b)).collect())
        }
        (Data::Int(a), Data::Int(b)) => Data::Int(
            a.iter()
                .zip(b)
                .map(|(&a, &b)| {
                    Ok(match op {
                        BinaryOp::Add => a.wrapping_add(b),
                        BinaryOp::Sub => a.wrapping_sub(b),
                        BinaryOp::Mul => a.wrapping_mul(b),
                        BinaryOp::Div => a.checked_div(b).ok_or("integer division by zero")?,
                        BinaryOp::Max => a.max(b),
                        BinaryOp::Min => a.min(b),
                        _ => unreachable!("verified dtype"),
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        (Data::Bool(a), Data::Bool(b)) => Data::Bool(
            a.iter()
                .zip(b)
                .map(|(&a, &b)| match op {
                    BinaryOp::And => a && b,
                    BinaryOp::Or => a || b,
                    BinaryOp::Eq => a == b,
                    BinaryOp::Ne => a != b,
                    _ => unreachable!("verified dtype"),
                })
                .collect(),
        ),
        _ => unreachable!("verified same dtypes"),
    })
}

fn cast(x: &Tensor, dtype: DType) -> Data {
    match (&x.data, dtype) {
        (Data::Float(v), d) if d.is_float() => Data::Float(v.clone()),
        (Data::Float(v), DType::I32) => Data::Int(v.iter().map(|&a| a as i32 as i64).collect()),
        (Data::Float(v), d) if d.is_int() => Data::Int(v.iter().map(|&a| a as i64).collect()),
        (Data::Int(v), d) if d.is_float() => Data::Float(v.iter().map(|&a| a as f64).collect()),
        (Data::Int(v), d) if d.is_int() => Data::Int(v.clone()),
        (Data::Bool(v), d) if d.is_float() => {
            Data::Float(v.iter().map(|&a| a as u8 as f64).collect())
        }
        (Data::Bool(v), d) if d.is_int() => Data::Int(v.iter().map(|&a| a as i64).collect()),
        (Data::Bool(v), _) => Data::Bool(v.clone()),
        (data, _) => Data::Bool((0..data.len()).map(|i| data.get_f64(i) != 0.0).collect()),
    }
}

fn reduce(op: ReduceOp, x: &Tensor, axes: &[usize], out_shape: &[usize]) -> Data {
    let numel: usize = out_shape.iter().product();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    // Each source element lands in the result position with reduced axes zeroed.
    let out_strides = strides(out_shape);
    let mut dst_strides = out_strides.clone();
    for &a in axes {
        dst_strides[a] = 0;
    }
    let dst = map_indices(&x.shape, &dst_strides);
    match &x.data {
        Data::Float(v) => {
            let init = if op == ReduceOp::Max {
                f64::NEG_INFINITY
            } else {
                0.0
            };
            let mut acc = vec![init; numel];
            for (&d, &a) in dst.iter().zip(v) {
                acc[d] = if op == ReduceOp::Max {
                    nan_or(acc[d], a, f64::max)
                } else {
                    acc[d] + a
                };
            }
            if op == ReduceOp::Mean {
                acc.iter_mut().for_each(|a| *a /= count as f64);
            }
            Data::Float(acc)
        }
        Data::Int(v) => {
            let init = match (op, x.dtype) {
                (ReduceOp::Max, DType::I32) => i32::MIN as i64,
                (ReduceOp::Max, _) => i64::MIN,
                _ => 0,
            };
            let mut acc = vec![init; numel];
            for (&d, &a) in dst.iter().zip(v) {
                acc[d] = if op == ReduceOp::Max {
                    acc[d].max(a)
                } else {
                    acc[d].wrapping_add(a)
                };
            }
            Data::Int(acc)
        }
        Data::Bool(_) => unreachable!("verified dtype"),
    }
}

fn matmul(a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Data {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = a.shape[a.shape.len() - 1];
    let batch_shape = &out_shape[..r - 2];
    // Offset of each batch's matrix in an operand, with broadcasting of size-1 / missing axes.
    let batch_offsets = |t: &Tensor| -> Vec<usize> {
        let tb = &t.shape[..t.shape.len() - 2];
        let mat = t.shape[t.shape.len() - 2] * t.shape[t.shape.len() - 1];
        let ts = strides(tb);
        let offset = batch_shape.len() - tb.len();
        let mut s = vec![0; batch_shape.len()];
        for (i, &n) in tb.iter().enumerate() {
            s[offset + i] = if n == 1 { 0 } else { ts[i] * mat };
        }
        map_indices(batch_shape, &s)
    };
    let (ao, bo) = (batch_offsets(a), batch_offsets(b));
    match (&a.data, &b.data) {
        (Data::Float(x), Data::Float(y)) => {
            let mut out = Vec::with_capacity(ao.len() * m * n);
            for (&oa, &ob) in ao.iter().zip(&bo) {
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0f64;
                        for p in 0..k {
                            acc += x[oa + i * k + p] * y[ob + p * n + j];
                        }
                        out.push(acc);
                    }
                }
            }
            Data::Float(out)
        }
        (Data::Int(x), Data::Int(y)) => {
            let mut out = Vec::with_capacity(ao.len() * m * n);
            for (&oa, &ob) in ao.iter().zip(&bo) {
                for i in 0..m {
                    for j in 0..n {
                        out.push(
                            (0..k)
                                .map(|p| x[oa + i * k + p].wrapping_mul(y[ob + p * n + j]))
                                .sum(),
                        );
                    }
                }
            }
            Data::Int(out)
        }
        _ => unreachable!("verified numeric operands"),
    }
}

fn concat(xs: &[&Tensor], axis: usize, shape: &[usize]) -> Data {
    let pre: usize = shape[..axis].iter().product();
    let post: usize = shape[axis + 1..].iter().product();
    // Join the operands end to end, then pick from the joined data row by row.
    let mut starts = Vec::with_capacity(xs.len());
    let mut joined = xs[0].data.take(&[]);
    for x in xs {
        starts.push(joined.len());
        joined.append(&x.data);
    }
    let mut picks: Vec<usize> = Vec::with_capacity(shape.iter().product());
    for p in 0..pre {
        for (x, start) in xs.iter().zip(&starts) {
            let run = x.shape[axis] * post;
            picks.extend(start + p * run..start + (p + 1) * run);
        }
    }
    joined.take(&picks)
}

fn scatter(xs: &[&Tensor], axis: usize, mode: ScatterMode) -> Result<Data, String> {
    let (data, idx, upd) = (xs[0], xs[1], xs[2]);
    let pre: usize = data.shape[..axis].iter().product();
    let len = data.shape[axis];
    let post: usize = data.shape[axis + 1..].iter().product();
    let indices = int_values(idx, len)?;
    let mut out = data.data.clone();
    let mut u = 0usize;
    for p in 0..pre {
        for &i in &indices {
            for q in 0..post {
                let d = (p * len + i) * post + q;
                match (&mut out, &upd.data, mode) {
                    (Data::Float(o), Data::Float(v), ScatterMode::Add) => o[d] += v[u],
                    (Data::Float(o), Data::Float(v), ScatterMode::Replace) => o[d] = v[u],
                    (Data::Int(o), Data::Int(v), ScatterMode::Add) => {
                        o[d] = o[d].wrapping_add(v[u])
                    }
                    (Data::Int(o), Data::Int(v), ScatterMode::Replace) => o[d] = v[u],
                    (Data::Bool(o), Data::Bool(v), ScatterMode::Replace) => o[d] = v[u],
                    (Data::Bool(o), Data::Bool(v), ScatterMode::Add) => o[d] |= v[u],
                    _ => unreachable!("verified same dtypes"),
                }
                u += 1;
            }
        }
    }
    Ok(out)
}
