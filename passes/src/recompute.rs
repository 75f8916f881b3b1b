//! `recompute`: chooses which forward activations a training program keeps for its backward and
//! which it recomputes there, to fit a memory budget.
//!
//! **Matches** graphs that `autodiff` differentiated: the backward is every node that depends on
//! a sweep's seed (labelled `autodiff.seed`), the forward is the rest. A *saved activation* is a
//! computed forward value that a backward node reads.
//! **Produces**, for each activation it recomputes, a copy of the forward computation that
//! yields it, read by the backward users instead; the copy starts from the values that stay
//! saved (layer boundaries: the values the builders label `….out` and `embed`) and sources. The
//! original then dies after its last forward use, and the copy lives only around its backward
//! uses: the canonical order computes a value when the first node needing it is reached, and the
//! training programs reach the backward layer by layer from the last (see the frontend's
//! `train.rs`).
//! **Policies** ([`Recompute`]): `save-all` keeps everything (nothing changes); `selective`
//! keeps, in every layer, what its matmuls and attentions compute (arithmetic that costs more
//! than the bytes it yields) and recomputes the rest from those and the layer's input (norms,
//! activations, RoPE: elementwise work whose cost is its memory traffic); `layers` recomputes
//! every layer from its input; `budget(B)` takes the fewest of these steps, in order, whose
//! estimated peak fits `B` bytes: layers made selective one by one, first layer first (its
//! activations live longest), then, all selective, layers recomputed whole one by one, first
//! layer first. It fails, saying the least it can reach, when even `layers` does not fit. The
//! estimate is the largest sum of the bytes of live values (at the symbols' maxima) over the
//! canonical order of the graph as `mixed-precision` and `elementwise-fusion` will leave it
//! (the pipeline's own, [`RecomputePlanning::precision`] and [`RecomputePlanning::fusion`]),
//! views counted as their operand's storage and constants as none: what a backend that
//! allocates each value from its first write to its last read needs, before the packing's
//! slack.
//! Copies are labelled `… (recomputed)`, and CSE never merges them back into their originals.
//! **Reports** (remarks): saved activation bytes before and after, the recomputed nodes and
//! their extra FLOPs, and the estimated peak before and after.

use crate::autodiff::SEED_LABEL;
use crate::elementwise_fusion::ElementwiseFusion;
use crate::mixed_precision::{MixedPrecision, Precision};
use crate::Pass;
use kiln_ir::{Graph, IrError, NodeId, Op, ReduceOp};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// Which activations to recompute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    #[default]
    SaveAll,
    /// Every layer keeps its matmuls' and attentions' results and recomputes the rest.
    Selective,
    Layers,
    /// At most this many bytes at the peak (estimated; see the module doc).
    Budget(u64),
}

impl fmt::Display for Recompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recompute::SaveAll => f.write_str("save-all"),
            Recompute::Selective => f.write_str("selective"),
            Recompute::Layers => f.write_str("layers"),
            Recompute::Budget(b) => write!(f, "budget {}", mib(*b)),
        }
    }
}

impl FromStr for Recompute {
    type Err = String;
    /// `save-all`, `selective`, `layers`, or a byte count with an optional `KiB`, `MiB` or
    /// `GiB` suffix.
    fn from_str(s: &str) -> Result<Recompute, String> {
        match s {
            "save-all" => return Ok(Recompute::SaveAll),
            "selective" => return Ok(Recompute::Selective),
            "layers" => return Ok(Recompute::Layers),
            _ => {}
        }
        let (number, unit) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
            .into_iter()
            .find_map(|(suffix, unit)| s.strip_suffix(suffix).map(|n| (n, unit)))
            .unwrap_or((s, 1));
        let value: f64 = number.trim().parse().map_err(|_| {
            format!(
                "expected `save-all`, `selective`, `layers` or a byte budget like `64MiB`, \
                 found `{s}`"
            )
        })?;
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("a memory budget must be positive, found `{s}`"));
        }
        Ok(Recompute::Budget((value * unit as f64) as u64))
    }
}

/// The label suffix of a recomputed copy: CSE must not merge it back into the original.
const RECOMPUTED: &str = " (recomputed)";

/// Whether `node` is a copy this pass made.
pub fn is_recomputed(node: &kiln_ir::Node) -> bool {
    node.label
        .as_deref()
        .is_some_and(|l| l.ends_with(RECOMPUTED))
}

#[derive(Clone, Copy)]
pub struct RecomputePlanning {
    pub policy: Recompute,
    /// The `mixed-precision` policy the pipeline applies later: the estimate counts each value
    /// in the type it will be stored in.
    pub precision: Precision,
    /// The `elementwise-fusion` the pipeline runs later: the estimate fuses a copy as it will
    /// (a target that recomputes a softmax's exponentials does not store them).
    pub fusion: ElementwiseFusion,
    /// Whether the target computes a `flash_attention` and the `flash_attention_lse` of the same
    /// operands in one kernel, where the first of them comes: the estimate counts both there.
    pub attention_with_lse: bool,
}

impl RecomputePlanning {
    /// The planning of `policy` for a target that runs the standard `mixed-precision` and
    /// `elementwise-fusion` and computes attention and log-sum-exp apart.
    pub fn new(policy: Recompute, precision: Precision) -> RecomputePlanning {
        RecomputePlanning {
            policy,
            precision,
            fusion: ElementwiseFusion::default(),
            attention_with_lse: false,
        }
    }
}

/// How much of a layer's saved activations is recomputed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// Nothing: the backward reads what the forward computed.
    Saved,
    /// Everything but the results of expensive nodes ([`is_expensive`]).
    Selective,
    /// Everything, from the layer's input.
    Whole,
}

/// Nodes whose results a selective layer keeps: their arithmetic grows faster than their
/// result's bytes, so recomputing them costs more than reading them back.
fn is_expensive(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul | Op::FlashAttention(_) | Op::FlashAttentionLse(_)
    )
}

/// The levels of `layers` layers at step `step` (`0 ..= 2·layers`) of the budget's order (see
/// the module doc): the first `step` layers selective, then, past `layers`, the first
/// `step − layers` recomputed whole.
fn levels(layers: usize, step: usize) -> Vec<Level> {
    let whole = step.saturating_sub(layers);
    (0..layers)
        .map(|i| {
            if i < whole {
                Level::Whole
            } else if i < step {
                Level::Selective
            } else {
                Level::Saved
            }
        })
        .collect()
}

impl Pass for RecomputePlanning {
    fn name(&self) -> &'static str {
        "recompute"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let Some(plan) = Plan::of(g) else {
            return Ok(());
        };
        let estimate = |g: &Graph| estimate(g, self);
        let before = estimate(g)?;
        let layers = plan.layers.len();
        let step = match self.policy {
            Recompute::SaveAll => 0,
            Recompute::Selective => layers,
            Recompute::Layers => 2 * layers,
            Recompute::Budget(budget) => {
                let peak = |step: usize| -> Result<u64, IrError> {
                    let mut trial = g.clone();
                    plan.apply(&mut trial, &levels(layers, step))?;
                    Ok(estimate(&trial)?.peak)
                };
                let least = peak(2 * layers)?;
                if least > budget {
                    return Err(IrError::new(format!(
                        "recompute: the memory budget of {} is below the {} that recomputing \
                         every layer needs (estimated at the maxima)",
                        mib(budget),
                        mib(least)
                    )));
                }
                // The fewest steps that fit: the peak falls as steps are taken.
                let (mut lo, mut hi) = (0, 2 * layers);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if peak(mid)? <= budget {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo
            }
        };
        let levels = levels(layers, step);
        let recomputed = plan.apply(g, &levels)?;
        let after = estimate(g)?;
        let count = |level| levels.iter().filter(|&&l| l == level).count();
        g.remark(format!(
            "recompute ({}): of {layers} layers, {} recomputed whole and {} selectively ({} \
             nodes, {:.1} MFLOP more); saved activations {} → {}; estimated peak {} → {}",
            self.policy,
            count(Level::Whole),
            count(Level::Selective),
            recomputed.nodes,
            recomputed.flops as f64 / 1e6,
            mib(before.saved),
            mib(after.saved),
            mib(before.peak),
            mib(after.peak)
        ));
        Ok(())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The forward/backward split of a differentiated graph and its layers.
struct Plan {
    /// Per layer (in forward order), the saved activations it would recompute.
    layers: Vec<Vec<NodeId>>,
    /// Values that stay saved whatever the policy: layer boundaries.
    boundaries: HashSet<NodeId>,
    backward: HashSet<NodeId>,
}

struct Recomputed {
    nodes: usize,
    flops: u64,
}

impl Plan {
    /// `None` for a graph with no backward.
    fn of(g: &Graph) -> Option<Plan> {
        let seeds: Vec<NodeId> = g
            .node_ids()
            .filter(|&id| g.node(id).label.as_deref() == Some(SEED_LABEL))
            .collect();
        if seeds.is_empty() {
            return None;
        }
        let mut backward: HashSet<NodeId> = HashSet::new();
        let mut stack = seeds;
        while let Some(id) = stack.pop() {
            if backward.insert(id) {
                stack.extend(g.users(id));
            }
        }
        let is_boundary = |id: NodeId| {
            g.node(id)
                .label
                .as_deref()
                .is_some_and(|l| l == "embed" || l.ends_with(".out"))
        };
        let boundaries: HashSet<NodeId> = g
            .node_ids()
            .filter(|&id| !backward.contains(&id) && is_boundary(id))
            .collect();
        // Layer of a forward value: the number of boundaries it depends on, less one (values
        // before the first boundary and after the last are not recomputed).
        let order = g.order();
        let mut depth: HashMap<NodeId, usize> = HashMap::new();
        for &id in &order {
            let d = g
                .operands(id)
                .iter()
                .map(|o| depth.get(o).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            depth.insert(id, d + boundaries.contains(&id) as usize);
        }
        let mut layers: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        let last = boundaries.len();
        for &id in &order {
            let saved = !backward.contains(&id)
                && !is_source(&g.node(id).op)
                && !boundaries.contains(&id)
                && g.users(id).iter().any(|u| backward.contains(u));
            let d = depth[&id];
            if saved && d >= 1 && d < last {
                layers.entry(d).or_default().push(id);
            }
        }
        Some(Plan {
            layers: layers.into_values().collect(),
            boundaries,
            backward,
        })
    }

    /// Recomputes each layer's saved activations for their backward users, as much as its
    /// level says.
    fn apply(&self, g: &mut Graph, levels: &[Level]) -> Result<Recomputed, IrError> {
        let mut copies: HashMap<NodeId, NodeId> = HashMap::new();
        let mut flops = 0;
        for (layer, &level) in self.layers.iter().zip(levels) {
            let keeps =
                |g: &Graph, id: NodeId| level == Level::Selective && is_expensive(&g.node(id).op);
            if level == Level::Saved {
                continue;
            }
            for &id in layer {
                if keeps(g, id) {
                    continue;
                }
                let copy = self.copy(g, id, &keeps, &mut copies, &mut flops)?;
                for user in g.users(id) {
                    if self.backward.contains(&user) {
                        g.replace_operand_uses(user, id, copy);
                    }
                }
            }
        }
        Ok(Recomputed {
            nodes: copies.len(),
            flops,
        })
    }

    /// A copy of forward value `id` computed from boundaries, sources and the values `keeps`
    /// names.
    fn copy(
        &self,
        g: &mut Graph,
        id: NodeId,
        keeps: &impl Fn(&Graph, NodeId) -> bool,
        copies: &mut HashMap<NodeId, NodeId>,
        flops: &mut u64,
    ) -> Result<NodeId, IrError> {
        if self.boundaries.contains(&id) || is_source(&g.node(id).op) || keeps(g, id) {
            return Ok(id);
        }
        if let Some(&c) = copies.get(&id) {
            return Ok(c);
        }
        let operands = g
            .operands(id)
            .into_iter()
            .map(|o| self.copy(g, o, keeps, copies, flops))
            .collect::<Result<Vec<_>, _>>()?;
        let node = g.node(id).clone();
        *flops += node_flops(g, id);
        let label = node.label.unwrap_or_else(|| node.op.name().to_string());
        let copy = g.push_typed(node.op, &operands, node.ty)?;
        g.set_label(copy, format!("{label}{RECOMPUTED}"));
        copies.insert(id, copy);
        Ok(copy)
    }
}

fn is_source(op: &Op) -> bool {
    op.is_source()
}

/// Floating-point operations of node `id` at the symbols' maxima (matmuls `2·m·n·k`, attention
/// `4·S·T·D` per head, anything else one per element it reads or writes).
fn node_flops(g: &Graph, id: NodeId) -> u64 {
    let elems = |n: NodeId| max_bytes(g, n) / 4;
    match &g.node(id).op {
        Op::MatMul => {
            let a = g.ty(g.operands(id)[0]);
            let k = a.shape[a.rank() - 1].max_value(g.symbols()).unwrap_or(0) as u64;
            2 * elems(id) * k
        }
        Op::FlashAttention(_) => {
            let ops = g.operands(id);
            let keys = g.ty(ops[1]).shape[2].max_value(g.symbols()).unwrap_or(0) as u64;
            4 * elems(ops[0]) * keys
        }
        _ => g
            .operands(id)
            .into_iter()
            .map(elems)
            .max()
            .unwrap_or(0)
            .max(elems(id)),
    }
}

/// The bytes of saved activations and the estimated peak (see the module doc).
struct Estimate {
    saved: u64,
    peak: u64,
}

/// Bytes of `id`'s value at the symbols' maxima.
/// Whether `id` is a matmul whose only reader sums it over leading batch axes (a weight's
/// gradient, `Σ_b X_bᵀ·dY_b`): backends contract those axes with `k` straight into the sum
/// (the CPU lowering's `batch_sum.rs`, which the CUDA backend shares), so the product is never
/// stored.
fn summed_over_batch(g: &Graph, id: NodeId) -> bool {
    let users = g.users(id);
    let rank = g.ty(id).rank();
    matches!(g.node(id).op, Op::MatMul)
        && users.len() == 1
        && !g.outputs().iter().any(|(_, o)| *o == id)
        && matches!(&g.node(users[0]).op, Op::Reduce { op: ReduceOp::Sum, axes }
            if !axes.is_empty()
                && axes.len() <= rank - 2
                && axes.iter().enumerate().all(|(i, &x)| i == x))
}

fn max_bytes(g: &Graph, id: NodeId) -> u64 {
    let ty = g.ty(id);
    let numel: u64 = ty
        .shape
        .iter()
        .map(|d| d.max_value(g.symbols()).unwrap_or(0) as u64)
        .product();
    numel * ty.dtype.size_bytes() as u64
}

/// [`Estimate`] of `g` as it will be after the planning's `mixed-precision` (which narrows
/// values) and `elementwise-fusion` (which removes most elementwise intermediates): both run on
/// a copy first.
fn estimate(g: &Graph, planning: &RecomputePlanning) -> Result<Estimate, IrError> {
    let mut fused = g.clone();
    MixedPrecision {
        precision: planning.precision,
    }
    .run(&mut fused)?;
    planning.fusion.run(&mut fused)?;
    Ok(estimate_as_is(&fused, planning.attention_with_lse))
}

/// The live bytes over the canonical order, counting a view (`reshape`, `permute`,
/// `broadcast`, `slice`) as reading its operand's storage rather than as storage of its own,
/// and constants as no storage; with `attention_with_lse`, an attention and the log-sum-exp of
/// the same operands count as computed together where the first of them is.
fn estimate_as_is(g: &Graph, attention_with_lse: bool) -> Estimate {
    let order = match attention_with_lse {
        true => with_attention_twins_together(g, g.order()),
        false => g.order(),
    };
    let position: HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut storage: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in &order {
        let view = matches!(
            g.node(id).op,
            Op::Reshape | Op::Permute { .. } | Op::Broadcast | Op::Slice { .. }
        );
        let root = match g.operands(id).first() {
            Some(o) if view => storage.get(o).copied().unwrap_or(*o),
            _ => id,
        };
        storage.insert(id, root);
    }
    // Constants and index ramps are read where they are used, never stored; a product only
    // summed over its batch axes is computed into the sum.
    let stored =
        |id: NodeId| storage[&id] == id && !g.node(id).op.is_source() && !summed_over_batch(g, id);
    let bytes = |id: NodeId| if stored(id) { max_bytes(g, id) } else { 0 };
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for (i, &id) in order.iter().enumerate() {
        for o in g.operands(id) {
            if let Some(&root) = storage.get(&o) {
                if position.contains_key(&root) {
                    last_use.insert(root, i);
                }
            }
        }
    }
    for (_, id) in g.outputs() {
        if let Some(&root) = storage.get(id) {
            last_use.insert(root, order.len());
        }
    }
    let backward = Plan::of(g).map(|p| p.backward).unwrap_or_default();
    // Saved: the forward values still live when the backward starts.
    let start = order
        .iter()
        .position(|id| backward.contains(id))
        .unwrap_or(order.len());
    let saved = order[..start]
        .iter()
        .filter(|id| last_use.get(id).is_some_and(|&at| at >= start))
        .map(|&id| bytes(id))
        .sum();
    let mut frees: BTreeMap<usize, u64> = BTreeMap::new();
    for (&id, &at) in &last_use {
        *frees.entry(at).or_insert(0) += bytes(id);
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for (i, &id) in order.iter().enumerate() {
        live += bytes(id);
        peak = peak.max(live);
        live -= frees.get(&i).copied().unwrap_or(0);
    }
    Estimate { saved, peak }
}

/// `order` with each `flash_attention_lse` moved to its `flash_attention` twin (the same
/// operands) where that comes first, and each such attention to its twin where that does.
fn with_attention_twins_together(g: &Graph, order: Vec<NodeId>) -> Vec<NodeId> {
    let is_attention = |id: NodeId| matches!(g.node(id).op, Op::FlashAttention(_));
    let is_lse = |id: NodeId| matches!(g.node(id).op, Op::FlashAttentionLse(_));
    let twin = |id: NodeId, pairs: &dyn Fn(NodeId) -> bool| {
        let operands = g.operands(id);
        g.users(operands[0])
            .into_iter()
            .find(|&u| pairs(u) && g.operands(u) == operands)
    };
    let mut moved: HashSet<NodeId> = HashSet::new();
    let mut placed = Vec::with_capacity(order.len());
    for &id in &order {
        if moved.contains(&id) {
            continue;
        }
        placed.push(id);
        let other = if is_attention(id) {
            twin(id, &is_lse)
        } else if is_lse(id) {
            twin(id, &is_attention)
        } else {
            None
        };
        if let Some(other) = other {
            moved.insert(other);
            placed.push(other);
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_from_text() {
        assert_eq!("save-all".parse(), Ok(Recompute::SaveAll));
        assert_eq!("selective".parse(), Ok(Recompute::Selective));
        assert_eq!("layers".parse(), Ok(Recompute::Layers));
        assert_eq!("64MiB".parse(), Ok(Recompute::Budget(64 << 20)));
        assert_eq!("1.5GiB".parse(), Ok(Recompute::Budget(3 << 29)));
        assert_eq!("4096".parse(), Ok(Recompute::Budget(4096)));
        for bad in ["", "-1MiB", "lots", "0"] {
            assert!(bad.parse::<Recompute>().is_err(), "{bad}");
        }
    }

    /// The budget's steps make layers selective first layer first, then recompute them whole
    /// first layer first; each step recomputes at least as much as the one before.
    #[test]
    fn budget_steps_go_selective_before_whole() {
        use Level::*;
        assert_eq!(levels(3, 0), [Saved, Saved, Saved]);
        assert_eq!(levels(3, 2), [Selective, Selective, Saved]);
        assert_eq!(levels(3, 3), [Selective, Selective, Selective]);
        assert_eq!(levels(3, 4), [Whole, Selective, Selective]);
        assert_eq!(levels(3, 6), [Whole, Whole, Whole]);
        let rank = |l: &Level| [Saved, Selective, Whole].iter().position(|x| x == l);
        for step in 0..6 {
            let (now, next) = (levels(3, step), levels(3, step + 1));
            assert!(now.iter().zip(&next).all(|(a, b)| rank(a) <= rank(b)));
        }
    }

    /// The estimate follows the fusion it is given: a softmax's exponentials, read by its sum
    /// and its division, are stored by the default fusion and not by one that recomputes them.
    #[test]
    fn the_estimate_fuses_as_the_pipeline_will() {
        let softmax = kiln_ir::text::parse(
            "graph g
input %x : f32[64, 1024]
%0 = reduce_max %x axes=[1] : f32[64, 1]
%1 = broadcast %0 : f32[64, 1024]
%2 = sub %x, %1 : f32[64, 1024]
%3 = exp %2 : f32[64, 1024]
%4 = reduce_sum %3 axes=[1] : f32[64, 1]
%5 = broadcast %4 : f32[64, 1024]
%6 = div %3, %5 : f32[64, 1024]
output y = %6",
        )
        .unwrap();
        let storing = RecomputePlanning::new(Recompute::SaveAll, Precision::F32);
        let recomputing = RecomputePlanning {
            fusion: ElementwiseFusion { memory_bound: true },
            ..storing
        };
        let storing = estimate(&softmax, &storing).unwrap();
        let recomputed = estimate(&softmax, &recomputing).unwrap();
        // The exponentials (64 × 1024 f32) are not held; the row maxima (64 f32) are, until
        // the division computes the exponentials again.
        assert_eq!(storing.peak - recomputed.peak, 64 * 1024 * 4 - 64 * 4);
    }
}
