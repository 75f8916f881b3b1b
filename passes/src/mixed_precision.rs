//! `mixed-precision`: stores weights and runs matmuls in a 16-bit float type, under a policy.
//!
//! Matches: under every policy but `f32`, each `f32` weight that is only contracted — every use,
//! through `permute`, `reshape`, `broadcast` and `slice` views, is a `matmul` operand or the
//! table of a `gather` (linear layers, embeddings, a tied head) — in a program that computes no
//! gradients, and, under `bf16` and `f16`, every `f32 × f32 → f32` matmul (of the forward and,
//! in a differentiated program, of the backward).
//!
//! Produces, by [`Precision`]:
//!
//! | policy | weights stored | matmul operands | accumulation, matmul result | everything else |
//! | --- | --- | --- | --- | --- |
//! | `f32` (default) | f32 | f32 | f32 | f32 (the pass changes nothing) |
//! | `bf16-weights` | bf16 | f32 (the weight widened on load) | f32 | f32 |
//! | `bf16` | bf16 | bf16 | f32 | f32 |
//! | `f16` | f16 | f16 | f32 | f32 |
//!
//! A narrowed weight becomes `weight @w : bf16[..]` followed by one `cast` back to f32 that its
//! users read; a `gather` from it gathers the narrow rows and casts those
//! (`cast(gather(@w, ids))`), so no f32 copy of a table exists. Under `bf16` and `f16` each matmul
//! becomes `matmul(narrow(a), narrow(b)) : f32`, a widening matmul (narrow operands, f32
//! accumulation and result), where `narrow` cancels a `cast` from the narrow type (a weight's),
//! moves through `permute`, `reshape` and `broadcast` views (so the transposed weight is read
//! narrow in place), and otherwise inserts a `cast`. Under `bf16` each `flash_attention` (two
//! matmuls fused) likewise takes narrow queries, keys and values; its scores and softmax
//! statistics stay f32, its probabilities are rounded to bf16 before they weight the values,
//! as the unfused graph's second matmul would take them, and its result is f32 (stored bf16 in
//! a differentiated program, as autocast's attention returns it). Its log-sum-exp and
//! gradients take the same narrow operands (the gradients also a narrow cotangent and the
//! result as stored), so the backward differentiates the forward computed, with bf16 weights
//! in its matmuls and f32 gradients; a gradient that only the backward's matmuls read (through a `cast` to bf16) is
//! declared bf16 instead, rounded as the kernel stores it (the same value as the cast's), so
//! its f32 copy is never held. In a differentiated program under `bf16`, each matmul that
//! contracts a weight (a forward projection, the logits, or the gradient of the activations
//! it read) also stores its result bf16, as PyTorch's autocast does: `matmul(narrow(a),
//! narrow(b)) : bf16` (the f32 sum rounded as it is stored) read through a `cast` to f32. These
//! are the values a layer saves for its backward and the maps around them read, so both move
//! half the bytes; the loss widens the bf16 logits and takes its statistics in f32. Weight
//! gradients (no weight operand) stay f32 for the optimizer, and so do program outputs.
//! Attention stays f32 where a row has a single query (a decode step reads the f32
//! KV cache as it is: narrowing it would copy the cache every step for no matmul-sized work),
//! and under `f16`. Norms (their statistics and scales),
//! softmax, RoPE, the residual stream, the KV cache and the logits of inference programs stay
//! f32: program inputs and
//! outputs keep their types, so the pass changes no signature but the weights' dtypes.
//!
//! Why: a decode step reads every weight once per token, so its time is the weights' bytes over
//! the memory bandwidth; storing them in 16 bits halves it (`bf16-weights`, the CPU policy:
//! compute stays f32, the matmul widens each weight in registers). Matmuls hold nearly all the
//! arithmetic and 16-bit units multiply at several times the f32 rate, while products of 16-bit
//! values are exact in f32, so narrow operands with f32 accumulation lose only the operands'
//! rounding (`bf16`, `f16`, for backends with 16-bit matmul units). The reductions whose error
//! grows with length or that feed `exp` (norm statistics, softmax max and sum), the residual
//! stream that every layer adds into, and the logits that sampling compares keep f32: elementwise
//! work is bound by memory traffic that fusion removes, not by arithmetic, so narrowing it would
//! add rounding for little gain. Each narrow value is one rounding to nearest even; the
//! interpreter reproduces it, and `docs/passes.md` states the errors measured against f32.
//!
//! Refuses (leaves in f32, counted in the remark): weights read other than by contraction (norm
//! scales, biases: a vector's bytes are negligible and it multiplies every activation), every
//! weight of a differentiated program (one holding `autodiff`'s seed: its weights are the f32
//! master weights that training updates and passes to `train_step` and `accumulate` alike; in
//! `train_step` AdamW reads each one elementwise anyway), and matmuls that are not
//! `f32 × f32 → f32`. `f16`'s range ends at 65504: activations beyond it become infinite at the
//! matmul's input cast, which the pass cannot rule out. `autodiff` runs before this pass, so
//! under `bf16` and `f16` the backward's matmuls (gradients of activations and of weights) take
//! narrow operands as the forward's do, while gradients, their clipping and the optimizer stay
//! f32; there is no loss scaling, so small f16 gradient operands flush to zero (or subnormals)
//! at the cast, and large ones overflow.

use crate::autodiff::SEED_LABEL;
use crate::canonicalize::remove_dead;
use crate::pipeline::Pass;
use kiln_ir::{DType, Graph, IrError, NodeId, Op};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A mixed-precision policy (see the module doc's table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything f32.
    #[default]
    F32,
    /// Weights stored bf16, all arithmetic f32.
    Bf16Weights,
    /// Weights and matmul operands bf16, f32 accumulation; the rest f32.
    Bf16,
    /// Weights and matmul operands f16, f32 accumulation; the rest f32.
    F16,
}

impl Precision {
    pub const ALL: [Precision; 4] = [
        Precision::F32,
        Precision::Bf16Weights,
        Precision::Bf16,
        Precision::F16,
    ];

    /// The policy's name on the command line and in remarks.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16Weights => "bf16-weights",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The type contracted weights are stored in.
    pub fn weight_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16Weights | Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// The type of matmul operands.
    pub fn matmul_dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Bf16Weights => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown precision `{s}` (expected one of f32, bf16-weights, bf16, f16)")
            })
    }
}

pub struct MixedPrecision {
    pub precision: Precision,
}

/// Whether every use of `v`, looking through views, contracts it (a matmul operand or a gather's
/// table); a program output is not.
fn only_contracted(g: &Graph, v: NodeId) -> bool {
    let users = g.users(v);
    let is_output = g.outputs().iter().any(|(_, id)| *id == v);
    !is_output
        && !users.is_empty()
        && users.iter().all(|&u| match g.node(u).op {
            Op::MatMul => true,
            Op::Gather { .. } => {
                let ops = g.operands(u);
                ops[0] == v && ops[1] != v
            }
            Op::Permute { .. } | Op::Reshape | Op::Broadcast | Op::Slice { .. } => {
                only_contracted(g, u)
            }
            _ => false,
        })
}

/// Stores weight `w` as `dtype` (see the module doc); gathers from it gather narrow rows.
fn narrow_weight(g: &mut Graph, w: NodeId, dtype: DType) -> Result<(), IrError> {
    let widened = g.retype_weight(w, dtype)?;
    for user in g.users(widened) {
        if let Op::Gather { axis } = g.node(user).op {
            let indices = g.operands(user)[1];
            let rows = g.gather(w, indices, axis)?;
            let wide = g.cast(rows, DType::F32)?;
            if let Some(label) = g.node(user).label.clone() {
                g.set_label(wide, label);
            }
            g.replace_uses(user, wide);
        }
    }
    Ok(())
}

/// `v` in `dtype`: a cast from `dtype` undone, views narrowed at their source, else a new cast.
fn narrow(
    g: &mut Graph,
    v: NodeId,
    dtype: DType,
    memo: &mut HashMap<NodeId, NodeId>,
) -> Result<NodeId, IrError> {
    if let Some(&n) = memo.get(&v) {
        return Ok(n);
    }
    let node = g.node(v).clone();
    let source = g.operands(v).first().copied();
    let narrowed = match (&node.op, source) {
        (Op::Cast, Some(x)) if g.ty(x).dtype == dtype => x,
        (Op::Permute { perm }, Some(x)) => {
            let x = narrow(g, x, dtype, memo)?;
            g.permute(x, perm)?
        }
        (Op::Reshape, Some(x)) => {
            let x = narrow(g, x, dtype, memo)?;
            g.reshape(x, node.ty.shape.clone())?
        }
        (Op::Broadcast, Some(x)) => {
            let x = narrow(g, x, dtype, memo)?;
            g.broadcast_to(x, &node.ty.shape)?
        }
        _ => g.cast(v, dtype)?,
    };
    memo.insert(v, narrowed);
    Ok(narrowed)
}

/// Rewrites `id` with the operands in `slots` in `dtype` (a widening matmul's two, a
/// `flash_attention`'s queries, keys and values). Its result keeps its type, or, given
/// `stored`, is stored in that type and cast back for its readers.
fn narrow_operands(
    g: &mut Graph,
    id: NodeId,
    slots: &[usize],
    dtype: DType,
    stored: Option<DType>,
    memo: &mut HashMap<NodeId, NodeId>,
) -> Result<(), IrError> {
    let mut operands = g.operands(id).to_vec();
    for &slot in slots {
        operands[slot] = narrow(g, operands[slot], dtype, memo)?;
    }
    let (op, ty) = (g.node(id).op.clone(), g.ty(id).clone());
    let wide = ty.dtype;
    let narrowed = g.push_typed(op, &operands, ty.with_dtype(stored.unwrap_or(wide)))?;
    if let Some(label) = g.node(id).label.clone() {
        g.set_label(narrowed, label);
    }
    let read = match stored {
        Some(_) => g.cast(narrowed, wide)?,
        None => narrowed,
    };
    g.replace_uses(id, read);
    Ok(())
}

/// Whether `v`, looking through views and casts, is a weight.
fn is_weight(g: &Graph, v: NodeId) -> bool {
    match g.node(v).op {
        Op::Weight { .. } => true,
        Op::Permute { .. } | Op::Reshape | Op::Broadcast | Op::Slice { .. } | Op::Cast => {
            is_weight(g, g.operands(v)[0])
        }
        _ => false,
    }
}

/// Whether matmul `id` of a differentiated program stores its result in bf16 (see the module
/// doc): it contracts a weight (a forward projection, the logits, or the gradient of the
/// activations it read) and is no program output.
fn stores_narrow_result(g: &Graph, id: NodeId) -> bool {
    let is_output = g.outputs().iter().any(|(_, o)| *o == id);
    g.operands(id).into_iter().any(|o| is_weight(g, o)) && !is_output
}

fn is_f32_matmul(g: &Graph, id: NodeId) -> bool {
    matches!(g.node(id).op, Op::MatMul)
        && g.ty(id).dtype == DType::F32
        && g.operands(id).iter().all(|&o| g.ty(o).dtype == DType::F32)
}

/// Whether `flash_attention` `id` (or its log-sum-exp or a gradient of it, which read the same
/// queries, keys and values) takes `dtype` operands: f32 ones under `bf16`, for more than one
/// query per row. A decode step's single query reads the f32 KV cache as it is: it does no
/// matmul-sized work, and narrowing the cache would copy it every step. The forward and its
/// backward ops decide alike, so the gradients are those of the forward computed.
fn narrows_attention(g: &Graph, id: NodeId, dtype: DType) -> bool {
    let q = g.ty(g.operands(id)[0]);
    dtype == DType::BF16 && q.dtype == DType::F32 && q.shape[2].as_fixed() != Some(1)
}

/// Each `flash_attention_grad` on `dtype` operands whose every reader is a `cast` to `dtype` (the
/// backward's matmuls) becomes one declared `dtype`, read by those readers' users in their place:
/// it rounds its f32 result as the cast did, so the f32 gradient is never held. Returns how many.
fn narrow_attention_grads(g: &mut Graph, dtype: DType) -> Result<usize, IrError> {
    let outputs: Vec<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    let grads: Vec<NodeId> = g
        .order()
        .into_iter()
        .filter(|&id| {
            matches!(g.node(id).op, Op::FlashAttentionGrad { .. })
                && g.ty(id).dtype == DType::F32
                && g.ty(g.operands(id)[0]).dtype == dtype
        })
        .collect();
    let mut count = 0;
    for id in grads {
        let casts = g.users(id);
        let only_cast = |u: &NodeId| matches!(g.node(*u).op, Op::Cast) && g.ty(*u).dtype == dtype;
        if casts.is_empty() || !casts.iter().all(only_cast) || outputs.contains(&id) {
            continue;
        }
        let node = g.node(id).clone();
        let narrowed = g.push_typed(node.op, &g.operands(id), node.ty.with_dtype(dtype))?;
        if let Some(label) = node.label {
            g.set_label(narrowed, label);
        }
        for cast in casts {
            g.replace_uses(cast, narrowed);
            g.remove(cast);
        }
        g.remove(id);
        count += 1;
    }
    Ok(count)
}

impl Pass for MixedPrecision {
    fn name(&self) -> &'static str {
        "mixed-precision"
    }

    fn run(&self, g: &mut Graph) -> Result<(), IrError> {
        let p = self.precision;
        if p == Precision::F32 {
            g.remark("mixed-precision: policy f32, nothing narrowed");
            return Ok(());
        }
        let (weight_dtype, matmul_dtype) = (p.weight_dtype(), p.matmul_dtype());
        let (mut narrowed, mut kept, mut trained, mut bytes) = (0, 0, 0, 0usize);
        let differentiated = g
            .node_ids()
            .any(|id| g.node(id).label.as_deref() == Some(SEED_LABEL));
        for w in g.weights().to_vec() {
            if g.ty(w).dtype != DType::F32 {
                continue;
            }
            if !only_contracted(g, w) {
                kept += 1;
                continue;
            }
            if differentiated {
                trained += 1;
                continue;
            }
            bytes += g.ty(w).fixed_numel().unwrap_or(0) * 2;
            narrow_weight(g, w, weight_dtype)?;
            narrowed += 1;
        }
        let mut remark = format!(
            "mixed-precision: policy {p}: {narrowed} weights stored {weight_dtype} ({bytes} bytes \
             saved), {kept} kept f32 (read other than by contraction)"
        );
        if differentiated {
            remark += &format!(", {trained} kept f32 (master weights of a differentiated program)");
        }
        let mut removed = 0;
        if matmul_dtype != DType::F32 {
            let (mut matmuls, mut rounded, mut refused, mut attentions) = (0, 0, 0, 0);
            let mut memo = HashMap::new();
            for id in g.order() {
                match g.node(id).op {
                    Op::MatMul if is_f32_matmul(g, id) => {
                        let stored = (differentiated
                            && matmul_dtype == DType::BF16
                            && stores_narrow_result(g, id))
                        .then_some(matmul_dtype);
                        narrow_operands(g, id, &[0, 1], matmul_dtype, stored, &mut memo)?;
                        matmuls += 1;
                        rounded += usize::from(stored.is_some());
                    }
                    Op::MatMul => refused += 1,
                    Op::FlashAttention(_) if narrows_attention(g, id, matmul_dtype) => {
                        let stored = differentiated.then_some(matmul_dtype);
                        narrow_operands(g, id, &[0, 1, 2], matmul_dtype, stored, &mut memo)?;
                        attentions += 1;
                    }
                    Op::FlashAttentionLse(_) if narrows_attention(g, id, matmul_dtype) => {
                        narrow_operands(g, id, &[0, 1, 2], matmul_dtype, None, &mut memo)?;
                    }
                    // Queries, keys, values and the cotangent: the operands of its matmuls;
                    // and the forward's result, stored narrow.
                    Op::FlashAttentionGrad { ref attention, .. }
                        if narrows_attention(g, id, matmul_dtype) =>
                    {
                        let out = attention.arity();
                        let slots = [0, 1, 2, out, out + 1];
                        narrow_operands(g, id, &slots, matmul_dtype, None, &mut memo)?;
                    }
                    _ => {}
                }
            }
            // The views the narrowed matmuls no longer read go first: a gradient's only readers
            // are then its casts.
            removed += remove_dead(g);
            let grads = narrow_attention_grads(g, matmul_dtype)?;
            remark += &format!(
                ", {matmuls} matmuls on {matmul_dtype} operands with f32 accumulation, {refused} \
                 refused (not f32 × f32 → f32), {attentions} flash_attention on {matmul_dtype} \
                 operands, {grads} of their gradients rounded to {matmul_dtype} as computed"
            );
            if rounded > 0 {
                remark += &format!(", {rounded} matmul results stored {matmul_dtype}");
            }
        }
        removed += remove_dead(g);
        g.remark(format!("{remark}, {removed} dead nodes removed"));
        Ok(())
    }
}
