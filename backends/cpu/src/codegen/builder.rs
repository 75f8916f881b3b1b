//! The function under construction: the kernel ABI's parameters, size polynomials evaluated
//! once at entry, buffer pointers, counted loops and typed memory access.
//!
//! Invariants: `poly` and `buffer` cache their values, so they are called before the first loop
//! is opened (in the entry block), where their values dominate the whole function. A kernel
//! never loads from memory it writes (its output is a buffer of its own), so every load is
//! marked `readonly`: Cranelift may then place it next to its use, and a dot-product loop keeps
//! its loads folded into the FMAs instead of hoisting them all and spilling registers.

use crate::kernel::elem_size;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Signature, Type, Value};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};
use kiln_ir::DType;
use kiln_runtime::Poly;
use std::collections::HashMap;

pub const PTR: Type = types::I64;

/// The kernel signature of the manifest's ABI.
pub fn kernel_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..5 {
        sig.params.push(AbiParam::new(PTR));
    }
    sig
}

pub fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Flags of every load (see the module doc).
fn load_flags() -> MemFlagsData {
    flags().with_readonly().with_can_move()
}

/// The Cranelift scalar type holding one element of `dtype` (bools are bytes).
pub fn scalar_type(dtype: DType) -> Type {
    match dtype {
        DType::F32 => types::F32,
        DType::I64 => types::I64,
        DType::I32 => types::I32,
        DType::Bool => types::I8,
        DType::F16 | DType::BF16 => types::I16,
    }
}

pub struct KernelFn<'a> {
    pub b: FunctionBuilder<'a>,
    pub call_conv: CallConv,
    bufs: Value,
    syms: Value,
    pub start: Value,
    pub end: Value,
    pub fns: Value,
    symbols: HashMap<u32, Value>,
    polys: HashMap<Poly, Value>,
    buffers: HashMap<usize, Value>,
}

impl<'a> KernelFn<'a> {
    pub fn new(mut b: FunctionBuilder<'a>, call_conv: CallConv) -> KernelFn<'a> {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        KernelFn {
            b,
            call_conv,
            bufs: p[0],
            syms: p[1],
            start: p[2],
            end: p[3],
            fns: p[4],
            symbols: HashMap::new(),
            polys: HashMap::new(),
            buffers: HashMap::new(),
        }
    }

    pub fn finish(mut self, config: cranelift_codegen::isa::TargetFrontendConfig) {
        self.b.ins().return_(&[]);
        self.b.seal_all_blocks();
        self.b.finalize(config);
    }

    pub fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// The value of `p` under the bound symbols.
    pub fn poly(&mut self, p: &Poly) -> Value {
        if let Some(&v) = self.polys.get(p) {
            return v;
        }
        let mut acc: Option<Value> = None;
        for term in &p.terms {
            let mut v = self.b.ins().iconst(types::I64, term.coeff);
            for &s in &term.symbols {
                let sym = self.symbol(s);
                v = self.b.ins().imul(v, sym);
            }
            acc = Some(match acc {
                Some(a) => self.b.ins().iadd(a, v),
                None => v,
            });
        }
        let v = acc.unwrap_or_else(|| self.b.ins().iconst(types::I64, 0));
        self.polys.insert(p.clone(), v);
        v
    }

    pub fn polys(&mut self, ps: &[Poly]) -> Vec<Value> {
        ps.iter().map(|p| self.poly(p)).collect()
    }

    fn symbol(&mut self, index: u32) -> Value {
        if let Some(&v) = self.symbols.get(&index) {
            return v;
        }
        let v = self
            .b
            .ins()
            .load(types::I64, load_flags(), self.syms, (index * 8) as i32);
        self.symbols.insert(index, v);
        v
    }

    /// The base address of buffer `index`.
    pub fn buffer(&mut self, index: usize) -> Value {
        if let Some(&v) = self.buffers.get(&index) {
            return v;
        }
        let v = self
            .b
            .ins()
            .load(PTR, load_flags(), self.bufs, (index * 8) as i32);
        self.buffers.insert(index, v);
        v
    }

    /// `base + index · elem_size(dtype)`.
    pub fn address(&mut self, base: Value, index: Value, dtype: DType) -> Value {
        let bytes = self.b.ins().imul_imm_s(index, elem_size(dtype) as i64);
        self.b.ins().iadd(base, bytes)
    }

    pub fn load(&mut self, ty: Type, addr: Value) -> Value {
        self.load_at(ty, addr, 0)
    }

    /// A load from `addr + offset` bytes.
    pub fn load_at(&mut self, ty: Type, addr: Value, offset: i32) -> Value {
        self.b.ins().load(ty, load_flags(), addr, offset)
    }

    /// Four 16-bit elements at `addr + offset` bytes, each zero-extended into a lane of an
    /// `i32x4`.
    pub fn uload16x4(&mut self, addr: Value, offset: i32) -> Value {
        self.b.ins().uload16x4(load_flags(), addr, offset)
    }

    /// A load of memory this kernel wrote (a matmul epilogue reading its product back): not
    /// `readonly`, so it stays ordered after the stores and calls that wrote it.
    pub fn load_written(&mut self, ty: Type, addr: Value) -> Value {
        self.b.ins().load(ty, flags(), addr, 0)
    }

    pub fn store(&mut self, value: Value, addr: Value) {
        self.b.ins().store(flags(), value, addr, 0);
    }

    /// `for i in (lo..hi).step_by(step)` while `i + step ≤ hi`; returns the first `i` not run,
    /// so a scalar tail can continue from it.
    pub fn for_loop(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        body: impl FnOnce(&mut Self, Value),
    ) -> Value {
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        let exit_i = self.b.append_block_param(exit, types::I64);
        self.b.ins().jump(header, &[lo.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let last = self.b.ins().iadd_imm_s(i, step);
        let more = self.b.ins().icmp(
            cranelift_codegen::ir::condcodes::IntCC::SignedLessThanOrEqual,
            last,
            hi,
        );
        self.b.ins().brif(more, body_block, &[], exit, &[i.into()]);
        self.b.switch_to_block(body_block);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        exit_i
    }

    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// Splits a linear index into coordinates over `dims` (row-major), outermost first.
    pub fn unravel(&mut self, mut index: Value, dims: &[Value]) -> Vec<Value> {
        let mut coords = vec![index; dims.len()];
        for (i, &d) in dims.iter().enumerate().rev() {
            if i == 0 {
                coords[0] = index;
            } else {
                coords[i] = self.b.ins().urem(index, d);
                index = self.b.ins().udiv(index, d);
            }
        }
        coords
    }

    /// `offset + Σ coordᵢ · strideᵢ`.
    pub fn linear(&mut self, offset: Value, coords: &[Value], strides: &[Value]) -> Value {
        coords.iter().zip(strides).fold(offset, |acc, (&c, &s)| {
            let t = self.b.ins().imul(c, s);
            self.b.ins().iadd(acc, t)
        })
    }
}
