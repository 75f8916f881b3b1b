//! `elementwise-fusion`: chains of elementwise ops, and the elementwise ops feeding a reduction,
//! become one fused region each.
//!
//! Matches: elementwise nodes (unary, binary, compare, `select`, `cast`). Such a node is
//! *inlined* into its users when
//! 1. it is not a program output and every user is elementwise or a reduction of it, and
//! 2. it has one user; or it is cheap (no `exp`, `log`, `sin`, `cos`, `tanh`, `erf`,
//!    `sigmoid`, `pow`) and reads no other elementwise value directly; or, for a target bound
//!    by memory bandwidth ([`ElementwiseFusion::memory_bound`]), it is one expensive
//!    unary op of such a value or of a cheap op of them that only it reads (`exp(x − max)`).
//!    A copy into several regions is then at most two ops deep with one transcendental, so
//!    recomputation never chains (a residual stream is stored at least every other add). A
//!    softmax's exponentials are then recomputed by the sum and by each reader instead of being
//!    stored: over the 128,256 logits of a Llama-3.2-1B training batch of 8 × 2048 tokens that
//!    is 7.8 GiB not held (the `train_step` arena 20.3 → 16.4 GiB);
//! 3. or, for a target bound by memory bandwidth, its tree — the
//!    inlined nodes it is computed from, down to the values that are not — has at most 8 steps
//!    and 2 transcendentals, and its leaves take no more bytes per element than the node
//!    (broadcasts and constants count none): each reader then loads the leaves instead of the
//!    stored value, which costs no more traffic and saves the store. SwiGLU's backward reads
//!    the bf16 gate, up and output gradient instead of storing `sigmoid(gate)`,
//!    `gate·sigmoid(gate)` and `gradient·up` in f32; the residual stream (an f32 value plus a
//!    bf16 one) stays stored.
//!
//! First, a cast to bf16 that is the only reader of an attention result is folded into the
//! attention (`rounded_attention.rs`), and layout ops that split elementwise chains are moved
//! out of them (`layout.rs`): broadcasts below cheap ops, concats below elementwise ops, slices
//! above them.
//!
//! Every other elementwise node, and every reduction, is a *root*. A root with at least one
//! inlined operand is replaced by a region of the inlined operand trees: `fused` for an
//! elementwise root (the root is the last step), `fused_reduce_*` for a reduction (the region
//! computes the reduced value). Leaves are the values the trees read that are not inlined:
//! sources, layout ops (`broadcast`, `slice`, `reshape`, …), matmuls, gathers, other roots. An
//! inlined node read twice in one region is one step; one read by several regions is a step
//! of each.
//!
//! Produces, on the Llama decoder: RMSNorm as `fused_reduce_mean` (x·x) + `fused`
//! (x·rsqrt(m + ε)·w); SwiGLU as one `fused` (silu(gate)·up); the masked, scaled scores as
//! `fused` (mask compare, scale, select) + `fused` (sub, exp) between the reductions; RoPE as
//! one `fused` per half of the rotation, joined by a concat (which the CPU backend lowers to
//! each half writing its part of the result).
//!
//! Why: a region is one kernel in the backends, and its intermediate values never reach
//! memory. Decode is bound by weight reads, so every kernel it saves is launch and
//! synchronization overhead saved; prefill saves the memory traffic of each intermediate.
//!
//! Refuses: nothing it matches. Elementwise work separated by a layout op (a broadcast of a
//! reduced value, a concat) stays in separate regions: a region's leaves all have the region's
//! shape, so broadcasts remain explicit, free views in front of it.

use crate::canonicalize::{merge_equal, remove_dead};
use crate::pipeline::Pass;
use kiln_ir::{
    BinaryOp, Graph, IrError, NodeId, Op, Region, RegionKind, Step, StepOp, TensorType, UnaryOp,
};
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Clone, Copy, Debug, Default)]
pub struct ElementwiseFusion {
    /// The target is bound by memory bandwidth (a GPU): a value is computed again in each
    /// region that reads it rather than stored where that costs no more traffic — one
    /// expensive unary op of a stored value (`exp(x − max)`, rule 2) and small trees whose
    /// leaves are no wider than the value (rule 3). Off, such values are stored once: on the
    /// CPU an `exp` costs more than its traffic.
    pub memory_bound: bool,
}

mod epilogue;
mod layout;
mod rounded_attention;

/// Replaces `root` and the `producer` only it reads by one node computing both, `op` of
/// `operands` typed as `root`, labeled as `producer`.
fn absorb(
    g: &mut Graph,
    (root, producer): (NodeId, NodeId),
    op: Op,
    operands: &[NodeId],
) -> Result<NodeId, IrError> {
    let merged = g.push_typed(op, operands, g.ty(root).clone())?;
    if let Some(label) = g.node(producer).label.clone() {
        g.set_label(merged, label);
    }
    g.replace_uses(root, merged);
    g.remove(root);
    g.remove(producer);
    Ok(merged)
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast)
}

/// Ops worth recomputing in every region that reads them.
fn is_cheap(op: &Op) -> bool {
    match op {
        Op::Unary(u) => !matches!(
            u,
            UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tanh
                | UnaryOp::Erf
                | UnaryOp::Sigmoid
        ),
        Op::Binary(b) => *b != BinaryOp::Pow,
        Op::Select | Op::Cast => true,
        _ => false,
    }
}

/// Whether elementwise node `id` may be computed again in each of several regions (rule 2 in
/// the module doc): a cheap op of non-elementwise values, or one expensive unary op of such a
/// value or of a cheap op of them that only it reads.
fn duplicable(g: &Graph, id: NodeId, transcendentals: bool) -> bool {
    let reads_no_elementwise = |id: NodeId| {
        g.operands(id)
            .iter()
            .all(|&o| !is_elementwise(&g.node(o).op))
    };
    let op = &g.node(id).op;
    if is_cheap(op) {
        return reads_no_elementwise(id);
    }
    if !transcendentals || !matches!(op, Op::Unary(_)) {
        return false;
    }
    let x = g.operands(id)[0];
    let x_op = &g.node(x).op;
    !is_elementwise(x_op) || (is_cheap(x_op) && g.users(x) == [id] && reads_no_elementwise(x))
}

/// What computing an inlined node again in a region costs: its steps down to the values that
/// are not inlined (counted along every path: an upper bound), how many of them are
/// transcendental, and those values, its leaves.
struct Tree {
    steps: usize,
    transcendentals: usize,
    leaves: BTreeSet<NodeId>,
}

/// The most steps, and transcendental steps, of a tree copied into several regions (rule 3).
const COPIED_STEPS: usize = 8;
const COPIED_TRANSCENDENTALS: usize = 2;

impl Tree {
    /// The tree of elementwise node `id` over the trees of its inlined operands.
    fn of(g: &Graph, id: NodeId, trees: &HashMap<NodeId, Tree>) -> Tree {
        let mut tree = Tree {
            steps: 1,
            transcendentals: usize::from(!is_cheap(&g.node(id).op)),
            leaves: BTreeSet::new(),
        };
        for o in g.operands(id) {
            match trees.get(&o) {
                Some(t) => {
                    tree.steps += t.steps;
                    tree.transcendentals += t.transcendentals;
                    tree.leaves.extend(&t.leaves);
                }
                None => {
                    tree.leaves.insert(o);
                }
            }
        }
        tree
    }

    /// Whether a region reading this tree's leaves instead of `id`'s stored value reads no more
    /// bytes per element than the value has (broadcast views and constants count none): a copy
    /// in each reader then costs no more traffic than storing the value and loading it back.
    fn copyable(&self, g: &Graph, id: NodeId) -> bool {
        let leaf_bytes: usize = self
            .leaves
            .iter()
            .filter(|&&l| !matches!(g.node(l).op, Op::Broadcast | Op::Const(_)))
            .map(|&l| g.ty(l).dtype.size_bytes())
            .sum();
        self.steps <= COPIED_STEPS
            && self.transcendentals <= COPIED_TRANSCENDENTALS
            && leaf_bytes <= g.ty(id).dtype.size_bytes()
    }
}

/// The nodes inlined into their users (rules in the module doc).
fn inlined_nodes(g: &Graph, memory_bound: bool) -> HashSet<NodeId> {
    let outputs: HashSet<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    let mut trees: HashMap<NodeId, Tree> = HashMap::new();
    for id in g.order() {
        let op = &g.node(id).op;
        if !is_elementwise(op) || outputs.contains(&id) {
            continue;
        }
        let users = g.users(id);
        let fusible = users.iter().all(|&u| {
            let user = &g.node(u).op;
            is_elementwise(user) || matches!(user, Op::Reduce { .. })
        });
        if !fusible || users.is_empty() {
            continue;
        }
        let tree = Tree::of(g, id, &trees);
        let inlined = users.len() == 1
            || duplicable(g, id, memory_bound)
            || (memory_bound && tree.copyable(g, id));
        if inlined {
            trees.insert(id, tree);
        }
    }
    trees.into_keys().collect()
}

/// A value while a region is collected: a leaf or a step, each numbered in its own list.
#[derive(Clone, Copy)]
enum Value {
    Leaf(usize),
    Step(usize),
}

/// A region under construction, collected from the inlined trees below one root.
#[derive(Default)]
struct Collector {
    leaves: Vec<NodeId>,
    steps: Vec<(StepOp, Vec<Value>)>,
    values: HashMap<NodeId, Value>,
}

impl Collector {
    fn value(&mut self, g: &Graph, inlined: &HashSet<NodeId>, id: NodeId) -> Value {
        if let Some(&v) = self.values.get(&id) {
            return v;
        }
        let v = if inlined.contains(&id) {
            self.step(g, inlined, id)
        } else {
            self.leaves.push(id);
            Value::Leaf(self.leaves.len() - 1)
        };
        self.values.insert(id, v);
        v
    }

    /// `id` as a step over its operands' values.
    fn step(&mut self, g: &Graph, inlined: &HashSet<NodeId>, id: NodeId) -> Value {
        let args = g
            .operands(id)
            .into_iter()
            .map(|o| self.value(g, inlined, o))
            .collect();
        let node = g.node(id);
        let op = StepOp::of(&node.op, node.ty.dtype).expect("only elementwise nodes are steps");
        self.steps.push((op, args));
        Value::Step(self.steps.len() - 1)
    }

    fn region(self, kind: RegionKind) -> (Region, Vec<NodeId>) {
        let leaves = self.leaves.len();
        let number = |v: &Value| match *v {
            Value::Leaf(i) => i,
            Value::Step(i) => leaves + i,
        };
        let steps = self
            .steps
            .iter()
            .map(|(op, args)| Step {
                op: *op,
                args: args.iter().map(number).collect(),
            })
            .collect();
        (Region { kind, steps }, self.leaves)
    }
}

/// The region replacing `root`, if any of its operands is inlined.
fn region_for(g: &Graph, inlined: &HashSet<NodeId>, root: NodeId) -> Option<(Region, Vec<NodeId>)> {
    let operands = g.operands(root);
    if !operands.iter().any(|o| inlined.contains(o)) {
        return None;
    }
    let mut c = Collector::default();
    match &g.node(root).op {
        Op::Reduce { op, axes } => {
            c.value(g, inlined, operands[0]);
            Some(c.region(RegionKind::Reduce {
                op: *op,
                axes: axes.clone(),
            }))
        }
        _ => {
            c.step(g, inlined, root);
            Some(c.region(RegionKind::Map))
        }
    }
}

impl Pass for ElementwiseFusion {
    fn name(&self) -> &'static str {
        "elementwise-fusion"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let rounded = rounded_attention::run(g)?;
        let moved = layout::run(g)?;
        // The rewrites may slice one value the same way twice.
        merge_equal(g);
        let inlined = inlined_nodes(g, self.memory_bound);
        let roots: Vec<NodeId> = g
            .order()
            .into_iter()
            .filter(|&id| {
                let op = &g.node(id).op;
                (is_elementwise(op) || matches!(op, Op::Reduce { .. })) && !inlined.contains(&id)
            })
            .collect();
        let (mut regions, mut steps) = (0, 0);
        for root in roots {
            let Some((region, leaves)) = region_for(g, &inlined, root) else {
                continue;
            };
            regions += 1;
            steps += region.steps.len();
            let ty: TensorType = g.ty(root).clone();
            let fused = g.push_typed(Op::Fused(region), &leaves, ty)?;
            if let Some(label) = g.node(root).label.clone() {
                g.set_label(fused, label);
            }
            g.replace_uses(root, fused);
        }
        // The inlined nodes still read the matmuls until they are gone.
        let mut removed = remove_dead(g);
        let epilogues = epilogue::run(g)?;
        removed += remove_dead(g);
        g.remark(format!(
            "elementwise-fusion: {moved}, {regions} regions of {steps} elementwise steps in all, \
             {epilogues} matmul epilogues, {rounded} attention results rounded as stored, \
             {removed} nodes removed"
        ));
        Ok(())
    }
}
