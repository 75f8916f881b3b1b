//! The layout rewrites that run before regions are formed, so that elementwise chains broken
//! by a layout op become one chain. Each rule is an identity of the IR's semantics; each
//! applies only to values nothing else reads (no work is duplicated, except the cheap ops a
//! broadcast spreads), and never to program outputs.
//!
//! 1. **Broadcasts move below cheap ops**: `broadcast(f(a, b))` → `f(broadcast(a), broadcast(b))`
//!    when `f` is cheap (see `is_cheap`) and read only by the broadcast. RMSNorm's
//!    `rsqrt(mean + ε)` joins its scaling; an attention mask's compare joins the scores.
//! 2. **Concats move below elementwise ops**: `f(concat(p, q), b)` →
//!    `concat(f(p, b[..p]), f(q, b[p..]))` when the concat is read only by `f` (the other
//!    operands are sliced, which costs nothing). RoPE's rotate-half concat moves below the
//!    products and the sum, so each half is one chain that writes its part of the result.
//! 3. **Slices move above elementwise ops**: `f(a, b)[r]` → `f(a[r], b[r])` when every reader
//!    of `f` is a slice, so each part is computed where it is read and `f` is never stored
//!    whole (rule 2 leaves such slices of RoPE's `x·cos`).
//!
//! 4. **Widening casts move below views**: `v(cast(x))` → `cast(v(x))` for a `reshape`,
//!    `permute` or `slice` `v` and a cast to a wider type, so the cast joins the elementwise ops
//!    that read the view instead of storing a widened copy (a narrowing cast stays where the
//!    region that computes its operand rounds as it stores). A matmul's bf16 result reshaped into heads and sliced for RoPE is then
//!    read as bf16 by RoPE's maps (the cast, cheap, is copied into each).
//!
//! Rules 2 and 3 never undo each other: 2 moves a concat towards the outputs and 3 creates no
//! concat, so repeating them ends; rule 4 only moves casts towards the outputs.

use super::{is_cheap, is_elementwise};
use kiln_ir::{Dim, Graph, IrError, NodeId, Op, TensorType};

/// Applies the rules until none applies, each wherever it can before the next; returns what
/// was moved, for the pass's remark.
pub fn run(g: &mut Graph) -> Result<String, IrError> {
    let (mut broadcasts, mut concats, mut slices, mut casts) = (0, 0, 0, 0);
    loop {
        if sweep(g, hoist_broadcast, &mut broadcasts)?
            || sweep(g, sink_concat, &mut concats)?
            || sweep(g, lift_slices, &mut slices)?
            || sweep(g, sink_cast, &mut casts)?
        {
            continue;
        }
        return Ok(format!(
            "{broadcasts} broadcasts, {concats} concats and {slices} sliced values moved \
             past elementwise ops, {casts} casts past views"
        ));
    }
}

/// Applies `rule` at every node of one walk of the graph's order where it applies (a node an
/// earlier rewrite of the walk removed is skipped; nodes the walk creates wait for the next),
/// counting into `count`; whether it applied anywhere. One walk per sweep, not one per
/// rewrite: a training step's graph takes hundreds of rewrites.
fn sweep(
    g: &mut Graph,
    rule: fn(&mut Graph, NodeId) -> Result<bool, IrError>,
    count: &mut usize,
) -> Result<bool, IrError> {
    let before = *count;
    for id in g.order() {
        if g.contains(id) && rule(g, id)? {
            *count += 1;
        }
    }
    Ok(*count > before)
}

/// Whether `id` is a program output (a scan of the few outputs: no set is built per check,
/// and a rewrite that moves an output is seen at once).
fn is_output(g: &Graph, id: NodeId) -> bool {
    g.outputs().iter().any(|(_, o)| *o == id)
}

/// `node` rebuilt on `operands` at `shape` (its dtype and label kept); its uses move to it.
fn rebuild(g: &mut Graph, node: NodeId, operands: &[NodeId], shape: Vec<Dim>) -> R {
    let n = g.node(node).clone();
    let id = g.push_typed(n.op, operands, TensorType::new(n.ty.dtype, shape))?;
    if let Some(label) = n.label {
        g.set_label(id, label);
    }
    Ok(id)
}

type R = Result<NodeId, IrError>;

/// Rule 1 at `b`, if it applies there.
fn hoist_broadcast(g: &mut Graph, b: NodeId) -> Result<bool, IrError> {
    let applies = matches!(g.node(b).op, Op::Broadcast) && {
        let e = g.operands(b)[0];
        let op = &g.node(e).op;
        is_elementwise(op) && is_cheap(op) && !is_output(g, e) && g.users(e) == [b]
    };
    if !applies {
        return Ok(false);
    }
    let e = g.operands(b)[0];
    let shape = g.ty(b).shape.clone();
    let operands = g
        .operands(e)
        .into_iter()
        .map(|o| {
            // A broadcast of a broadcast reads the first one's operand directly.
            let source = match g.node(o).op {
                Op::Broadcast => g.operands(o)[0],
                _ => o,
            };
            g.broadcast_to(source, &shape)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hoisted = rebuild(g, e, &operands, shape)?;
    g.replace_uses(b, hoisted);
    g.remove(b);
    g.remove(e);
    Ok(true)
}

/// Rule 2 at the elementwise node `e`, if it applies there.
fn sink_concat(g: &mut Graph, e: NodeId) -> Result<bool, IrError> {
    if !is_elementwise(&g.node(e).op) {
        return Ok(false);
    }
    let operands = g.operands(e);
    let slot = operands.iter().position(|&c| {
        matches!(g.node(c).op, Op::Concat { .. })
            && !is_output(g, c)
            && g.users(c) == [e]
            && operands.iter().filter(|&&o| o == c).count() == 1
    });
    let Some(slot) = slot else {
        return Ok(false);
    };
    let concat = operands[slot];
    let Op::Concat { axis } = g.node(concat).op else {
        unreachable!("matched a concat")
    };
    let mut parts = Vec::new();
    let mut start = Dim::fixed(0);
    for part in g.operands(concat) {
        let end = start.plus(&g.ty(part).shape[axis]);
        let part_operands = operands
            .iter()
            .map(|&o| {
                if o == concat {
                    Ok(part)
                } else {
                    g.slice(o, axis, start.clone(), end.clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shape = g.ty(part).shape.clone();
        parts.push(rebuild(g, e, &part_operands, shape)?);
        start = end;
    }
    let joined = g.concat(&parts, axis)?;
    g.replace_uses(e, joined);
    g.remove(e);
    g.remove(concat);
    Ok(true)
}

/// Rule 3 at the elementwise node `e`, if it applies there.
fn lift_slices(g: &mut Graph, e: NodeId) -> Result<bool, IrError> {
    let users = g.users(e);
    let applies = is_elementwise(&g.node(e).op)
        && !is_output(g, e)
        && !users.is_empty()
        && users
            .iter()
            .all(|&u| matches!(g.node(u).op, Op::Slice { .. }));
    if !applies {
        return Ok(false);
    }
    for slice in g.users(e) {
        let Op::Slice {
            axis,
            ref start,
            ref end,
        } = g.node(slice).op
        else {
            unreachable!("every user is a slice")
        };
        let (start, end) = (start.clone(), end.clone());
        let operands = g
            .operands(e)
            .into_iter()
            .map(|o| g.slice(o, axis, start.clone(), end.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let shape = g.ty(slice).shape.clone();
        let lifted = rebuild(g, e, &operands, shape)?;
        g.replace_uses(slice, lifted);
        g.remove(slice);
    }
    g.remove(e);
    Ok(true)
}

/// Rule 4 at the view `v`, if it applies there.
fn sink_cast(g: &mut Graph, v: NodeId) -> Result<bool, IrError> {
    let view = matches!(
        g.node(v).op,
        Op::Reshape | Op::Permute { .. } | Op::Slice { .. }
    );
    let cast = g.operands(v).first().copied();
    let widening = |c: NodeId| {
        matches!(g.node(c).op, Op::Cast)
            && g.ty(g.operands(c)[0]).dtype.size_bytes() < g.ty(c).dtype.size_bytes()
    };
    let Some(cast) = cast.filter(|&c| view && widening(c)) else {
        return Ok(false);
    };
    if is_output(g, v) || is_output(g, cast) {
        return Ok(false);
    }
    let x = g.operands(cast)[0];
    let n = g.node(v).clone();
    let moved = g.push_typed(n.op, &[x], n.ty.with_dtype(g.ty(x).dtype))?;
    let converted = g.cast(moved, n.ty.dtype)?;
    if let Some(label) = n.label {
        g.set_label(converted, label);
    }
    g.replace_uses(v, converted);
    g.remove(v);
    if g.users(cast).is_empty() {
        g.remove(cast);
    }
    Ok(true)
}
