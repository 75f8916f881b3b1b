//! Lowering `flash_attention` to one `Kernel::Attention`.
//!
//! Queries, keys and values are read in place when their last axis is unit-stride (copied
//! contiguous otherwise), and the head sizes must be constants (they size the kernel's scratch
//! and unroll its inner loops). The result is written into a `[B, S, H, Dv]` buffer through a
//! permuted view, so the `permute` to `[B, S, H, Dv]` and the `reshape` to `[B, S, H·Dv]` that
//! follow attention in every decoder are free views instead of a copy.
//!
//! Refused, with an error: symbolic head sizes, and tiles whose scratch would not fit the
//! kernel's stack budget.

use super::Lowering;
use crate::error::{CompileError, Result};
use crate::kernel::{AttentionKernel, Kernel};
use crate::view::View;
use kiln_ir::{Attention, TensorType};
use kiln_runtime::manifest::BufferKind;

/// The most bytes of stack scratch one attention kernel may use.
const SCRATCH_LIMIT: i64 = 256 * 1024;

impl Lowering<'_> {
    pub(super) fn attention(
        &mut self,
        attention: &Attention,
        operands: &[View],
        ty: &TensorType,
        label: String,
    ) -> Result<View> {
        let rows = |v: &View, this: &mut Self| {
            let v = this.buffered(v, &label);
            if v.strides[3].is_constant(1) {
                v
            } else {
                this.materialize(&v, &label)
            }
        };
        let q = rows(&operands[0], self);
        let k = rows(&operands[1], self);
        let v = rows(&operands[2], self);
        let positions = operands.get(3).map(|p| self.buffered(p, &label));
        let size = |v: &View| {
            v.dims[3]
                .as_constant()
                .ok_or_else(|| CompileError("attention head sizes must be constants".into()))
        };
        let (d, dv) = (size(&q)?, size(&v)?);
        let (tile_q, tile_k) = (attention.tile_q as i64, attention.tile_k as i64);
        let scratch = tile_q
            .saturating_mul(dv.saturating_add(6))
            .saturating_add(tile_k)
            .saturating_mul(4);
        if scratch > SCRATCH_LIMIT || d > SCRATCH_LIMIT {
            return Err(CompileError(format!(
                "attention tiles of {tile_q} queries and {tile_k} keys need {scratch} bytes of \
                 scratch, more than {SCRATCH_LIMIT}"
            )));
        }
        let dims = self.shape(ty);
        let heads_inner = vec![
            dims[0].clone(),
            dims[2].clone(),
            dims[1].clone(),
            dims[3].clone(),
        ];
        let out = self
            .new_buffer(BufferKind::Temp, ty.dtype, heads_inner)
            .permute(&[0, 2, 1, 3]);
        let kernel = AttentionKernel {
            q,
            k,
            v,
            positions,
            out: out.clone(),
            attention: attention.clone(),
        };
        self.push(Kernel::Attention(Box::new(kernel)), label);
        Ok(out)
    }
}
