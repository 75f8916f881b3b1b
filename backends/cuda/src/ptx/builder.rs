//! One `.entry` function under construction: typed registers, labels, shared variables and
//! one method per instruction form, each choosing its opcode suffixes from its operands' types.
//!
//! Invariants: a method's destination register is fresh and of the type the instruction
//! produces; float arithmetic carries an explicit rounding mode (`.rn`), which also keeps
//! ptxas from contracting a multiply and an add into one FMA, so a kernel rounds exactly where
//! the IR does; `min`/`max` on floats propagate NaN (`.NaN`), as the IR's ops do. Every
//! kernel's parameters are `.u64`.
//!
//! Every entry starts with `griddepcontrol.wait`, for programmatic dependent launch: launched with
//! programmatic stream serialization, a kernel's launch may be processed while the kernel before
//! it in the stream is still running, and its blocks wait there, before their first instruction,
//! until that grid has finished and its memory is visible. Launched without the attribute (or
//! with no kernel before it), the instruction returns at once. No entry triggers its dependents
//! early (`griddepcontrol.launch_dependents`): measured on an H200, that gained nothing at batch 1
//! over the implicit trigger at the grid's end and lost 10% at batch 16
//! (`bench/results/gpu-decode-pdl-2026-11-30-h200/`).

use super::types::{Cmp, Label, Operand, Reg, Space, Special, Ty};
use std::fmt::Write;

/// The warp shuffles of `shfl.sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shuffle {
    /// From lane `lane ^ b`.
    Xor,
    /// From lane `b`.
    Index,
}

pub struct KernelBuilder {
    name: String,
    params: Vec<String>,
    /// Shared variables: name, bytes, alignment.
    shared: Vec<(String, u32, u32)>,
    counts: [u32; Ty::ALL.len()],
    labels: u32,
    body: Vec<String>,
    /// Threads per block and blocks per multiprocessor to fit, if asked.
    occupancy: Option<(u32, u32)>,
}

/// A vector operand `{%r1, %r2, …}`.
/// `.nc` where a global load may take the non-coherent (read-only) path.
fn non_coherent(space: Space, readonly: bool) -> &'static str {
    match readonly && space == Space::Global {
        true => ".nc",
        false => "",
    }
}

fn vector(regs: &[Reg]) -> String {
    let names: Vec<String> = regs.iter().map(Reg::to_string).collect();
    format!("{{{}}}", names.join(", "))
}

fn slot(ty: Ty) -> usize {
    Ty::ALL
        .iter()
        .position(|&t| t == ty)
        .expect("every type is listed")
}

impl KernelBuilder {
    /// An entry `name` taking `.u64` parameters named `params`.
    pub fn new(name: &str, params: &[&str]) -> KernelBuilder {
        KernelBuilder {
            name: name.to_string(),
            params: params.iter().map(|p| p.to_string()).collect(),
            shared: Vec::new(),
            counts: [0; Ty::ALL.len()],
            labels: 0,
            body: Vec::new(),
            occupancy: None,
        }
    }

    /// Asks `ptxas` for at most `threads` threads per block and registers few enough for
    /// `blocks` blocks of them on one multiprocessor (`.maxntid`, `.minnctapersm`).
    pub fn occupancy(&mut self, threads: u32, blocks: u32) {
        self.occupancy = Some((threads, blocks));
    }

    /// Bytes of shared memory declared so far.
    pub fn shared_bytes(&self) -> u32 {
        self.shared.iter().map(|(_, b, _)| b).sum()
    }

    pub fn reg(&mut self, ty: Ty) -> Reg {
        let n = self.counts[slot(ty)];
        self.counts[slot(ty)] += 1;
        Reg { ty, n }
    }

    pub fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Places `label` before the next instruction.
    pub fn place(&mut self, label: Label) {
        self.body.push(format!("{label}:"));
    }

    /// Declares `bytes` of shared memory (16-byte aligned) and returns its shared address.
    pub fn shared(&mut self, bytes: u32) -> Reg {
        self.shared_aligned(bytes, 16)
    }

    /// Declares `bytes` of shared memory aligned to `align` bytes (a power of two, at least 16)
    /// and returns its shared address.
    pub fn shared_aligned(&mut self, bytes: u32, align: u32) -> Reg {
        let name = format!("smem{}", self.shared.len());
        self.shared.push((name.clone(), bytes, align));
        self.inst("mov.u64", Ty::U64, &[Operand::Symbol(name)])
    }

    fn line(&mut self, text: String) {
        self.body.push(format!("\t{text};"));
    }

    /// `opcode dst, srcs…` into a fresh register of type `ty`.
    fn inst(&mut self, opcode: &str, ty: Ty, srcs: &[Operand]) -> Reg {
        let dst = self.reg(ty);
        let mut text = format!("{opcode} {dst}");
        for s in srcs {
            write!(text, ", {s}").unwrap();
        }
        self.line(text);
        dst
    }

    /// A register of type `ty` holding `src` (a register of the same width or an immediate).
    pub fn mov(&mut self, ty: Ty, src: impl Into<Operand>) -> Reg {
        let src = src.into();
        let suffix = match (&src, ty) {
            (Operand::Reg(r), _) if r.ty != ty => ty.bits(),
            _ => ty.name(),
        };
        self.inst(&format!("mov.{suffix}"), ty, &[src])
    }

    /// Overwrites `dst` with `src` (loop-carried values).
    pub fn assign(&mut self, dst: Reg, src: impl Into<Operand>) {
        self.line(format!("mov.{} {dst}, {}", dst.ty.name(), src.into()));
    }

    /// A predicate holding `value`.
    pub fn pred_const(&mut self, value: bool) -> Reg {
        let r = self.mov(Ty::U32, value as i64);
        self.setp(Cmp::Ne, r, 0i64)
    }

    pub fn special(&mut self, s: Special) -> Reg {
        self.inst("mov.u32", Ty::U32, &[Operand::Symbol(s.name().to_string())])
    }

    /// Parameter `name` of the entry.
    pub fn param(&mut self, name: &str) -> Reg {
        assert!(self.params.iter().any(|p| p == name), "no parameter {name}");
        self.inst(
            "ld.param.u64",
            Ty::U64,
            &[Operand::Symbol(format!("[{name}]"))],
        )
    }

    /// Converts a generic address of global memory to a global one.
    pub fn to_global(&mut self, generic: Reg) -> Reg {
        self.inst("cvta.to.global.u64", Ty::U64, &[generic.into()])
    }

    /// A load of a `mem`-typed element (`f32`, `u8`, `b16`, …) from `[addr + offset]` into a
    /// register of type `ty`; `readonly` global loads go through the non-coherent cache.
    pub fn ld(
        &mut self,
        space: Space,
        mem: &str,
        ty: Ty,
        addr: Reg,
        offset: i64,
        readonly: bool,
    ) -> Reg {
        let nc = non_coherent(space, readonly);
        let at = Operand::Symbol(format!("[{addr}+{offset}]"));
        self.inst(&format!("ld.{}{nc}.{mem}", space.name()), ty, &[at])
    }

    /// `n` consecutive `mem`-typed elements from `[addr + offset]` (aligned to their whole
    /// size) into fresh `ty` registers, low address first (`ld.SPACE[.nc].vN.MEM`); `readonly`
    /// global loads go through the non-coherent cache.
    pub fn ld_vector(
        &mut self,
        space: Space,
        (mem, ty): (&str, Ty),
        addr: Reg,
        offset: i64,
        (n, readonly): (usize, bool),
    ) -> Vec<Reg> {
        let regs: Vec<Reg> = (0..n).map(|_| self.reg(ty)).collect();
        let nc = non_coherent(space, readonly);
        self.line(format!(
            "ld.{}{nc}.v{n}.{mem} {}, [{addr}+{offset}]",
            space.name(),
            vector(&regs)
        ));
        regs
    }

    /// A store of `values` as consecutive `mem`-typed elements at `[addr + offset]` (aligned
    /// to their whole size), low address first (`st.SPACE.vN.MEM`).
    pub fn st_vector(&mut self, space: Space, mem: &str, addr: Reg, offset: i64, values: &[Reg]) {
        self.line(format!(
            "st.{}.v{}.{mem} [{addr}+{offset}], {}",
            space.name(),
            values.len(),
            vector(values)
        ));
    }

    /// A store of `value` as a `mem`-typed element at `[addr + offset]`.
    pub fn st(
        &mut self,
        space: Space,
        mem: &str,
        addr: Reg,
        offset: i64,
        value: impl Into<Operand>,
    ) {
        self.line(format!(
            "st.{}.{mem} [{addr}+{offset}], {}",
            space.name(),
            value.into()
        ));
    }

    fn arith(&mut self, op: &str, a: Reg, srcs: &[Operand]) -> Reg {
        let opcode = match (op, a.ty.is_float()) {
            ("mul", false) => format!("mul.lo.{}", a.ty.name()),
            ("mad", false) => format!("mad.lo.{}", a.ty.name()),
            ("mad", true) => format!("fma.rn.{}", a.ty.name()),
            ("add" | "sub" | "mul" | "div", true) => format!("{op}.rn.{}", a.ty.name()),
            ("min" | "max", true) => format!("{op}.NaN.{}", a.ty.name()),
            ("and" | "or" | "xor" | "not", _) => format!("{op}.{}", a.ty.bits()),
            _ => format!("{op}.{}", a.ty.name()),
        };
        let mut all = vec![Operand::Reg(a)];
        all.extend_from_slice(srcs);
        self.inst(&opcode, a.ty, &all)
    }

    pub fn add(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("add", a, &[b.into()])
    }

    pub fn sub(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("sub", a, &[b.into()])
    }

    /// `a·b` (the low half for integers).
    pub fn mul(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("mul", a, &[b.into()])
    }

    /// `a·b + c`: the low half for integers, one rounding (`fma.rn`) for floats.
    pub fn mad(&mut self, a: Reg, b: impl Into<Operand>, c: impl Into<Operand>) -> Reg {
        self.arith("mad", a, &[b.into(), c.into()])
    }

    /// `a / b`: IEEE division for floats, truncating for integers.
    pub fn div(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("div", a, &[b.into()])
    }

    pub fn rem(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("rem", a, &[b.into()])
    }

    pub fn min(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("min", a, &[b.into()])
    }

    pub fn max(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("max", a, &[b.into()])
    }

    pub fn and(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("and", a, &[b.into()])
    }

    pub fn or(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("or", a, &[b.into()])
    }

    pub fn xor(&mut self, a: Reg, b: impl Into<Operand>) -> Reg {
        self.arith("xor", a, &[b.into()])
    }

    pub fn not(&mut self, a: Reg) -> Reg {
        self.arith("not", a, &[])
    }

    pub fn neg(&mut self, a: Reg) -> Reg {
        self.arith("neg", a, &[])
    }

    pub fn abs(&mut self, a: Reg) -> Reg {
        self.arith("abs", a, &[])
    }

    /// `a << b` (bits).
    pub fn shl(&mut self, a: Reg, b: u32) -> Reg {
        self.inst(
            &format!("shl.{}", a.ty.bits()),
            a.ty,
            &[a.into(), (b as i64).into()],
        )
    }

    /// `a >> b`, arithmetic for signed types.
    pub fn shr(&mut self, a: Reg, b: u32) -> Reg {
        self.inst(
            &format!("shr.{}", a.ty.name()),
            a.ty,
            &[a.into(), (b as i64).into()],
        )
    }

    pub fn setp(&mut self, cmp: Cmp, a: Reg, b: impl Into<Operand>) -> Reg {
        let opcode = format!("setp.{}.{}", cmp.name(a.ty), a.ty.name());
        self.inst(&opcode, Ty::Pred, &[a.into(), b.into()])
    }

    /// `p ? a : b`.
    pub fn selp(&mut self, a: impl Into<Operand>, b: impl Into<Operand>, p: Reg, ty: Ty) -> Reg {
        self.inst(
            &format!("selp.{}", ty.name()),
            ty,
            &[a.into(), b.into(), p.into()],
        )
    }

    /// A conversion of `src` to a register of type `ty`, with rounding modifier `round` (`rn`,
    /// `rzi`, `rni`, or empty); `to` and `from` name the converted types when they differ
    /// from the registers' (`bf16` held in a `b16` register).
    pub fn cvt(
        &mut self,
        ty: Ty,
        to: Option<&str>,
        src: Reg,
        from: Option<&str>,
        round: &str,
    ) -> Reg {
        let round = if round.is_empty() {
            String::new()
        } else {
            format!(".{round}")
        };
        let opcode = format!(
            "cvt{round}.{}.{}",
            to.unwrap_or(ty.name()),
            from.unwrap_or(src.ty.name())
        );
        self.inst(&opcode, ty, &[src.into()])
    }

    /// `2^a` (`ex2.approx.f32`: at most 2 ulp from the exact value, subnormal results kept).
    pub fn ex2(&mut self, a: Reg) -> Reg {
        self.inst("ex2.approx.f32", Ty::F32, &[a.into()])
    }

    /// `2^a` with subnormal arguments and results flushed to zero (`ex2.approx.ftz.f32`: one
    /// instruction, where keeping subnormals takes a scaling around it).
    pub fn ex2_ftz(&mut self, a: Reg) -> Reg {
        self.inst("ex2.approx.ftz.f32", Ty::F32, &[a.into()])
    }

    /// `lo` and `hi` rounded to bf16 (to nearest even) and packed in one word, `lo` in the low
    /// half (`cvt.rn.bf16x2.f32`, which takes the upper half first).
    pub fn pack_bf16x2(&mut self, lo: Reg, hi: Reg) -> Reg {
        self.inst("cvt.rn.bf16x2.f32", Ty::B32, &[hi.into(), lo.into()])
    }

    /// IEEE square root.
    pub fn sqrt(&mut self, a: Reg) -> Reg {
        self.inst(&format!("sqrt.rn.{}", a.ty.name()), a.ty, &[a.into()])
    }

    /// IEEE reciprocal.
    pub fn rcp(&mut self, a: Reg) -> Reg {
        self.inst(&format!("rcp.rn.{}", a.ty.name()), a.ty, &[a.into()])
    }

    /// A warp shuffle of a 32-bit value among all 32 lanes.
    pub fn shfl(&mut self, mode: Shuffle, value: Reg, b: impl Into<Operand>) -> Reg {
        let mode = match mode {
            Shuffle::Xor => "bfly",
            Shuffle::Index => "idx",
        };
        let all = [value.into(), b.into(), Operand::Int(31), Operand::Int(-1)];
        self.inst(&format!("shfl.sync.{mode}.b32"), value.ty, &all)
    }

    /// The two halves `(low, high)` of a 64-bit register (as `.u32`) or of a 32-bit one (as
    /// `.b16`).
    pub fn unpack(&mut self, r: Reg) -> (Reg, Reg) {
        let half = r.ty.half();
        let (lo, hi) = (self.reg(half), self.reg(half));
        self.line(format!("mov.{} {{{lo}, {hi}}}, {r}", r.ty.bits()));
        (lo, hi)
    }

    /// A register of type `ty` (64 or 32 bits) from its halves.
    pub fn pack(&mut self, ty: Ty, lo: Reg, hi: Reg) -> Reg {
        let dst = self.reg(ty);
        self.line(format!("mov.{} {dst}, {{{lo}, {hi}}}", ty.bits()));
        dst
    }

    /// Four consecutive 32-bit words from `[addr + offset]` (16-byte aligned) into fresh
    /// `.b32` registers, low address first (`ld.SPACE[.nc].v4.b32`); `readonly` global loads go
    /// through the non-coherent cache.
    pub fn ld_v4(&mut self, space: Space, addr: Reg, offset: i64, readonly: bool) -> [Reg; 4] {
        let words = self.ld_vector(space, ("b32", Ty::B32), addr, offset, (4, readonly));
        [words[0], words[1], words[2], words[3]]
    }

    /// A store of four 32-bit words at `[addr + offset]` (16-byte aligned), low address first.
    pub fn st_v4(&mut self, space: Space, addr: Reg, offset: i64, words: [Reg; 4]) {
        self.st_vector(space, "b32", addr, offset, &words);
    }

    /// `cp.async.cg.shared.global`: 16 bytes from global `src` to shared `dst + offset` (both
    /// 16-byte aligned), of which the first `size` are read (0 or 16: the rest are zeros), without
    /// waiting; the copies a thread issued are complete once [`Self::cp_async_wait`] lets it past
    /// the group they were committed in.
    pub fn cp_async(&mut self, dst: Reg, offset: i64, src: Reg, size: Reg) {
        self.line(format!(
            "cp.async.cg.shared.global [{dst}+{offset}], [{src}+0], 16, {size}"
        ));
    }

    /// `cp.async.commit_group`: the copies issued since the last commit form a group.
    pub fn cp_async_commit(&mut self) {
        self.line("cp.async.commit_group".into());
    }

    /// `cp.async.wait_group pending`: waits until at most `pending` of the thread's groups are
    /// incomplete.
    pub fn cp_async_wait(&mut self, pending: u32) {
        self.line(format!("cp.async.wait_group {pending}"));
    }

    /// The warp collective `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16`: four 8×8
    /// matrices of 16-bit elements from shared memory, lane `l` giving the address (plus
    /// `offset`; 16-byte aligned) of row `l % 8` of matrix `l / 8`. Word `i` of lane `l` holds
    /// two elements of matrix `i`, low half first: row `l / 4`, columns `2·(l % 4)` and the
    /// next; with `trans`, those of its transpose (column `l / 4`, rows `2·(l % 4)` and the
    /// next), which is an `mma` B fragment word of a tile stored `[k][n]`.
    pub fn ldmatrix_x4(&mut self, addr: Reg, offset: i64, trans: bool) -> [Reg; 4] {
        let words = [(); 4].map(|_| self.reg(Ty::B32));
        let trans = if trans { ".trans" } else { "" };
        self.line(format!(
            "ldmatrix.sync.aligned.m8n8.x4{trans}.shared.b16 {}, [{addr}+{offset}]",
            vector(&words)
        ));
        words
    }

    /// `acc += a·b` on tensor cores for one 16×8 tile, in place: the warp collective
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`. Each lane holds its fragments in
    /// the PTX ISA's layout: `a` four `.b32` of two bf16 each (the 16×16 `A`, row-major),
    /// `b` two (the 16×8 `B`, column-major), `acc` four `.f32` of the 16×8 `C`/`D`.
    pub fn mma_bf16(&mut self, acc: [Reg; 4], a: [Reg; 4], b: [Reg; 2]) {
        self.mma_bf16_onto(acc, a, b, acc);
    }

    /// `d = a·b + c` on tensor cores for one 16×8 tile (`c` may be four copies of a zero, to
    /// start a sum without clearing `d` first); as [`Self::mma_bf16`].
    pub fn mma_bf16_onto(&mut self, d: [Reg; 4], a: [Reg; 4], b: [Reg; 2], c: [Reg; 4]) {
        self.line(format!(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {}, {}, {}, {}",
            vector(&d),
            vector(&a),
            vector(&b),
            vector(&c)
        ));
    }

    /// The warpgroup collective `wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16` (sm_90a),
    /// `N = 8·acc.len() / 4`: `acc = a·B + acc`, or `a·B` where `accumulate` (a predicate) is
    /// false, for a 64×16 `a` in registers and a 16×N `B` in shared memory described by `desc`
    /// (see `wgmma_descriptor`), read MN-major where `trans_b` (else K-major). Each warp `w` of
    /// the 4 holds rows `16w..16w + 16` of `a` and of `acc` in the fragment layouts of
    /// [`Self::mma_bf16`], its n-tiles of 8 columns one after another in `acc`. Asynchronous:
    /// the registers may be read or written again only after [`Self::wgmma_wait`].
    pub fn wgmma_bf16(
        &mut self,
        acc: &[Reg],
        a: [Reg; 4],
        desc: Reg,
        accumulate: Reg,
        trans_b: bool,
    ) {
        let n = acc.len() * 2;
        self.line(format!(
            "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {}, {}, {desc}, {accumulate}, 1, 1, {}",
            vector(acc),
            vector(&a),
            trans_b as u8
        ));
    }

    /// `wgmma.fence.sync.aligned`: orders the warpgroup's register accesses before the
    /// `wgmma` that follow.
    pub fn wgmma_fence(&mut self) {
        self.line("wgmma.fence.sync.aligned".into());
    }

    /// `wgmma.commit_group.sync.aligned`: the `wgmma` issued since the last commit form a group.
    pub fn wgmma_commit(&mut self) {
        self.line("wgmma.commit_group.sync.aligned".into());
    }

    /// `wgmma.wait_group.sync.aligned pending`: waits until at most `pending` of the groups are
    /// incomplete.
    pub fn wgmma_wait(&mut self, pending: u32) {
        self.line(format!("wgmma.wait_group.sync.aligned {pending}"));
    }

    /// `fence.proxy.async.shared::cta`: the thread's shared-memory writes (stores, `cp.async`)
    /// become visible to the asynchronous proxy that `wgmma` reads through; a barrier after it
    /// extends that to the block.
    pub fn fence_proxy_async(&mut self) {
        self.line("fence.proxy.async.shared::cta".into());
    }

    /// A barrier of the whole block.
    pub fn bar_sync(&mut self) {
        self.line("bar.sync 0".into());
    }

    /// A barrier of the warp's lanes (orders their shared-memory accesses).
    pub fn warp_sync(&mut self) {
        self.line("bar.warp.sync -1".into());
    }

    pub fn bra(&mut self, to: Label) {
        self.line(format!("bra.uni {to}"));
    }

    /// Branches to `to` when `p` holds (when it does not, with `negate`).
    pub fn bra_if(&mut self, p: Reg, negate: bool, to: Label) {
        let not = if negate { "!" } else { "" };
        self.line(format!("@{not}{p} bra {to}"));
    }

    pub fn ret(&mut self) {
        self.line("ret".into());
    }

    /// The entry's text.
    pub fn finish(self) -> String {
        let mut out = format!(".visible .entry {}(\n", self.name);
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| format!("\t.param .u64 {p}"))
            .collect();
        out.push_str(&params.join(",\n"));
        out.push_str("\n)\n");
        if let Some((threads, blocks)) = self.occupancy {
            writeln!(out, ".maxntid {threads}, 1, 1\n.minnctapersm {blocks}").unwrap();
        }
        out.push_str("{\n");
        for ty in Ty::ALL {
            let n = self.counts[slot(ty)];
            if n > 0 {
                writeln!(out, "\t.reg .{} {}<{n}>;", ty.name(), ty.prefix()).unwrap();
            }
        }
        for (name, bytes, align) in &self.shared {
            writeln!(out, "\t.shared .align {align} .b8 {name}[{bytes}];").unwrap();
        }
        out.push_str("\tgriddepcontrol.wait;\n");
        for line in &self.body {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("}\n");
        out
    }
}
