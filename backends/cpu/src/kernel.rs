//! Kernel descriptions: what one compiled function computes, independent of how it is emitted.
//!
//! Lowering (`lower.rs`) turns a graph into a list of these; code generation (`codegen/`) turns
//! each into one Cranelift function with the manifest's kernel ABI. Every kernel writes one
//! output view of a buffer it alone writes, and splits its work into independent items
//! (`work`) that the runtime hands out to threads.

use crate::view::View;
use kiln_ir::op::{BinaryOp, ReduceOp, ScatterMode, UnaryOp};
use kiln_ir::{Attention, AttentionInput, DType};
use kiln_runtime::manifest::WorkFactor;
use kiln_runtime::Poly;

/// One node of an elementwise expression; operands are earlier nodes of the same list.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprOp {
    /// Reads leaf `i` of the kernel.
    Leaf(usize),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Select(usize, usize, usize),
    Cast(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExprNode {
    pub op: ExprOp,
    pub dtype: DType,
}

impl ExprNode {
    /// The expression that reads leaf 0, stored as `dtype`, unchanged.
    pub fn leaf(dtype: DType) -> Vec<ExprNode> {
        vec![ExprNode {
            op: ExprOp::Leaf(0),
            dtype,
        }]
    }
}

/// A matmul's epilogue: `out[idx] = expr(out[idx], leaves[..][idx])`, where leaf 0 of `expr`
/// is the product and leaf `i + 1` is `leaves[i]` (each of the output's shape).
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    pub leaves: Vec<View>,
    pub expr: Vec<ExprNode>,
}

impl Epilogue {
    /// Whether it only rounds the product to the output's type (a `cast` of leaf 0).
    pub fn is_rounding(&self) -> bool {
        self.leaves.is_empty()
            && matches!(
                self.expr.as_slice(),
                [
                    ExprNode {
                        op: ExprOp::Leaf(0),
                        ..
                    },
                    ExprNode {
                        op: ExprOp::Cast(0),
                        ..
                    }
                ]
            )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// `out[idx] = expr(leaves[..][idx])` over the output's shape; the last node is the result.
    /// Work items are rows: every axis but the last.
    Map {
        out: View,
        leaves: Vec<View>,
        expr: Vec<ExprNode>,
    },
    /// `out = reduce(expr(leaves[..]), axes)` with the reduced axes kept at size 1; the leaves
    /// share one shape and `out` is contiguous. Work items are output elements.
    Reduce {
        op: ReduceOp,
        leaves: Vec<View>,
        expr: Vec<ExprNode>,
        axes: Vec<usize>,
        out: View,
    },
    /// `out[.., m, n] = Σₖ a[.., m, k]·b[.., k, n]`; `a` and `b` are already broadcast to the
    /// output's batch axes and each is stored `f32` or `bf16` (widened as it is read); `out` is
    /// contiguous `f32`. Work items are tiles of `tile_m × tile_n`.
    MatMul {
        a: View,
        b: View,
        out: View,
        tile_m: i64,
        tile_n: i64,
        /// Tiles with at least this many rows call the runtime's GEMM; `None`: never.
        gemm_min_rows: Option<i64>,
        /// Applied to each output tile once it is computed.
        epilogue: Option<Epilogue>,
    },
    /// `out[pre, i.., post] = data[pre, indices[i..], post]`; `out` is contiguous.
    /// Work items are rows of `out`.
    Gather {
        data: View,
        indices: View,
        axis: usize,
        out: View,
    },
    /// `out[pre, indices[i..], post] (+)= updates[pre, i.., post]` into `out`, which already
    /// holds the scattered-into data (a copy kernel wrote it); `out` and `updates` are
    /// contiguous. Work items are tiles of [`SCATTER_TILE`] columns of `post` of one `pre`
    /// row: each walks every index, so items never write the same element.
    Scatter {
        indices: View,
        updates: View,
        axis: usize,
        mode: ScatterMode,
        out: View,
    },
    /// `flash_attention` or its log-sum-exp; see [`AttentionKernel`].
    Attention(Box<AttentionKernel>),
    /// `flash_attention_grad_*`; see [`AttentionGradKernel`].
    AttentionGrad(Box<AttentionGradKernel>),
}

/// The most rows (a constant `m`) a matmul may have to take the decode forms: a few token rows
/// against a weight, each weight row read once for all of them.
pub const DECODE_ROWS: i64 = 4;

/// Whether a matmul of `m` rows takes the decode forms ([`DECODE_ROWS`]).
pub fn decode_rows(m: &Poly) -> bool {
    matches!(m.as_constant(), Some(rows) if rows <= DECODE_ROWS)
}

/// Columns per work item of a scatter.
pub const SCATTER_TILE: i64 = 64;

/// `flash_attention` (semantics in `kiln_ir::attention`): `q: [B, H, S, D]`,
/// `k: [B, H/group, T, D]`, `v: [B, H/group, T, Dv]`, the query positions `[B, S]` unless the
/// mask is `none` and the rows' padding `[B]` under `padding=left`, into `out: [B, H, S, Dv]`. `D` and `Dv` are constants and the last axis of
/// `q`, `k`, `v` and `out` is unit-stride. Work items are tiles of `tile_q` queries of one batch
/// element and head.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionKernel {
    pub q: View,
    pub k: View,
    pub v: View,
    pub positions: Option<View>,
    pub padding: Option<View>,
    pub out: View,
    pub attention: Attention,
    /// What `out` receives.
    pub output: AttentionOutput,
    /// With [`AttentionOutput::Values`]: also each query's log-sum-exp, written here
    /// (`[B, H, S]`) — a `flash_attention_lse` of the same operands lowered with it, where the
    /// target's kernel writes both (`LowerOptions::attention_with_lse`).
    pub lse: Option<View>,
}

/// What an attention kernel writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionOutput {
    /// The attended values, `out: [B, H, S, Dv]`.
    Values,
    /// Each query's log-sum-exp of its scaled visible scores, `out: [B, H, S]` (the values are
    /// not accumulated).
    LogSumExp,
}

/// `flash_attention_grad_*` (semantics in `kiln_ir::attention`): the operands of the forward
/// (as in [`AttentionKernel`]), the cotangent `d_out: [B, H, S, Dv]`, the log-sum-exp
/// `lse: [B, H, S]` and `delta: [B, H, S]` (`Σ d_out·out` per query, computed by a reduction
/// first), into `out`, shaped like the operand `wrt`, its last axis unit-stride (f32, or bf16 on
/// the GPU where the gradient is declared so). Work items are tiles
/// of `tile_q` queries of one batch element and head (`wrt` queries), or of `tile_k` keys of one
/// batch element and key/value head (keys, values), so no two items write one row.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionGradKernel {
    pub q: View,
    pub k: View,
    pub v: View,
    pub positions: Option<View>,
    pub padding: Option<View>,
    pub d_out: View,
    pub lse: View,
    pub delta: View,
    pub out: View,
    pub wrt: AttentionInput,
    pub attention: Attention,
    /// With `wrt` keys: also the values' gradient, written here (shaped like `v`) — a
    /// `flash_attention_grad` by the values of the same operands lowered with it, where the
    /// target's kernel writes both (`LowerOptions::attention_key_value_grads`).
    pub d_values: Option<View>,
}

impl Kernel {
    /// Every view it writes: `out`, an attention's log-sum-exp beside its values, and the values'
    /// gradient beside the keys'.
    pub fn written(&self) -> Vec<&View> {
        match self {
            Kernel::Attention(a) => [&a.out].into_iter().chain(&a.lse).collect(),
            Kernel::AttentionGrad(a) => [&a.out].into_iter().chain(&a.d_values).collect(),
            _ => vec![self.out()],
        }
    }

    pub fn out(&self) -> &View {
        match self {
            Kernel::Map { out, .. }
            | Kernel::Reduce { out, .. }
            | Kernel::MatMul { out, .. }
            | Kernel::Gather { out, .. }
            | Kernel::Scatter { out, .. } => out,
            Kernel::Attention(a) => &a.out,
            Kernel::AttentionGrad(a) => &a.out,
        }
    }

    /// The views it reads, other than its `out` (which a scatter reads too: it adds into it).
    pub fn operands(&self) -> Vec<&View> {
        match self {
            Kernel::Map { leaves, .. } | Kernel::Reduce { leaves, .. } => leaves.iter().collect(),
            Kernel::MatMul { a, b, epilogue, .. } => [a, b]
                .into_iter()
                .chain(epilogue.iter().flat_map(|e| &e.leaves))
                .collect(),
            Kernel::Gather { data, indices, .. } => vec![data, indices],
            Kernel::Scatter {
                indices, updates, ..
            } => vec![indices, updates],
            Kernel::Attention(a) => [&a.q, &a.k, &a.v]
                .into_iter()
                .chain(&a.positions)
                .chain(&a.padding)
                .collect(),
            Kernel::AttentionGrad(a) => [&a.q, &a.k, &a.v, &a.d_out, &a.lse, &a.delta]
                .into_iter()
                .chain(&a.positions)
                .chain(&a.padding)
                .collect(),
        }
    }

    /// Every view it reads or writes, to move them to other buffers.
    pub fn views_mut(&mut self) -> Vec<&mut View> {
        match self {
            Kernel::Map { leaves, out, .. } | Kernel::Reduce { leaves, out, .. } => {
                leaves.iter_mut().chain([out]).collect()
            }
            Kernel::MatMul {
                a,
                b,
                out,
                epilogue,
                ..
            } => [a, b, out]
                .into_iter()
                .chain(epilogue.iter_mut().flat_map(|e| &mut e.leaves))
                .collect(),
            Kernel::Gather {
                data, indices, out, ..
            } => vec![data, indices, out],
            Kernel::Scatter {
                indices,
                updates,
                out,
                ..
            } => vec![indices, updates, out],
            Kernel::Attention(a) => {
                let AttentionKernel {
                    q,
                    k,
                    v,
                    positions,
                    padding,
                    out,
                    lse,
                    ..
                } = &mut **a;
                [q, k, v, out]
                    .into_iter()
                    .chain(positions.iter_mut().chain(padding).chain(lse))
                    .collect()
            }
            Kernel::AttentionGrad(a) => {
                let AttentionGradKernel {
                    q,
                    k,
                    v,
                    positions,
                    padding,
                    d_out,
                    lse,
                    delta,
                    out,
                    d_values,
                    ..
                } = &mut **a;
                [q, k, v, d_out, lse, delta, out]
                    .into_iter()
                    .chain(positions.iter_mut().chain(padding).chain(d_values))
                    .collect()
            }
        }
    }

    /// The work items as factors `⌈extent / tile⌉` whose product is the item count, and the
    /// bytes one item touches (for the thread split).
    pub fn work(&self) -> (Vec<WorkFactor>, Poly) {
        let out = self.out();
        let bytes = |v: &View| Poly::constant(elem_size(v.dtype) as i64);
        let whole = |p: &Poly| WorkFactor {
            extent: p.clone(),
            tile: 1,
        };
        let inner = || out.dims.last().cloned().unwrap_or(Poly::constant(1));
        match self {
            Kernel::Map { leaves, .. } => (
                vec![whole(&rows(&out.dims))],
                inner().mul(&bytes(out)).scale(leaves.len() as i64 + 1),
            ),
            Kernel::Gather { .. } => (
                vec![whole(&rows(&out.dims))],
                inner().mul(&bytes(out)).scale(2),
            ),
            Kernel::Scatter { indices, axis, .. } => {
                let post = Poly::product(&out.dims[axis + 1..]);
                let factors = vec![
                    whole(&Poly::product(&out.dims[..*axis])),
                    WorkFactor {
                        extent: post,
                        tile: SCATTER_TILE as u64,
                    },
                ];
                let per_index = bytes(out).scale(2 * SCATTER_TILE);
                (factors, indices.numel().mul(&per_index))
            }
            Kernel::Reduce { leaves, axes, .. } => (
                vec![whole(&out.numel())],
                Poly::product(axes.iter().map(|&a| &leaves[0].dims[a]))
                    .mul(&bytes(&leaves[0]))
                    .scale(leaves.len() as i64),
            ),
            Kernel::MatMul {
                a, tile_m, tile_n, ..
            } => {
                let r = out.rank();
                let factors = vec![
                    whole(&Poly::product(&out.dims[..r - 2])),
                    WorkFactor {
                        extent: out.dims[r - 2].clone(),
                        tile: *tile_m as u64,
                    },
                    WorkFactor {
                        extent: out.dims[r - 1].clone(),
                        tile: *tile_n as u64,
                    },
                ];
                (factors, a.dims[r - 1].scale(tile_m * tile_n * 4))
            }
            Kernel::Attention(a) => {
                let AttentionKernel {
                    q, k, v, attention, ..
                } = a.as_ref();
                let factors = vec![
                    whole(&q.dims[0].mul(&q.dims[1])),
                    WorkFactor {
                        extent: q.dims[2].clone(),
                        tile: attention.tile_q as u64,
                    },
                ];
                // Every key and value of the head, and the tile's queries and outputs.
                let per_key = k.dims[3].add(&v.dims[3]).scale(4);
                let rows = q.dims[3].add(&v.dims[3]).scale(4 * attention.tile_q as i64);
                (factors, k.dims[2].mul(&per_key).add(&rows))
            }
            Kernel::AttentionGrad(a) => {
                let AttentionGradKernel {
                    q,
                    k,
                    v,
                    wrt,
                    attention,
                    ..
                } = a.as_ref();
                let row = q.dims[3].add(&v.dims[3]).scale(4);
                if *wrt == AttentionInput::Queries {
                    let factors = vec![
                        whole(&q.dims[0].mul(&q.dims[1])),
                        WorkFactor {
                            extent: q.dims[2].clone(),
                            tile: attention.tile_q as u64,
                        },
                    ];
                    // Every key and value of the head, for each query of the tile.
                    let keys = k.dims[2].mul(&row).scale(attention.tile_q as i64);
                    (factors, keys)
                } else {
                    let factors = vec![
                        whole(&k.dims[0].mul(&k.dims[1])),
                        WorkFactor {
                            extent: k.dims[2].clone(),
                            tile: attention.tile_k as u64,
                        },
                    ];
                    // Every query of the group's heads, for each key of the tile.
                    let scale = (attention.tile_k * attention.group) as i64;
                    (factors, q.dims[2].mul(&row).scale(scale))
                }
            }
        }
    }
}

/// Bytes of one element of `dtype`.
pub fn elem_size(dtype: DType) -> usize {
    crate::lower::elem_type(dtype).size()
}

/// Rows of a shape: the product of every axis but the last (1 for rank 0).
pub fn rows(dims: &[Poly]) -> Poly {
    Poly::product(&dims[..dims.len().saturating_sub(1)])
}
