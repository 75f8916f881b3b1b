//! Convenience constructors on [`Graph`] for frontends and passes.
//!
//! Elementwise helpers broadcast their operands numpy-style by inserting explicit `broadcast`
//! nodes, so the graph itself only ever holds same-shape elementwise ops.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::infer::broadcast_shapes;
use crate::op::{BinaryOp, Literal, Op, ReduceOp, UnaryOp};
use crate::ty::TensorType;

type R = Result<NodeId, IrError>;

impl Graph {
    pub fn constant(&mut self, ty: TensorType, value: Literal) -> R {
        self.push_typed(Op::Const(value), &[], ty)
    }

    /// A rank-0 constant.
    pub fn scalar(&mut self, dtype: DType, value: f64) -> R {
        self.constant(TensorType::scalar(dtype), Literal::Splat(value))
    }

    pub fn iota(&mut self, ty: TensorType, axis: usize) -> R {
        self.push_typed(Op::Iota { axis }, &[], ty)
    }

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> R {
        self.push(Op::Unary(op), &[x])
    }

    /// A binary op, broadcasting both operands to their common shape first.
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> R {
        let [a, b] = self.broadcast_together([a, b])?;
        self.push(Op::Binary(op), &[a, b])
    }

    pub fn add(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Add, a, b)
    }

    pub fn sub(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Sub, a, b)
    }

    pub fn mul(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Mul, a, b)
    }

    pub fn div(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `x ⊙ c` for a scalar constant `c` of `x`'s dtype.
    pub fn binary_scalar(&mut self, op: BinaryOp, x: NodeId, c: f64) -> R {
        let dtype = self.ty(x).dtype;
        let c = self.scalar(dtype, c)?;
        self.binary(op, x, c)
    }

    /// `cond ? a : b`, broadcasting all three.
    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> R {
        let [cond, a, b] = self.broadcast_together([cond, a, b])?;
        self.push(Op::Select, &[cond, a, b])
    }

    pub fn cast(&mut self, x: NodeId, dtype: DType) -> R {
        if self.ty(x).dtype == dtype {
            return Ok(x);
        }
        let ty = self.ty(x).with_dtype(dtype);
        self.push_typed(Op::Cast, &[x], ty)
    }

    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> R {
        self.push(
            Op::Reduce {
                op,
                axes: axes.to_vec(),
            },
            &[x],
        )
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> R {
        self.push(Op::MatMul, &[a, b])
    }

    pub fn reshape(&mut self, x: NodeId, shape: Vec<Dim>) -> R {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        let ty = TensorType::new(self.ty(x).dtype, shape);
        self.push_typed(Op::Reshape, &[x], ty)
    }

    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> R {
        self.push(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    /// Swaps the last two axes.
    pub fn transpose_last(&mut self, x: NodeId) -> R {
        let rank = self.ty(x).rank();
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(rank - 2, rank - 1);
        self.permute(x, &perm)
    }

    pub fn broadcast_to(&mut self, x: NodeId, shape: &[Dim]) -> R {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        let ty = TensorType::new(self.ty(x).dtype, shape.to_vec());
        self.push_typed(Op::Broadcast, &[x], ty)
    }

    pub fn slice(&mut self, x: NodeId, axis: usize, start: Dim, end: Dim) -> R {
        self.push(Op::Slice { axis, start, end }, &[x])
    }

    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> R {
        self.push(Op::Concat { axis }, xs)
    }

    pub fn gather(&mut self, data: NodeId, indices: NodeId, axis: usize) -> R {
        self.push(Op::Gather { axis }, &[data, indices])
    }

    fn broadcast_together<const N: usize>(
        &mut self,
        xs: [NodeId; N],
    ) -> Result<[NodeId; N], IrError> {
        let mut shape: Vec<Dim> = Vec::new();
        for &x in &xs {
            shape = broadcast_shapes(&shape, &self.ty(x).shape).ok_or_else(|| {
                IrError::new(format!(
                    "shapes do not broadcast: {:?} and {}",
                    shape.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    self.ty(x)
                ))
            })?;
        }
        let mut out = xs;
        for x in &mut out {
            *x = self.broadcast_to(*x, &shape)?;
        }
        Ok(out)
    }
}
