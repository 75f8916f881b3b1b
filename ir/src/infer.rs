//! Result types of ops: the typing rules of the IR in one place.
//!
//! [`infer`] returns the result type of an op applied to operands of the given types, or a
//! message saying which rule is broken. *Typed* ops (sources, `cast`, `reshape`, `broadcast`)
//! take the declared type and check that it is consistent with the operands. A `matmul` of
//! `f16` or `bf16` operands may declare an `f32` result (accumulation and result in f32). The builder uses
//! this to type new nodes; the verifier uses it to re-check every node.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::op::{Literal, Op};
use crate::ty::TensorType;
use std::collections::BTreeMap;

pub fn infer(
    op: &Op,
    operands: &[&TensorType],
    declared: Option<&TensorType>,
) -> Result<TensorType, String> {
    if let Some(n) = op.arity() {
        if operands.len() != n {
            return Err(format!(
                "{} takes {n} operands, got {}",
                op.name(),
                operands.len()
            ));
        }
    }
    let declared_type = declared;
    let declared = || {
        declared
            .cloned()
            .ok_or_else(|| format!("{} needs a declared result type", op.name()))
    };
    match op {
        Op::Input { .. } | Op::Weight { .. } => declared(),
        Op::Const(lit) => {
            let ty = declared()?;
            if let Literal::Dense(values) = lit {
                match ty.fixed_numel() {
                    Some(n) if n == values.len() => {}
                    Some(n) => {
                        return Err(format!(
                            "dense constant has {} values for {n} elements",
                            values.len()
                        ))
                    }
                    None => return Err("a dense constant needs a fixed shape".into()),
                }
            }
            Ok(ty)
        }
        Op::Iota { axis } => {
            let ty = declared()?;
            if *axis >= ty.rank() {
                return Err(format!(
                    "iota axis {axis} out of range for rank {}",
                    ty.rank()
                ));
            }
            if ty.dtype == DType::Bool {
                return Err("iota must produce numbers, not bool".into());
            }
            Ok(ty)
        }
        Op::Unary(u) => {
            let x = operands[0];
            if !u.accepts(x.dtype) {
                return Err(format!("{} does not accept {}", u.name(), x.dtype));
            }
            Ok(x.clone())
        }
        Op::Binary(b) => {
            let (x, y) = (operands[0], operands[1]);
            same_type(x, y)?;
            if !b.accepts(x.dtype) {
                return Err(format!("{} does not accept {}", b.name(), x.dtype));
            }
            Ok(if b.is_compare() {
                x.with_dtype(DType::Bool)
            } else {
                x.clone()
            })
        }
        Op::Select => {
            let (c, a, b) = (operands[0], operands[1], operands[2]);
            if c.dtype != DType::Bool {
                return Err(format!("select condition must be bool, got {}", c.dtype));
            }
            same_shape(c, a)?;
            same_type(a, b)?;
            Ok(a.clone())
        }
        Op::Cast => {
            let ty = declared()?;
            same_shape(operands[0], &ty)?;
            Ok(ty)
        }
        Op::Reduce { op, axes } => {
            let x = operands[0];
            check_axes(axes, x.rank())?;
            if *op == crate::ReduceOp::Mean && !x.dtype.is_float() {
                return Err("reduce_mean needs a float operand".into());
            }
            if x.dtype == DType::Bool {
                return Err(format!("{} does not accept bool", op.name()));
            }
            let mut shape = x.shape.clone();
            for &a in axes {
                shape[a] = Dim::fixed(1);
            }
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::MatMul => {
            let ty = matmul(operands[0], operands[1])?;
            Ok(match declared_type {
                Some(d) if d.dtype == DType::F32 && d.shape == ty.shape && ty.dtype.is_narrow() => {
                    d.clone()
                }
                _ => ty,
            })
        }
        Op::Fused(region) => region.infer(operands),
        Op::Reshape => {
            let ty = declared()?;
            let x = operands[0];
            if x.dtype != ty.dtype {
                return Err(format!(
                    "reshape cannot change dtype ({} to {})",
                    x.dtype, ty.dtype
                ));
            }
            if element_count_key(&x.shape) != element_count_key(&ty.shape) {
                return Err(format!(
                    "reshape from {x} to {ty} changes the number of elements"
                ));
            }
            Ok(ty)
        }
        Op::Permute { perm } => {
            let x = operands[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() {
                return Err(format!(
                    "permutation {perm:?} has {} axes, operand has {}",
                    perm.len(),
                    x.rank()
                ));
            }
            for &p in perm {
                if p >= x.rank() || std::mem::replace(&mut seen[p], true) {
                    return Err(format!("{perm:?} is not a permutation of 0..{}", x.rank()));
                }
            }
            Ok(TensorType::new(
                x.dtype,
                perm.iter().map(|&p| x.shape[p].clone()).collect(),
            ))
        }
        Op::Broadcast => {
            let ty = declared()?;
            let x = operands[0];
            if x.dtype != ty.dtype {
                return Err(format!(
                    "broadcast cannot change dtype ({} to {})",
                    x.dtype, ty.dtype
                ));
            }
            if x.rank() > ty.rank() {
                return Err(format!("cannot broadcast {x} to lower rank {ty}"));
            }
            let offset = ty.rank() - x.rank();
            for (i, d) in x.shape.iter().enumerate() {
                if !d.is_one() && *d != ty.shape[offset + i] {
                    return Err(format!("cannot broadcast {x} to {ty}: axis {i} is {d}"));
                }
            }
            Ok(ty)
        }
        Op::Slice { axis, start, end } => {
            let x = operands[0];
            if *axis >= x.rank() {
                return Err(format!(
                    "slice axis {axis} out of range for rank {}",
                    x.rank()
                ));
            }
            let len = end.minus(start);
            if let (Some(s), Some(e)) = (start.as_fixed(), end.as_fixed()) {
                if s > e {
                    return Err(format!("slice start {s} is after end {e}"));
                }
            }
            if let (Some(e), Some(n)) = (end.as_fixed(), x.shape[*axis].as_fixed()) {
                if e > n {
                    return Err(format!("slice end {e} is past the axis length {n}"));
                }
            }
            let mut shape = x.shape.clone();
            shape[*axis] = len;
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Concat { axis } => {
            let first = operands
                .first()
                .ok_or("concat needs at least one operand")?;
            if *axis >= first.rank() {
                return Err(format!(
                    "concat axis {axis} out of range for rank {}",
                    first.rank()
                ));
            }
            let mut len = Dim::fixed(0);
            for t in operands {
                if t.dtype != first.dtype || t.rank() != first.rank() {
                    return Err(format!("concat operands differ: {first} and {t}"));
                }
                for (i, (a, b)) in first.shape.iter().zip(&t.shape).enumerate() {
                    if i != *axis && a != b {
                        return Err(format!(
                            "concat operands differ off axis {axis}: {first} and {t}"
                        ));
                    }
                }
                len = len.plus(&t.shape[*axis]);
            }
            let mut shape = first.shape.clone();
            shape[*axis] = len;
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::Gather { axis } => {
            let (data, idx) = (operands[0], operands[1]);
            check_index(data, idx, *axis)?;
            Ok(gathered(data, idx, *axis))
        }
        Op::Scatter { axis, .. } => {
            let (data, idx, upd) = (operands[0], operands[1], operands[2]);
            check_index(data, idx, *axis)?;
            let expected = gathered(data, idx, *axis);
            if *upd != expected {
                return Err(format!("scatter updates are {upd}, expected {expected}"));
            }
            Ok(data.clone())
        }
        Op::FlashAttention(attention) => {
            // An f32 result may be declared bf16: rounded to nearest even as it is stored.
            let ty = attention.infer(operands)?;
            Ok(match declared_type {
                Some(d)
                    if d.dtype == DType::BF16 && d.shape == ty.shape && ty.dtype == DType::F32 =>
                {
                    d.clone()
                }
                _ => ty,
            })
        }
        Op::FlashAttentionLse(attention) => attention.infer_lse(operands),
        Op::FlashAttentionGrad { attention, wrt } => {
            attention.infer_grad(*wrt, operands, declared_type)
        }
        Op::StopGradient => Ok(operands[0].clone()),
        Op::Grad => {
            let (loss, x) = (operands[0], operands[1]);
            if loss.rank() != 0 || !loss.dtype.is_float() {
                return Err(format!("grad needs a rank-0 float loss, got {loss}"));
            }
            if !x.dtype.is_float() {
                return Err(format!("grad is taken by a float value, got {x}"));
            }
            Ok(x.clone())
        }
    }
}

fn same_type(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!("operand types differ: {a} and {b}"))
    }
}

fn same_shape(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.shape == b.shape {
        Ok(())
    } else {
        Err(format!("operand shapes differ: {a} and {b}"))
    }
}

fn check_axes(axes: &[usize], rank: usize) -> Result<(), String> {
    if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= rank) {
        return Err(format!(
            "axes {axes:?} must be sorted, unique and below rank {rank}"
        ));
    }
    Ok(())
}

fn check_index(data: &TensorType, idx: &TensorType, axis: usize) -> Result<(), String> {
    if axis >= data.rank() {
        return Err(format!("axis {axis} out of range for rank {}", data.rank()));
    }
    if !idx.dtype.is_int() {
        return Err(format!("indices must be i32 or i64, got {}", idx.dtype));
    }
    Ok(())
}

fn gathered(data: &TensorType, idx: &TensorType, axis: usize) -> TensorType {
    let mut shape = data.shape[..axis].to_vec();
    shape.extend(idx.shape.iter().cloned());
    shape.extend(data.shape[axis + 1..].iter().cloned());
    TensorType::new(data.dtype, shape)
}

fn matmul(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    if a.dtype != b.dtype || a.dtype == DType::Bool {
        return Err(format!(
            "matmul needs two numeric operands of one dtype, got {a} and {b}"
        ));
    }
    if a.rank() < 2 || b.rank() < 2 {
        return Err(format!("matmul needs rank ≥ 2, got {a} and {b}"));
    }
    let (m, k) = (&a.shape[a.rank() - 2], &a.shape[a.rank() - 1]);
    let (k2, n) = (&b.shape[b.rank() - 2], &b.shape[b.rank() - 1]);
    if k != k2 {
        return Err(format!("matmul contraction dims differ: {a} × {b}"));
    }
    let batch = broadcast_shapes(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])
        .ok_or_else(|| format!("matmul batch dims do not broadcast: {a} × {b}"))?;
    let mut shape = batch;
    shape.push(m.clone());
    shape.push(n.clone());
    Ok(TensorType::new(a.dtype, shape))
}

/// The numpy-style broadcast of two shapes (right-aligned; a dim of 1 stretches).
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| -> Dim {
        let pad = rank - s.len();
        if i < pad {
            Dim::fixed(1)
        } else {
            s[i - pad].clone()
        }
    };
    (0..rank)
        .map(|i| {
            let (x, y) = (at(a, i), at(b, i));
            if x == y || y.is_one() {
                Some(x)
            } else if x.is_one() {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

/// What a reshape must preserve: the product of the constant dims and the multiset of the
/// symbolic ones (symbolic dims are opaque factors, so `[b, s, 64] → [b, s, 4, 16]` is accepted
/// and `[b, s] → [s, b]` too, while merging two symbolic dims into one is not expressible).
fn element_count_key(shape: &[Dim]) -> (usize, BTreeMap<Dim, usize>) {
    let mut product = 1usize;
    let mut symbolic = BTreeMap::new();
    for d in shape {
        match d.as_fixed() {
            Some(n) => product *= n,
            None => *symbolic.entry(d.clone()).or_insert(0) += 1,
        }
    }
    if product == 0 {
        symbolic.clear();
    }
    (product, symbolic)
}
