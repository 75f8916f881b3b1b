//! The check every pass answers to: the graph before and after computes the same outputs on
//! random inputs (the interpreter is the oracle).
//!
//! A pass may change the type a weight is stored in (`mixed-precision`): `after` then gets the
//! same random weights rounded to its type, as the runtime's loader rounds them. A graph that
//! still states gradients with `grad` is compared after `autodiff` expands them.

use crate::autodiff::Autodiff;
use crate::Pass;
use kiln_ir::interp::random::random_bindings;
use kiln_ir::interp::{eval_op, interpret, Tensor, TensorMap};
use kiln_ir::{Bindings, Graph, Op};
use std::borrow::Cow;

/// Runs both graphs on the same random inputs for each seed and compares every output of
/// `before` with the output of the same name in `after`, to relative error `tol`
/// (`max |a − b| / max(1, max |a|)`); non-finite values must match exactly.
pub fn check_equivalent(
    before: &Graph,
    after: &Graph,
    env: &Bindings,
    int_bound: u64,
    seeds: std::ops::Range<u64>,
    tol: f64,
) -> Result<(), String> {
    let (before, after) = (differentiated(before)?, differentiated(after)?);
    let (before, after) = (before.as_ref(), after.as_ref());
    for seed in seeds {
        let (inputs, weights) =
            random_bindings(before, env, int_bound, seed).map_err(|e| e.to_string())?;
        let a = interpret(before, &inputs, &weights).map_err(|e| format!("before: {e}"))?;
        let stored = stored_as(after, &weights, env)?;
        let b = interpret(after, &inputs, &stored).map_err(|e| format!("after: {e}"))?;
        for (name, x) in &a {
            let y = b
                .get(name)
                .ok_or_else(|| format!("output `{name}` disappeared"))?;
            let err = difference(x, y).map_err(|e| format!("output `{name}`, seed {seed}: {e}"))?;
            if err > tol {
                return Err(format!(
                    "output `{name}`, seed {seed}: relative error {err:.3e} > {tol:e}"
                ));
            }
        }
    }
    Ok(())
}

/// `g` with its `grad`s expanded (itself when it has none).
fn differentiated(g: &Graph) -> Result<Cow<'_, Graph>, String> {
    if g.node_ids().all(|id| g.node(id).op != Op::Grad) {
        return Ok(Cow::Borrowed(g));
    }
    let mut expanded = g.clone();
    Autodiff
        .run(&mut expanded)
        .map_err(|e| format!("autodiff: {e}"))?;
    Ok(Cow::Owned(expanded))
}

/// `weights` in the types `g` stores them in (rounded to nearest even where narrower).
pub fn stored_as(g: &Graph, weights: &TensorMap, env: &Bindings) -> Result<TensorMap, String> {
    let mut out = weights.clone();
    for &id in g.weights() {
        let node = g.node(id);
        let Op::Weight { name } = &node.op else {
            continue;
        };
        if let Some(t) = out.get_mut(name).filter(|t| t.dtype != node.ty.dtype) {
            *t = eval_op(&Op::Cast, &[t], node.ty.dtype, t.shape.clone(), env)
                .map_err(|e| format!("weight `{name}`: {e}"))?;
        }
    }
    Ok(out)
}

fn difference(x: &Tensor, y: &Tensor) -> Result<f64, String> {
    if x.shape != y.shape || x.dtype != y.dtype {
        return Err(format!(
            "{}{:?} became {}{:?}",
            x.dtype, x.shape, y.dtype, y.shape
        ));
    }
    let (x, y) = (x.to_f64(), y.to_f64());
    let scale = x
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (p, q) in x.iter().zip(&y) {
        if p.is_finite() && q.is_finite() {
            worst = worst.max((p - q).abs() / scale);
        } else if !(p == q || (p.is_nan() && q.is_nan())) {
            return Err(format!("{p} became {q}"));
        }
    }
    Ok(worst)
}
