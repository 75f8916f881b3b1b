//! Lowering: a graph becomes buffers, views and a straight list of kernels.
//!
//! Walking the graph in its canonical order, every node gets a [`View`]: sources and layout
//! ops (`permute`, `broadcast`, `slice`, `reshape` of a contiguous value, splat constants,
//! `iota`) are views and emit nothing; every other op writes a fresh buffer through one kernel,
//! and a fused region is one map or reduce kernel. `concat` copies each operand into its slice
//! of the concat's buffer, except the elementwise results and inner concats read by that concat
//! alone: those are written straight into their slice (so RoPE's halves land in the rotated
//! value and the new key in the grown cache). An elementwise result or concat that only a
//! permute keeping the last axis reads is written in the permuted order
//! (`lower/transposed.rs`), so a reshape after the permute is a view. A program output that concatenates a program
//! input read by nothing else with new entries is an append in place (`lower/append.rs`): the
//! input's buffer has room for the output, and the input's entries are not copied. A `reshape`
//! of a view that is not contiguous
//! materializes a copy first, and so does a splat or iota operand of the kernels that read
//! buffers (matmul, gather).
//!
//! `flash_attention` is lowered in `lower/attention.rs`.
//!
//! Refused, with an error naming the node: matmuls of other operand types than `f32`, any `f16`
//! value, and `bf16` values other than those the `bf16-weights` policy writes (kernels compute
//! in f32): bf16 weights, their views and gathered rows, and casts of them to f32. A target whose
//! kernels round to bf16 (`LowerOptions::narrow`, see `narrow.rs`) also gets the casts to bf16
//! and the bf16 matmul operands of the `bf16` policy.
//!
//! A view's `dtype` is the type its elements are stored in. A `cast` of a bf16 weight to f32 is
//! a *widening view* of the weight: its IR type is f32, its storage bf16, and no f32 copy is
//! made. Matmuls read such operands directly (widening in registers) and maps widen them in
//! their expression; any other kernel gets a widened copy (see `narrow.rs`).
//!
//! With `LowerOptions::state_in_place`, a training step's new weights and moments are written
//! over the old ones where that is safe (`lower/in_place.rs`).
//!
//! Invariants of the result: each temporary buffer is written by the kernels of one node (and
//! of the parts placed in it, for a concat), before any kernel reads it; constants are never
//! written, inputs only past their logical length, by the appends, and weights and inputs
//! whole only by the last kernel that reads them, in place; every program output is a
//! temporary buffer of its own, contiguous and whole, an append's input buffer, or the buffer
//! of the weight or input it replaces.

mod append;
mod attention;
mod batch_sum;
mod concat;
mod expression;
mod in_place;
mod matmul;
mod transposed;

use append::{appends, Append};
use concat::concat_parts_in_place;
use expression::expression;
use transposed::transposed_results;

use crate::error::{CompileError, Result};
use crate::kernel::{AttentionOutput, Epilogue, ExprNode, Kernel};
use crate::narrow;
use crate::view::{Source, View};
use kiln_ir::{
    DType, Dim, Graph, Literal, NodeId, Op, ReduceOp, RegionKind, Step, StepOp, TensorType,
};
use kiln_runtime::manifest::{
    BufferDesc, BufferKind, ConstantDesc, ElemType, IoDesc, SymbolDesc, TensorDesc,
};
use kiln_runtime::Poly;
use std::collections::HashMap;

/// Reductions into at most this many outputs are split in two kernels (`Lowering::reduce`).
const SPLIT_OUTPUTS: i64 = 64;
/// Reductions over several axes of at least this many positions per output are split in two
/// kernels too, where the outermost reduced axis is at most [`SPLIT_OUTPUTS`] long.
const SPLIT_POSITIONS: i64 = 4096;

/// The target's choices lowering follows.
#[derive(Clone, Debug, Default)]
pub struct LowerOptions {
    /// Matmul tiles with at least this many rows call the GEMM library (`CpuOptions`); `None`:
    /// never.
    pub gemm_min_rows: Option<i64>,
    /// The narrow values the target's kernels hold.
    pub narrow: narrow::NarrowValues,
    /// The backend offers plain matmuls of two bf16 operands (not decode's few rows) to a GEMM
    /// library, which applies no epilogue: such a matmul's epilogue becomes a map of its own.
    pub library_matmuls: bool,
    /// The attention kernels that also write the log-sum-exp beside the values (`None`: none):
    /// a `flash_attention` and a `flash_attention_lse` of the same operands (a training step's
    /// recomputed forward and its backward's statistics) are then one kernel.
    pub attention_with_lse: Option<fn(&crate::kernel::AttentionKernel) -> bool>,
    /// The attention gradient kernels by the keys that also write the values' gradient (`None`:
    /// none): a `flash_attention_grad` by the keys and one by the values of the same operands
    /// are then one kernel, which computes the probabilities they share once.
    pub attention_key_value_grads: Option<fn(&crate::kernel::AttentionGradKernel) -> bool>,
    /// A training step's new weights and moments are written over the old ones where that is
    /// safe (`lower/in_place.rs`); the runner must then hand the old ones' storage to the run.
    pub state_in_place: bool,
}

/// What programs of one artifact share: the weights they read and the constants' bytes.
#[derive(Default)]
pub struct SharedTables {
    pub weights: Vec<TensorDesc>,
    pub constants: Vec<ConstantDesc>,
    pub data: Vec<u8>,
}

/// A lowered program: the manifest's description minus the steps, and one kernel per step.
pub struct LoweredProgram {
    pub name: String,
    pub symbols: Vec<SymbolDesc>,
    pub buffers: Vec<BufferDesc>,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    /// Kernels in execution order, each with a label for profiles.
    pub kernels: Vec<(Kernel, String)>,
}

impl LoweredProgram {
    /// The manifest's description of the program, given its compiled `steps` and memory plan.
    pub fn into_desc(
        self,
        steps: Vec<kiln_runtime::manifest::Step>,
        memory: kiln_runtime::manifest::MemoryDesc,
    ) -> kiln_runtime::manifest::ProgramDesc {
        kiln_runtime::manifest::ProgramDesc {
            name: self.name,
            symbols: self.symbols,
            buffers: self.buffers,
            inputs: self.inputs,
            outputs: self.outputs,
            steps,
            memory,
        }
    }
}

pub fn elem_type(dtype: DType) -> ElemType {
    match dtype {
        DType::F32 => ElemType::F32,
        DType::F16 => ElemType::F16,
        DType::BF16 => ElemType::Bf16,
        DType::I32 => ElemType::I32,
        DType::I64 => ElemType::I64,
        DType::Bool => ElemType::Bool,
    }
}

struct Lowering<'a> {
    g: &'a Graph,
    options: &'a LowerOptions,
    symbols: Vec<String>,
    shared: &'a mut SharedTables,
    buffers: Vec<BufferDesc>,
    kernels: Vec<(Kernel, String)>,
    views: HashMap<NodeId, View>,
    inputs: Vec<IoDesc>,
    /// Values written straight into their part of a concat: value → (concat, operand slot).
    in_place: HashMap<NodeId, (NodeId, usize)>,
    /// The buffer view of every concat, made when it or a part placed in it is lowered.
    concat_views: HashMap<NodeId, View>,
    /// Results written in the order of the permute that alone reads them, by that permutation
    /// (`lower/transposed.rs`).
    transposed: HashMap<NodeId, Vec<usize>>,
    /// Outputs appended in place to an input's buffer, by input and by concat.
    appends: HashMap<NodeId, Append>,
    /// Values an earlier kernel already wrote, and their views: a reduction lowered with the
    /// matmul it sums (`batch_sum.rs`), an attention's values or log-sum-exp lowered with the
    /// other (`attention.rs`).
    written_early: HashMap<NodeId, View>,
    /// Each attention's `Δ = Σ d_out·out` per query, by the nodes of `out` and `d_out`: the
    /// gradients by queries, keys and values of one attention read one reduction.
    attention_deltas: HashMap<(NodeId, NodeId), View>,
}

pub fn lower(
    g: &Graph,
    shared: &mut SharedTables,
    options: &LowerOptions,
) -> Result<LoweredProgram> {
    let symbols: Vec<String> = g.symbols().keys().cloned().collect();
    let mut l = Lowering {
        g,
        options,
        symbols,
        shared,
        buffers: Vec::new(),
        kernels: Vec::new(),
        views: HashMap::new(),
        inputs: Vec::new(),
        in_place: concat_parts_in_place(g),
        concat_views: HashMap::new(),
        transposed: transposed_results(g),
        appends: appends(g),
        written_early: HashMap::new(),
        attention_deltas: HashMap::new(),
    };
    let sources = g.inputs().iter().chain(g.weights()).copied();
    for id in sources.chain(g.order()) {
        let view = l.node(id).map_err(|e| {
            let node = g.node(id);
            let label = node
                .label
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            CompileError(format!(
                "program `{}`: cannot compile `{}`{label} : {}: {}",
                g.name,
                node.op.name(),
                node.ty,
                e.0
            ))
        })?;
        l.views.insert(id, view);
    }
    let mut outputs = Vec::new();
    for (name, id) in g.outputs() {
        if let Some(append) = l.appends.get(id) {
            let view = &l.views[id];
            outputs.push(IoDesc {
                name: name.clone(),
                buffer: view.buffer().expect("an append writes its input's buffer"),
                dtype: elem_type(view.dtype),
                shape: view.dims.clone(),
                capacity: Some(append.capacity()),
            });
            continue;
        }
        let mut view = l.views[id].clone();
        if view.dtype != g.ty(*id).dtype {
            view = l.widened(&view, g.ty(*id).dtype, &format!("output {name}"));
        }
        let taken = outputs
            .iter()
            .any(|o: &IoDesc| Some(o.buffer) == view.buffer());
        let buffer = match view.buffer() {
            Some(b) if !taken && l.is_whole_temp(&view, b) => b,
            _ => {
                let copy = l.materialize(&view, &format!("output {name}"));
                copy.buffer().unwrap()
            }
        };
        outputs.push(IoDesc {
            name: name.clone(),
            buffer,
            dtype: elem_type(view.dtype),
            shape: view.dims.clone(),
            capacity: None,
        });
    }
    let symbols = l
        .symbols
        .iter()
        .map(|name| SymbolDesc {
            name: name.clone(),
            max: g.symbols()[name],
        })
        .collect();
    let mut program = LoweredProgram {
        name: g.name.clone(),
        symbols,
        buffers: l.buffers,
        inputs: l.inputs,
        outputs,
        kernels: l.kernels,
    };
    if options.state_in_place {
        in_place::write_state_in_place(&mut program, &l.shared.weights);
    }
    Ok(program)
}

impl Lowering<'_> {
    fn dim(&self, d: &Dim) -> Poly {
        d.terms()
            .iter()
            .fold(Poly::constant(d.constant()), |acc, (s, k)| {
                let index = self.symbols.iter().position(|n| n == s).unwrap() as u32;
                acc.add(&Poly::symbol(index).scale(*k))
            })
    }

    fn shape(&self, ty: &TensorType) -> Vec<Poly> {
        ty.shape.iter().map(|d| self.dim(d)).collect()
    }

    fn buffer(&mut self, kind: BufferKind, ty: &TensorType) -> View {
        let dims = self.shape(ty);
        self.new_buffer(kind, ty.dtype, dims)
    }

    /// A new buffer of `dims` elements of `dtype`, as a contiguous view.
    fn new_buffer(&mut self, kind: BufferKind, dtype: DType, dims: Vec<Poly>) -> View {
        self.buffers.push(BufferDesc {
            kind,
            dtype: elem_type(dtype),
            numel: Poly::product(&dims),
        });
        View::contiguous(Source::Buffer(self.buffers.len() - 1), dtype, dims)
    }

    fn temp(&mut self, ty: &TensorType) -> View {
        self.buffer(BufferKind::Temp, ty)
    }

    fn is_whole_temp(&self, view: &View, buffer: usize) -> bool {
        let desc = &self.buffers[buffer];
        desc.kind == BufferKind::Temp
            && view.offset.is_constant(0)
            && view.is_contiguous()
            && view.numel() == desc.numel
    }

    fn push(&mut self, kernel: Kernel, label: String) {
        self.kernels.push((kernel, label));
    }

    /// A contiguous copy of `view` in a new buffer.
    fn materialize(&mut self, view: &View, label: &str) -> View {
        let out = self.new_buffer(BufferKind::Temp, view.dtype, view.dims.clone());
        self.copy(view, &out, label);
        out
    }

    /// `view` when it reads a buffer; otherwise (a splat or an iota) a copy in a new buffer, for
    /// kernels that index their operands freely.
    fn buffered(&mut self, view: &View, label: &str) -> View {
        match view.source {
            Source::Buffer(_) => view.clone(),
            _ => self.materialize(view, label),
        }
    }

    /// A contiguous copy of `view` (a widening view) in `dtype`.
    fn widened(&mut self, view: &View, dtype: DType, label: &str) -> View {
        let out = self.new_buffer(BufferKind::Temp, dtype, view.dims.clone());
        self.push(
            Kernel::Map {
                out: out.clone(),
                leaves: vec![view.clone()],
                expr: narrow::widening(view.dtype, dtype),
            },
            format!("widen {label}"),
        );
        out
    }

    fn copy(&mut self, from: &View, to: &View, label: &str) {
        self.push(
            Kernel::Map {
                out: to.clone(),
                leaves: vec![from.clone()],
                expr: ExprNode::leaf(from.dtype),
            },
            format!("copy {label}"),
        );
    }

    /// The largest value of `p` over the graph's symbols (at their bounds; extents grow with
    /// them).
    fn largest(&self, p: &Poly) -> i64 {
        let bounds = self.g.symbols();
        let at: Vec<i64> = self.symbols.iter().map(|s| bounds[s] as i64).collect();
        p.eval(&at)
    }

    /// The label of `id`'s kernels: its op's name and its own label.
    fn label_of(&self, id: NodeId) -> String {
        let node = self.g.node(id);
        let own = node.label.as_deref().map(|l| format!(" {l}"));
        format!("{}{}", node.op.name(), own.unwrap_or_default())
    }

    fn node(&mut self, id: NodeId) -> Result<View> {
        if let Some(view) = self.written_early.remove(&id) {
            return Ok(view);
        }
        let g = self.g;
        let node = g.node(id);
        let ty = &node.ty;
        narrow::check_supported(node, self.options.narrow)?;
        let label = self.label_of(id);
        let mut operands = Vec::new();
        for o in g.operands(id) {
            let view = self.views[&o].clone();
            let wide = g.ty(o).dtype;
            operands.push(if view.dtype == wide || narrow::reads_widening(&node.op) {
                view
            } else {
                self.widened(&view, wide, &label)
            });
        }
        let types: Vec<DType> = g.operands(id).iter().map(|&o| g.ty(o).dtype).collect();
        Ok(match &node.op {
            Op::Input { name } => {
                let index = self.inputs.len();
                let dims = self.shape(ty);
                let capacity = self.appends.get(&id).map(Append::capacity);
                let mut stored = dims.clone();
                if let Some(c) = capacity {
                    stored[c.axis] = Poly::constant(c.entries as i64);
                }
                let mut view = self.new_buffer(BufferKind::Input(index), ty.dtype, stored);
                view.dims = dims;
                self.inputs.push(IoDesc {
                    name: name.clone(),
                    buffer: view.buffer().unwrap(),
                    dtype: elem_type(ty.dtype),
                    shape: view.dims.clone(),
                    capacity,
                });
                view
            }
            Op::Weight { name } => {
                let shape = ty
                    .fixed_shape()
                    .ok_or_else(|| CompileError("weights must have fixed shapes".into()))?;
                let desc = TensorDesc {
                    name: name.clone(),
                    dtype: elem_type(ty.dtype),
                    shape,
                };
                let index = match self.shared.weights.iter().position(|w| w.name == *name) {
                    Some(i) if self.shared.weights[i] == desc => i,
                    Some(_) => {
                        return Err(CompileError(format!(
                            "weight `{name}` is declared with two different types"
                        )))
                    }
                    None => {
                        self.shared.weights.push(desc);
                        self.shared.weights.len() - 1
                    }
                };
                self.buffer(BufferKind::Weight(index), ty)
            }
            Op::Const(Literal::Splat(v)) => View::splat(*v, ty.dtype, self.shape(ty)),
            Op::Const(Literal::Dense(values)) => {
                let index = self.constant(ty, values)?;
                self.buffer(BufferKind::Constant(index), ty)
            }
            Op::Iota { axis } => View::iota(*axis, ty.dtype, self.shape(ty)),
            Op::Cast if narrow::is_widening_view(&operands[0], ty.dtype, &self.buffers) => {
                operands[0].clone()
            }
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast => {
                let op = StepOp::of(&node.op, ty.dtype).expect("an elementwise op");
                let step = Step {
                    op,
                    args: (0..operands.len()).collect(),
                };
                let stored: Vec<DType> = operands.iter().map(|v| v.dtype).collect();
                let expr = expression(&stored, &types, &[step], &[ty.dtype]);
                self.map(id, operands, expr, label)
            }
            Op::Reduce { op, axes } => {
                let stored: Vec<DType> = operands.iter().map(|v| v.dtype).collect();
                let expr = expression(&stored, &types, &[], &[]);
                self.reduce(ty, *op, axes, operands, expr, label)
            }
            Op::Fused(region) => {
                let values = region
                    .types(&g.operands(id).iter().map(|&o| g.ty(o)).collect::<Vec<_>>())
                    .map_err(CompileError)?;
                let leaf_count = region.kind.value_count(operands.len());
                let dtypes: Vec<DType> = values[leaf_count..].iter().map(|t| t.dtype).collect();
                let stored: Vec<DType> = operands.iter().map(|v| v.dtype).collect();
                let expr = if region.kind == RegionKind::MatMul {
                    // Value `$0` is the product, read back from the output tile in f32.
                    let f32 = [DType::F32];
                    let stored = [&f32[..], &stored[2..]].concat();
                    let leaf_types = [&f32[..], &types[2..]].concat();
                    expression(&stored, &leaf_types, &region.steps, &dtypes)
                } else {
                    expression(&stored, &types, &region.steps, &dtypes)
                };
                match &region.kind {
                    RegionKind::Map => self.map(id, operands, expr, label),
                    RegionKind::MatMul => {
                        let epilogue = Epilogue {
                            leaves: operands[2..].to_vec(),
                            expr,
                        };
                        self.matmul(ty, &operands[..2], &types[..2], Some(epilogue), label)?
                    }
                    RegionKind::Reduce { op, axes } => {
                        self.reduce(ty, *op, axes, operands, expr, label)
                    }
                }
            }
            Op::MatMul => match self.summed_matmul(id, &operands, &types, &label)? {
                Some((sum, view)) => {
                    self.written_early.insert(sum, view);
                    // Read by nothing: the product's only use is the sum, lowered above.
                    View::splat(0.0, ty.dtype, self.shape(ty))
                }
                None => self.matmul(ty, &operands, &types, None, label)?,
            },
            Op::Reshape => {
                let dims = self.shape(ty);
                match operands[0].reshape(dims.clone()) {
                    Some(v) => v,
                    None => {
                        let copy = self.materialize(&operands[0], &label);
                        copy.reshape(dims).expect("a contiguous copy reshapes")
                    }
                }
            }
            Op::Permute { perm } => operands[0].permute(perm),
            Op::Broadcast => operands[0].broadcast(self.shape(ty)),
            Op::Slice { axis, start, end } => {
                operands[0].slice(*axis, &self.dim(start), &self.dim(end))
            }
            Op::Concat { axis } => {
                let out = self.concat_view(id);
                let mut at = Poly::constant(0);
                for (slot, (v, &o)) in operands.iter().zip(&g.operands(id)).enumerate() {
                    let end = at.add(&v.dims[*axis]);
                    let placed = self.in_place.get(&o) == Some(&(id, slot))
                        || self.appends.get(&o).is_some_and(|a| a.concat == id);
                    if !placed {
                        let part = out.slice(*axis, &at, &end);
                        self.copy(v, &part, &label);
                    }
                    at = end;
                }
                out
            }
            Op::Gather { axis } => {
                let out = self.temp(ty);
                let data = self.buffered(&operands[0], &label);
                let mut indices = self.buffered(&operands[1], &label);
                let mut written = out.clone();
                if indices.rank() == 0 {
                    // One index is gathered as an axis of length 1.
                    let one = Poly::constant(1);
                    indices = indices
                        .reshape(vec![one.clone()])
                        .expect("a scalar reshapes");
                    let mut dims = out.dims.clone();
                    dims.insert(*axis, one);
                    written = out.reshape(dims).expect("a fresh buffer reshapes");
                }
                self.push(
                    Kernel::Gather {
                        data,
                        indices,
                        axis: *axis,
                        out: written,
                    },
                    label,
                );
                out
            }
            Op::Scatter { axis, mode } => {
                let out = self.temp(ty);
                self.copy(&operands[0], &out, &label);
                let indices = self.buffered(&operands[1], &label);
                let updates = match operands[2].buffer() {
                    Some(_) if operands[2].offset.is_constant(0) && operands[2].is_contiguous() => {
                        operands[2].clone()
                    }
                    _ => self.materialize(&operands[2], &label),
                };
                self.push(
                    Kernel::Scatter {
                        indices,
                        updates,
                        axis: *axis,
                        mode: *mode,
                        out: out.clone(),
                    },
                    label,
                );
                out
            }
            Op::FlashAttention(_) => {
                self.attention(id, AttentionOutput::Values, &operands, ty, label)?
            }
            Op::FlashAttentionLse(_) => {
                self.attention(id, AttentionOutput::LogSumExp, &operands, ty, label)?
            }
            Op::FlashAttentionGrad { attention, wrt } => {
                self.attention_grad(id, (attention, *wrt), &operands, ty, label)?
            }
            Op::StopGradient => operands[0].clone(),
            Op::Grad => {
                return Err(CompileError(
                    "`grad` reached the backend: run the autodiff pass first".into(),
                ))
            }
        })
    }

    fn map(&mut self, id: NodeId, leaves: Vec<View>, expr: Vec<ExprNode>, label: String) -> View {
        let out = self.destination(id);
        self.push(
            Kernel::Map {
                out: out.clone(),
                leaves,
                expr,
            },
            label,
        );
        out
    }

    /// A reduction kernel; one over several axes runs in two where it has at most
    /// [`SPLIT_OUTPUTS`] outputs, or at least [`SPLIT_POSITIONS`] positions per output and an
    /// outermost reduced axis of at most [`SPLIT_OUTPUTS`] (the sum over batch and sequence of a
    /// norm weight's gradient): the first reduces all but the outermost reduced axis into a
    /// partial buffer, the second (a plain reduction of the partials, by the same `op`: a mean
    /// of equal-count means is the mean) reduces that axis. Each output of a one-kernel form is
    /// one work item, so a scalar such as a gradient's sum of squares would be folded by one
    /// thread (CPU) or one block (GPU) alone, and 2,048 sums of 16,384 positions each by 64
    /// blocks of 32 columns (GPU) on a machine of 132 multiprocessors.
    fn reduce(
        &mut self,
        ty: &TensorType,
        op: ReduceOp,
        axes: &[usize],
        leaves: Vec<View>,
        expr: Vec<ExprNode>,
        label: String,
    ) -> View {
        let out = self.temp(ty);
        let few_outputs = matches!(out.numel().as_constant(), Some(n) if n <= SPLIT_OUTPUTS);
        let dims = &leaves[0].dims;
        let many_positions = self.largest(&Poly::product(axes.iter().map(|&a| &dims[a])))
            >= SPLIT_POSITIONS
            && self.largest(&dims[axes[0]]) <= SPLIT_OUTPUTS;
        if axes.len() > 1 && (few_outputs || many_positions) {
            let dtype = expr.last().expect("an expression has a result").dtype;
            let mut dims = leaves[0].dims.clone();
            for &a in &axes[1..] {
                dims[a] = Poly::constant(1);
            }
            let partial = self.new_buffer(BufferKind::Temp, dtype, dims);
            self.push(
                Kernel::Reduce {
                    op,
                    leaves,
                    expr,
                    axes: axes[1..].to_vec(),
                    out: partial.clone(),
                },
                label.clone(),
            );
            self.push(
                Kernel::Reduce {
                    op,
                    leaves: vec![partial],
                    expr: ExprNode::leaf(dtype),
                    axes: axes.to_vec(),
                    out: out.clone(),
                },
                label,
            );
            return out;
        }
        self.push(
            Kernel::Reduce {
                op,
                leaves,
                expr,
                axes: axes.to_vec(),
                out: out.clone(),
            },
            label,
        );
        out
    }

    fn constant(&mut self, ty: &TensorType, values: &[f64]) -> Result<usize> {
        let shape = ty
            .fixed_shape()
            .ok_or_else(|| CompileError("dense constants must have fixed shapes".into()))?;
        let offset = self.shared.data.len();
        for &v in values {
            match ty.dtype {
                DType::F32 => self
                    .shared
                    .data
                    .extend_from_slice(&(v as f32).to_le_bytes()),
                DType::I64 => self
                    .shared
                    .data
                    .extend_from_slice(&(v as i64).to_le_bytes()),
                DType::I32 => self
                    .shared
                    .data
                    .extend_from_slice(&(v as i32).to_le_bytes()),
                DType::Bool => self.shared.data.push((v != 0.0) as u8),
                other => return Err(CompileError(format!("{other} constants are not supported"))),
            }
        }
        self.shared.constants.push(ConstantDesc {
            dtype: elem_type(ty.dtype),
            shape,
            offset,
            len: self.shared.data.len() - offset,
        });
        Ok(self.shared.constants.len() - 1)
    }
}
