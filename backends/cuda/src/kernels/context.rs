//! What every kernel's code starts from: the two parameters of the launch ABI (the step's buffer
//! table and the symbol values), size polynomials evaluated once at entry, buffer base addresses,
//! index arithmetic over views, typed element loads and stores, and the loops kernels are made
//! of.
//!
//! A kernel addresses buffers through slots of its own table, numbered in the order it first
//! reads them ([`Ctx::slots`] lists the program buffer of each), never by program buffer index:
//! two steps that compute the same thing on different buffers emit the same text, and share one
//! entry of the module.
//!
//! Invariants: `value`, `buffer` and `addressed` cache what they emit, so kernels call them
//! before their first loop, in the entry block, where the registers dominate the whole kernel.
//! Index arithmetic is signed 64-bit (a linear index may be split into coordinates in 32 bits
//! where the caller knows it fits: [`Ctx::unravel_narrow`]); a view's elements are at
//! `base + index·size`.

use super::dtype::{elem_bytes, mem_name, reg_ty};
use crate::error::Result;
use crate::ptx::{Cmp, KernelBuilder, Operand, Reg, Space, Special, Ty};
use kiln_backend_cpu::view::{Source, View};
use kiln_ir::DType;
use kiln_runtime::Poly;
use std::collections::HashMap;

/// A view ready to address: the buffer's base (none for splats and iotas), offset and strides.
#[derive(Clone)]
pub struct Addressed {
    pub view: View,
    pub base: Option<Reg>,
    pub offset: Operand,
    pub strides: Vec<Operand>,
    /// Whether the kernel itself writes what it reads here: its loads then take the coherent
    /// path (`ld.global`), not the read-only one (`ld.global.nc`), which may miss the kernel's
    /// own stores.
    pub written_here: bool,
}

pub struct Ctx {
    pub b: KernelBuilder,
    bufs: Reg,
    syms: Reg,
    symbols: HashMap<u32, Reg>,
    values: HashMap<Poly, Operand>,
    buffers: HashMap<usize, Reg>,
    /// The program buffer of each table slot.
    slots: Vec<usize>,
}

/// How many 16-byte accesses move `n` elements of `dtype` (more than four of them: a whole
/// number of 16-byte chunks, four words each).
fn chunks(dtype: DType, n: usize) -> Result<usize> {
    let bytes = elem_bytes(dtype)? as usize * n;
    debug_assert!(
        bytes.is_multiple_of(16),
        "{n} elements of {dtype} are not whole 16-byte chunks"
    );
    Ok(bytes / 16)
}

impl Ctx {
    /// A kernel `name` with the launch ABI's parameters loaded.
    pub fn new(name: &str) -> Ctx {
        let mut b = KernelBuilder::new(name, &["bufs", "syms"]);
        let bufs = b.param("bufs");
        let bufs = b.to_global(bufs);
        let syms = b.param("syms");
        let syms = b.to_global(syms);
        Ctx {
            b,
            bufs,
            syms,
            symbols: HashMap::new(),
            values: HashMap::new(),
            buffers: HashMap::new(),
            slots: Vec::new(),
        }
    }

    fn symbol(&mut self, index: u32) -> Reg {
        if let Some(&r) = self.symbols.get(&index) {
            return r;
        }
        let r = self.b.ld(
            Space::Global,
            "s64",
            Ty::S64,
            self.syms,
            8 * index as i64,
            true,
        );
        self.symbols.insert(index, r);
        r
    }

    /// `p` under the bound symbols: an immediate when it is a constant.
    pub fn value(&mut self, p: &Poly) -> Operand {
        if let Some(c) = p.as_constant() {
            return Operand::Int(c);
        }
        if let Some(v) = self.values.get(p) {
            return v.clone();
        }
        let mut acc: Option<Reg> = None;
        for term in &p.terms {
            let mut t = self.b.mov(Ty::S64, term.coeff);
            for &s in &term.symbols {
                let sym = self.symbol(s);
                t = self.b.mul(t, sym);
            }
            acc = Some(match acc {
                Some(a) => self.b.add(a, t),
                None => t,
            });
        }
        let v = Operand::Reg(acc.expect("a non-constant polynomial has terms"));
        self.values.insert(p.clone(), v.clone());
        v
    }

    /// `p` in a register.
    pub fn reg(&mut self, p: &Poly) -> Reg {
        match self.value(p) {
            Operand::Reg(r) => r,
            other => self.b.mov(Ty::S64, other),
        }
    }

    /// The device address of buffer `index`.
    /// The base address of program buffer `index`, from the next free slot of the step's table
    /// on first use.
    pub fn buffer(&mut self, index: usize) -> Reg {
        if let Some(&r) = self.buffers.get(&index) {
            return r;
        }
        let slot = self.slots.len();
        self.slots.push(index);
        let r = self.b.ld(
            Space::Global,
            "u64",
            Ty::U64,
            self.bufs,
            8 * slot as i64,
            true,
        );
        self.buffers.insert(index, r);
        r
    }

    /// The program buffer of each slot of the step's table, in slot order.
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }

    pub fn addressed(&mut self, view: &View) -> Addressed {
        let base = view.buffer().map(|i| self.buffer(i));
        let offset = self.value(&view.offset);
        let strides = view.strides.iter().map(|s| self.value(s)).collect();
        Addressed {
            view: view.clone(),
            base,
            offset,
            strides,
            written_here: false,
        }
    }

    /// `offset + Σ coordᵢ·strideᵢ`.
    pub fn linear(&mut self, offset: &Operand, coords: &[Reg], strides: &[Operand]) -> Reg {
        let mut acc = self.b.mov(Ty::S64, offset.clone());
        for (c, s) in coords.iter().zip(strides) {
            if *s != Operand::Int(0) {
                acc = self.b.mad(*c, s.clone(), acc);
            }
        }
        acc
    }

    /// Splits a linear index into row-major coordinates over `dims`, outermost first (a
    /// dimension of constant size 1 costs no division).
    pub fn unravel(&mut self, index: Reg, dims: &[Operand]) -> Vec<Reg> {
        self.split(index, dims)
    }

    /// [`Ctx::unravel`] in `index`'s own register type (`dims` are immediates or of it): one
    /// division per axis, the remainder being what the quotient leaves.
    fn split(&mut self, index: Reg, dims: &[Operand]) -> Vec<Reg> {
        let mut coords = vec![index; dims.len()];
        let mut rest = index;
        for i in (1..dims.len()).rev() {
            if dims[i] == Operand::Int(1) {
                coords[i] = self.b.mov(index.ty, 0i64);
                continue;
            }
            let quotient = self.b.div(rest, dims[i].clone());
            let whole = self.b.mul(quotient, dims[i].clone());
            coords[i] = self.b.sub(rest, whole);
            rest = quotient;
        }
        if !dims.is_empty() {
            coords[0] = rest;
        }
        coords
    }

    /// Whether a domain of `count` elements has fewer than 2³¹ ([`Fits`]); a predicate is
    /// computed here, so call it before the loops that use it.
    pub fn fits(&mut self, count: &Operand) -> Fits {
        let limit = 1i64 << 31;
        match count {
            Operand::Int(n) => Fits::Known(*n < limit),
            Operand::Reg(r) => Fits::Test(self.b.setp(Cmp::Lt, *r, limit)),
            other => unreachable!("a count is an integer or a register, not {other:?}"),
        }
    }

    /// [`Ctx::unravel`] of an index of a domain that `fits` describes: in 32-bit arithmetic
    /// where the domain has fewer than 2³¹ elements ([`Ctx::unravel_narrow`]), tested here
    /// (one uniform branch) when that is known only at run time.
    pub fn unravel_in(&mut self, index: Reg, dims: &[Operand], fits: Fits) -> Vec<Reg> {
        match fits {
            Fits::Known(true) => self.unravel_narrow(index, dims),
            Fits::Known(false) => self.unravel(index, dims),
            Fits::Test(p) => {
                let coords: Vec<Reg> = dims.iter().map(|_| self.b.reg(Ty::S64)).collect();
                let (wide, done) = (self.b.label(), self.b.label());
                self.b.bra_if(p, true, wide);
                for (&to, from) in coords.iter().zip(self.unravel_narrow(index, dims)) {
                    self.b.assign(to, from);
                }
                self.b.bra(done);
                self.b.place(wide);
                for (&to, from) in coords.iter().zip(self.unravel(index, dims)) {
                    self.b.assign(to, from);
                }
                self.b.place(done);
                coords
            }
        }
    }

    /// [`Ctx::unravel`] in 32-bit arithmetic, for an `index` below 2³¹ in a domain of fewer
    /// than 2³¹ elements (the caller's check): a 64-bit division by a register is a long
    /// subroutine, a 32-bit one a few instructions. The coordinates come back `s64`.
    pub fn unravel_narrow(&mut self, index: Reg, dims: &[Operand]) -> Vec<Reg> {
        let narrow = |c: &mut Ctx, r: Reg| c.b.cvt(Ty::U32, None, r, None, "");
        let dims: Vec<Operand> = dims
            .iter()
            .map(|d| match d {
                Operand::Reg(r) => Operand::Reg(narrow(self, *r)),
                other => other.clone(),
            })
            .collect();
        let index = narrow(self, index);
        self.split(index, &dims)
            .into_iter()
            .map(|coord| self.b.cvt(Ty::S64, None, coord, None, ""))
            .collect()
    }

    /// The address of element `index` of a buffer of `dtype` at `base`.
    pub fn address(&mut self, base: Reg, index: Reg, dtype: DType) -> Result<Reg> {
        let size = elem_bytes(dtype)?;
        let base = self.b.mov(Ty::S64, base);
        Ok(self.b.mad(index, size, base))
    }

    /// Element `index` of `a` in a register of its dtype's type (splats and iotas touch no
    /// memory: an iota is its own linear index).
    pub fn load(&mut self, a: &Addressed, index: Reg) -> Result<Reg> {
        let dtype = a.view.dtype;
        Ok(match a.view.source {
            Source::Buffer(_) => {
                let addr = self.address(a.base.expect("a buffer has a base"), index, dtype)?;
                self.load_global(addr, dtype, !a.written_here)?
            }
            Source::Splat(v) => self.constant(v, dtype)?,
            Source::Iota => super::expr::convert(self, index, DType::I64, dtype)?,
        })
    }

    /// A load of one `dtype` element at global `addr`, by the read-only path where `readonly`.
    fn load_global(&mut self, addr: Reg, dtype: DType, readonly: bool) -> Result<Reg> {
        let ty = reg_ty(dtype)?;
        let mem = mem_name(dtype)?;
        if ty == Ty::Pred {
            let byte = self.b.ld(Space::Global, mem, Ty::U32, addr, 0, readonly);
            return Ok(self.b.setp(Cmp::Ne, byte, 0i64));
        }
        Ok(self.b.ld(Space::Global, mem, ty, addr, 0, readonly))
    }

    /// Elements `index .. index + n` of buffer view `a` in vector loads of at most 16 bytes
    /// (one `ld.vN` for up to four elements; else 16-byte loads of four words, a word of bf16
    /// split into its two halves); the caller guarantees the address is aligned to the `n`
    /// elements' size, which is at most 16 bytes or a multiple of it.
    pub fn load_vector(&mut self, a: &Addressed, index: Reg, n: usize) -> Result<Vec<Reg>> {
        let dtype = a.view.dtype;
        let addr = self.address(a.base.expect("vectors are read from buffers"), index, dtype)?;
        let (ty, mem) = (reg_ty(dtype)?, mem_name(dtype)?);
        let readonly = !a.written_here;
        if n <= 4 {
            return Ok(self
                .b
                .ld_vector(Space::Global, (mem, ty), addr, 0, (n, readonly)));
        }
        let mut values = Vec::with_capacity(n);
        for chunk in 0..chunks(dtype, n)? {
            let offset = 16 * chunk as i64;
            if ty == Ty::B16 {
                for word in self.b.ld_v4(Space::Global, addr, offset, readonly) {
                    let (lo, hi) = self.b.unpack(word);
                    values.extend([lo, hi]);
                }
            } else {
                let four = (4, readonly);
                values.extend(
                    self.b
                        .ld_vector(Space::Global, (mem, ty), addr, offset, four),
                );
            }
        }
        Ok(values)
    }

    /// Stores `values` (of `dtype`) as elements `index ..` of the buffer at `base` in vector
    /// stores, as [`Self::load_vector`] loads them; the caller guarantees the alignment.
    pub fn store_vector(
        &mut self,
        base: Reg,
        index: Reg,
        dtype: DType,
        values: &[Reg],
    ) -> Result<()> {
        let addr = self.address(base, index, dtype)?;
        let mem = mem_name(dtype)?;
        if values.len() <= 4 {
            self.b.st_vector(Space::Global, mem, addr, 0, values);
            return Ok(());
        }
        let per_chunk = values.len() / chunks(dtype, values.len())?;
        for (chunk, part) in values.chunks(per_chunk).enumerate() {
            let offset = 16 * chunk as i64;
            if reg_ty(dtype)? == Ty::B16 {
                let words: Vec<Reg> = part
                    .chunks(2)
                    .map(|pair| self.b.pack(Ty::B32, pair[0], pair[1]))
                    .collect();
                self.b.st_vector(Space::Global, "b32", addr, offset, &words);
            } else {
                self.b.st_vector(Space::Global, mem, addr, offset, part);
            }
        }
        Ok(())
    }

    /// Stores `value` (of `dtype`) as element `index` of the buffer at `base`.
    pub fn store(&mut self, base: Reg, index: Reg, dtype: DType, value: Reg) -> Result<()> {
        let addr = self.address(base, index, dtype)?;
        let mem = mem_name(dtype)?;
        let value = if value.ty == Ty::Pred {
            self.b.selp(1i64, 0i64, value, Ty::U32)
        } else {
            value
        };
        self.b.st(Space::Global, mem, addr, 0, value);
        Ok(())
    }

    /// A constant of `dtype` in a register.
    pub fn constant(&mut self, v: f64, dtype: DType) -> Result<Reg> {
        Ok(match reg_ty(dtype)? {
            Ty::F32 => self.b.mov(Ty::F32, v as f32),
            Ty::Pred => self.b.pred_const(v != 0.0),
            Ty::B16 => {
                let f = self.b.mov(Ty::F32, v as f32);
                super::expr::convert(self, f, DType::F32, dtype)?
            }
            ty => self.b.mov(ty, v as i64),
        })
    }

    /// `for i in (start..end).step_by(step)`, `i` a signed 64-bit register.
    pub fn for_range(
        &mut self,
        start: impl Into<Operand>,
        end: impl Into<Operand>,
        step: impl Into<Operand>,
        body: impl FnOnce(&mut Ctx, Reg) -> Result<()>,
    ) -> Result<()> {
        let i = self.b.mov(Ty::S64, start.into());
        self.walk(i, end, step, body)
    }

    /// `for i in (start..end).step_by(step)` with the loads of `batch` positions in flight
    /// together: while a whole batch of positions is left, `load` runs for each of them, then
    /// `consume` for each, in order; the positions after the last whole batch go one at a time.
    /// `consume` sees the positions in the plain loop's order, so a fold through it gives the
    /// same result; only the waiting on memory overlaps.
    pub fn for_range_batched<T>(
        &mut self,
        start: Reg,
        end: impl Into<Operand>,
        step: impl Into<Operand>,
        batch: i64,
        mut load: impl FnMut(&mut Ctx, Reg) -> Result<T>,
        mut consume: impl FnMut(&mut Ctx, Reg, T) -> Result<()>,
    ) -> Result<()> {
        let (end, step) = (end.into(), step.into());
        let i = self.b.mov(Ty::S64, start);
        let step_r = self.b.mov(Ty::S64, step.clone());
        let end_r = self.b.mov(Ty::S64, end.clone());
        let span = self.b.mul(step_r, batch - 1);
        let last_start = self.b.sub(end_r, span);
        let stride = self.b.mul(step_r, batch);
        self.walk(i, last_start, stride, |c, first| {
            let mut positions = Vec::new();
            let mut loaded = Vec::new();
            for u in 0..batch {
                let at = c.b.mad(step_r, u, first);
                loaded.push(load(c, at)?);
                positions.push(at);
            }
            for (at, values) in positions.into_iter().zip(loaded) {
                consume(c, at, values)?;
            }
            Ok(())
        })?;
        self.walk(i, end, step, |c, at| {
            let values = load(c, at)?;
            consume(c, at, values)
        })
    }

    /// `while i < end { body(i); i += step }` over an existing counter, which holds the first
    /// value not walked afterwards.
    pub fn walk(
        &mut self,
        i: Reg,
        end: impl Into<Operand>,
        step: impl Into<Operand>,
        body: impl FnOnce(&mut Ctx, Reg) -> Result<()>,
    ) -> Result<()> {
        let (end, step) = (end.into(), step.into());
        let (head, exit) = (self.b.label(), self.b.label());
        self.b.place(head);
        let done = self.b.setp(Cmp::Ge, i, end);
        self.b.bra_if(done, false, exit);
        body(self, i)?;
        let next = self.b.add(i, step);
        self.b.assign(i, next);
        self.b.bra(head);
        self.b.place(exit);
        Ok(())
    }

    /// Runs `body` only where `p` holds.
    pub fn when(&mut self, p: Reg, body: impl FnOnce(&mut Ctx) -> Result<()>) -> Result<()> {
        let skip = self.b.label();
        self.b.bra_if(p, true, skip);
        body(self)?;
        self.b.place(skip);
        Ok(())
    }

    /// A special register widened to `s64`.
    pub fn special(&mut self, s: Special) -> Reg {
        let r = self.b.special(s);
        self.b.cvt(Ty::S64, None, r, None, "")
    }

    /// Items `0..total` spread over the grid: one per thread (`per` = 1), per warp (32) or per
    /// block (`per` = threads per block), by grid stride.
    pub fn grid_loop(
        &mut self,
        total: Operand,
        per: Granule,
        body: impl FnOnce(&mut Ctx, Reg) -> Result<()>,
    ) -> Result<()> {
        let ctaid = self.special(Special::Ctaid);
        let nctaid = self.special(Special::Nctaid);
        let (start, step) = match per {
            Granule::Block => (ctaid, nctaid),
            Granule::Thread | Granule::Warp => {
                let ntid = self.special(Special::Ntid);
                let tid = self.special(Special::Tid);
                let first = self.b.mad(ctaid, ntid, tid);
                let all = self.b.mul(nctaid, ntid);
                if per == Granule::Warp {
                    (self.b.shr(first, 5), self.b.shr(all, 5))
                } else {
                    (first, all)
                }
            }
        };
        self.for_range(start, total, step, body)
    }
}

/// Whether a domain's linear indices fit 32-bit arithmetic (fewer than 2³¹ elements): known
/// when its size is a constant, else a predicate computed once at the kernel's entry.
#[derive(Clone, Copy)]
pub enum Fits {
    Known(bool),
    Test(Reg),
}

/// What one item of a grid loop runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    Thread,
    Warp,
    Block,
}
