//! A CPU emulator of the PTX kiln writes, for tests: it parses an entry's text and runs blocks
//! of threads on byte-addressed global memory, checking that every access lies inside one of
//! the buffers the test placed there and is aligned to its size (a vector access to the whole
//! vector's), as the hardware requires.
//!
//! Threads run one at a time until they reach a point where they must meet others: a warp
//! shuffle, warp barrier, `mma` or `ldmatrix` (all 32 lanes of the warp, at the same
//! instruction), a `wgmma` (all 128 threads of a warpgroup), or a block barrier (every live
//! thread of the block). That is the convergence kiln's kernels
//! guarantee; a kernel that breaks it fails here as a deadlock. Arithmetic follows PTX's
//! rounding: `.rn` float operations in f32 / f64, `fma` fused, `ex2.approx` correctly rounded
//! (the hardware's is within 2 ulp), float-to-integer conversions saturating with NaN → 0,
//! `mma` and `wgmma` on the PTX ISA's fragment and shared-memory layouts with each output summed
//! exactly and rounded once (the hardware's order and rounding of the sum differ slightly; see
//! `mma`). `wgmma`, `cp.async` and their fences and waits complete at once.

use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Opnd {
    Reg(usize),
    Imm(u64),
    /// `[reg + offset]` or `[param]`.
    Addr(Box<Opnd>, i64),
    /// A named value: a parameter, a shared variable, a special register.
    Name(String),
    /// `{%r1, %r2, …}`: the parts of a packing move, the elements of a vector load or store,
    /// the fragments of an `mma`; the lowest part (address, bits) first.
    Vector(Vec<usize>),
    Label(usize),
}

#[derive(Clone, Debug)]
struct Inst {
    guard: Option<(usize, bool)>,
    parts: Vec<String>,
    dst: Option<Opnd>,
    srcs: Vec<Opnd>,
}

/// A parsed entry.
pub struct Program {
    insts: Vec<Inst>,
    regs: HashMap<String, usize>,
    /// Offsets of the shared variables, and their total size.
    shared: HashMap<String, u64>,
    shared_bytes: u64,
}

fn parse_operand(
    text: &str,
    regs: &mut HashMap<String, usize>,
    labels: &HashMap<String, usize>,
) -> Opnd {
    let text = text.trim();
    let mut reg = |name: &str| {
        let n = regs.len();
        *regs.entry(name.to_string()).or_insert(n)
    };
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return match inner.split_once('+') {
            Some((r, off)) => Opnd::Addr(Box::new(Opnd::Reg(reg(r))), off.parse().unwrap()),
            None => Opnd::Addr(Box::new(Opnd::Name(inner.to_string())), 0),
        };
    }
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        return Opnd::Vector(inner.split(',').map(|r| reg(r.trim())).collect());
    }
    if let Some(hex) = text.strip_prefix("0f") {
        return Opnd::Imm(u32::from_str_radix(hex, 16).unwrap() as u64);
    }
    if let Some(hex) = text.strip_prefix("0d") {
        return Opnd::Imm(u64::from_str_radix(hex, 16).unwrap());
    }
    if let Some(&at) = labels.get(text) {
        return Opnd::Label(at);
    }
    if text.starts_with("%") && !text.contains('.') && text != "%laneid" {
        return Opnd::Reg(reg(text));
    }
    match text.parse::<i64>() {
        Ok(v) => Opnd::Imm(v as u64),
        Err(_) => Opnd::Name(text.to_string()),
    }
}

impl Program {
    /// The instructions of an entry's text (or a bare body).
    pub fn parse(text: &str) -> Program {
        let mut shared = HashMap::new();
        let mut shared_bytes: u64 = 0;
        let mut lines = Vec::new();
        let mut labels = HashMap::new();
        for line in text.lines().map(str::trim) {
            if let Some(decl) = line.strip_prefix(".shared .align ") {
                let (align, decl) = decl.split_once(" .b8 ").unwrap();
                let align: u64 = align.parse().unwrap();
                let (name, size) = decl.trim_end_matches("];").split_once('[').unwrap();
                shared_bytes = shared_bytes.div_ceil(align) * align;
                shared.insert(name.to_string(), shared_bytes);
                shared_bytes += size.parse::<u64>().unwrap();
            } else if let Some(label) = line.strip_suffix(':') {
                labels.insert(label.to_string(), lines.len());
            } else if line.ends_with(';') && !line.starts_with('.') {
                lines.push(line.trim_end_matches(';').to_string());
            }
        }
        let mut regs = HashMap::new();
        let insts = lines
            .iter()
            .map(|line| {
                let (guard, rest) = match line.strip_prefix('@') {
                    Some(g) => {
                        let (p, rest) = g.split_once(' ').unwrap();
                        let (negate, p) = match p.strip_prefix('!') {
                            Some(p) => (true, p),
                            None => (false, p),
                        };
                        let n = regs.len();
                        (
                            Some((*regs.entry(p.to_string()).or_insert(n), negate)),
                            rest,
                        )
                    }
                    None => (None, line.as_str()),
                };
                let (op, operands) = rest.split_once(' ').unwrap_or((rest, ""));
                let mut ops: Vec<Opnd> = Vec::new();
                let mut depth = 0;
                let mut current = String::new();
                for ch in operands.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if ch == ',' && depth == 0 {
                        ops.push(parse_operand(&current, &mut regs, &labels));
                        current.clear();
                    } else {
                        current.push(ch);
                    }
                }
                if !current.trim().is_empty() {
                    ops.push(parse_operand(&current, &mut regs, &labels));
                }
                let parts: Vec<String> = op.split('.').map(str::to_string).collect();
                let writes = !matches!(
                    parts[0].as_str(),
                    "st" | "bra" | "bar" | "ret" | "griddepcontrol" | "cp"
                );
                let dst = if writes && !ops.is_empty() {
                    Some(ops.remove(0))
                } else {
                    None
                };
                Inst {
                    guard,
                    parts,
                    dst,
                    srcs: ops,
                }
            })
            .collect();
        Program {
            insts,
            regs,
            shared,
            shared_bytes,
        }
    }

    /// Runs one thread of straight-line code with the named registers set (as bits), and
    /// returns every register's bits by name.
    pub fn run(&self, inputs: &[(String, u64)]) -> HashMap<String, u64> {
        let mut t = Thread::new(self.regs.len(), [0; 5]);
        for (name, v) in inputs {
            t.regs[self.regs[name]] = *v;
        }
        let mut memory = Memory::default();
        let mut shared = Vec::new();
        let stop = t.run(self, &mut memory, &mut shared, &HashMap::new());
        assert!(
            matches!(stop, Stop::Done),
            "straight-line code stopped at {stop:?}"
        );
        self.regs
            .iter()
            .map(|(name, &i)| (name.clone(), t.regs[i]))
            .collect()
    }
}

/// Global memory: buffers placed at increasing addresses, every access checked to lie in one.
#[derive(Default)]
pub struct Memory {
    bytes: Vec<u8>,
    /// `(start, len)` of each buffer, by address.
    buffers: Vec<(u64, u64)>,
}

const BASE: u64 = 1 << 32;

impl Memory {
    /// Places `data` and returns its address.
    pub fn place(&mut self, data: &[u8]) -> u64 {
        let start = (self.bytes.len() as u64).div_ceil(256) * 256;
        self.bytes.resize(start as usize, 0);
        self.bytes.extend_from_slice(data);
        self.buffers.push((BASE + start, data.len() as u64));
        BASE + start
    }

    pub fn read(&self, addr: u64, len: u64) -> &[u8] {
        self.check(addr, len);
        let at = (addr - BASE) as usize;
        &self.bytes[at..at + len as usize]
    }

    fn check(&self, addr: u64, len: u64) {
        let inside = self
            .buffers
            .iter()
            .any(|&(start, n)| addr >= start && addr + len <= start + n);
        assert!(
            inside,
            "access of {len} bytes at {addr:#x} is outside every buffer"
        );
    }

    fn load(&self, addr: u64, len: u64) -> u64 {
        let mut v = [0u8; 8];
        v[..len as usize].copy_from_slice(self.read(addr, len));
        u64::from_le_bytes(v)
    }

    fn store(&mut self, addr: u64, len: u64, value: u64) {
        self.check(addr, len);
        let at = (addr - BASE) as usize;
        self.bytes[at..at + len as usize].copy_from_slice(&value.to_le_bytes()[..len as usize]);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Done,
    /// At a warp-collective instruction (shuffle, warp barrier).
    Warp,
    /// At a block barrier.
    Block,
    /// At a warpgroup collective (`wgmma.mma_async`).
    Warpgroup,
}

struct Thread {
    regs: Vec<u64>,
    pc: usize,
    /// `%tid.x, %ntid.x, %ctaid.x, %nctaid.x, %laneid`.
    special: [u64; 5],
    done: bool,
}

fn f32_of(bits: u64) -> f32 {
    f32::from_bits(bits as u32)
}

fn f64_of(bits: u64) -> f64 {
    f64::from_bits(bits)
}

fn of_f32(v: f32) -> u64 {
    v.to_bits() as u64
}

fn bytes_of(ty: &str) -> u64 {
    match ty {
        "u8" => 1,
        "b16" => 2,
        "f32" | "s32" | "u32" | "b32" => 4,
        _ => 8,
    }
}

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN).
fn bf16_of(x: f32) -> u64 {
    let bits = x.to_bits();
    if x.is_nan() {
        return 0x7fc0;
    }
    let round = ((bits >> 16) & 1) + 0x7fff;
    ((bits + round) >> 16) as u64
}

fn nan_min_max(a: f32, b: f32, max: bool) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if max {
        a.max(b)
    } else {
        a.min(b)
    }
}

impl Thread {
    fn new(regs: usize, special: [u64; 5]) -> Thread {
        Thread {
            regs: vec![0; regs],
            pc: 0,
            special,
            done: false,
        }
    }

    fn value(&self, o: &Opnd, p: &Program, params: &HashMap<String, u64>) -> u64 {
        match o {
            Opnd::Reg(r) => self.regs[*r],
            Opnd::Imm(v) => *v,
            Opnd::Name(n) => match n.as_str() {
                "%tid.x" => self.special[0],
                "%ntid.x" => self.special[1],
                "%ctaid.x" => self.special[2],
                "%nctaid.x" => self.special[3],
                "%laneid" => self.special[4],
                _ => *p
                    .shared
                    .get(n)
                    .or_else(|| params.get(n))
                    .unwrap_or_else(|| panic!("unknown name {n}")),
            },
            Opnd::Addr(..) | Opnd::Label(_) | Opnd::Vector(_) => panic!("not a value: {o:?}"),
        }
    }

    /// Runs until the thread ends or reaches a collective instruction (left unexecuted).
    fn run(
        &mut self,
        p: &Program,
        memory: &mut Memory,
        shared: &mut [u8],
        params: &HashMap<String, u64>,
    ) -> Stop {
        loop {
            let Some(inst) = p.insts.get(self.pc) else {
                self.done = true;
                return Stop::Done;
            };
            if let Some((g, negate)) = inst.guard {
                if (self.regs[g] != 0) == negate {
                    self.pc += 1;
                    continue;
                }
            }
            let parts: Vec<&str> = inst.parts.iter().map(String::as_str).collect();
            match parts[0] {
                "ret" => {
                    self.done = true;
                    return Stop::Done;
                }
                "shfl" | "mma" | "ldmatrix" => return Stop::Warp,
                "wgmma" if parts[1] == "mma_async" => return Stop::Warpgroup,
                // A `wgmma` completes at once, and shared memory has one proxy here: fences,
                // commits and waits are no-ops.
                "wgmma" | "fence" => {}
                "bar" if parts.get(1) == Some(&"warp") => return Stop::Warp,
                "bar" => return Stop::Block,
                "bra" => {
                    let Opnd::Label(at) = inst.srcs[0] else {
                        panic!("bra to {:?}", inst.srcs[0])
                    };
                    self.pc = at;
                    continue;
                }
                "ld" | "st" => self.memory_op(inst, &parts, p, memory, shared, params),
                // A copy completes at once, so waiting for one is a no-op.
                "cp" if parts.get(2) == Some(&"cg") => self.copy(inst, p, memory, shared, params),
                "cp" => {}
                // One grid at a time: there is no grid before it to wait for or to release.
                "griddepcontrol" => {}
                "mov" if is_vector(&inst.srcs[0]) || inst.dst.as_ref().is_some_and(is_vector) => {
                    self.repack(inst, 8 * bytes_of(parts[1]), p, params)
                }
                _ => {
                    let s: Vec<u64> = inst.srcs.iter().map(|o| self.value(o, p, params)).collect();
                    let v = alu(&parts, &s);
                    self.write(inst.dst.as_ref().unwrap(), v);
                }
            }
            self.pc += 1;
        }
    }

    fn write(&mut self, dst: &Opnd, v: u64) {
        match dst {
            Opnd::Reg(r) => self.regs[*r] = v,
            other => panic!("cannot write {other:?}"),
        }
    }

    /// `mov.bN` of a vector of equal parts into one `N`-bit register, or back.
    fn repack(&mut self, inst: &Inst, bits: u64, p: &Program, params: &HashMap<String, u64>) {
        let dst = inst.dst.as_ref().unwrap();
        let part = |regs: &[usize]| bits / regs.len() as u64;
        let mask = |width: u64| u64::MAX >> (64 - width);
        let v = match &inst.srcs[0] {
            Opnd::Vector(regs) => regs.iter().rev().fold(0, |acc, &r| {
                (acc << part(regs)) | (self.regs[r] & mask(part(regs)))
            }),
            other => self.value(other, p, params),
        };
        match dst {
            Opnd::Vector(regs) => {
                for (i, &r) in regs.iter().enumerate() {
                    self.regs[r] = (v >> (i as u64 * part(regs))) & mask(part(regs));
                }
            }
            other => self.write(other, v),
        }
    }

    /// `cp.async.cg.shared.global [dst], [src], 16, size`: `size` bytes from global memory into
    /// shared memory, the rest of the 16 zeros.
    fn copy(
        &mut self,
        inst: &Inst,
        p: &Program,
        memory: &mut Memory,
        shared: &mut [u8],
        params: &HashMap<String, u64>,
    ) {
        let address = |e: &mut Self, o: &Opnd| match o {
            Opnd::Addr(base, offset) => e.value(base, p, params).wrapping_add(*offset as u64),
            other => panic!("cp.async needs addresses, not {other:?}"),
        };
        let (dst, src) = (address(self, &inst.srcs[0]), address(self, &inst.srcs[1]));
        let size = self.value(&inst.srcs[3], p, params);
        assert!(
            dst.is_multiple_of(16) && src.is_multiple_of(16) && size <= 16,
            "cp.async of {size} bytes from {src:#x} to {dst:#x}"
        );
        for i in 0..16 {
            let byte = if i < size {
                memory.load(src + i, 1) as u8
            } else {
                0
            };
            shared[dst as usize + i as usize] = byte;
        }
    }

    fn memory_op(
        &mut self,
        inst: &Inst,
        parts: &[&str],
        p: &Program,
        memory: &mut Memory,
        shared: &mut [u8],
        params: &HashMap<String, u64>,
    ) {
        let ty = *parts.last().unwrap();
        let len = bytes_of(ty);
        let space = parts[1];
        // Loads and stores both name their address first.
        let at = &inst.srcs[0];
        let Opnd::Addr(base, offset) = at else {
            panic!("{} needs an address", parts.join("."))
        };
        if space == "param" {
            let v = self.value(base, p, params);
            self.write(inst.dst.as_ref().unwrap(), v);
            return;
        }
        let addr = self.value(base, p, params).wrapping_add(*offset as u64);
        let count = match parts[parts.len() - 2] {
            "v2" => 2,
            "v4" => 4,
            _ => 1,
        };
        assert!(
            addr.is_multiple_of(len * count),
            "{} of {} bytes at {addr:#x} is not aligned to its size",
            parts.join("."),
            len * count
        );
        if parts[0] == "ld" {
            let dsts = elements(inst.dst.as_ref().unwrap());
            for (i, dst) in dsts.iter().enumerate() {
                let at = addr + i as u64 * len;
                let raw = if space == "shared" {
                    let at = at as usize;
                    let mut v = [0u8; 8];
                    v[..len as usize].copy_from_slice(&shared[at..at + len as usize]);
                    u64::from_le_bytes(v)
                } else {
                    memory.load(at, len)
                };
                // Narrow signed loads sign-extend, others zero-extend.
                let v = match ty {
                    "s32" => raw as u32 as i32 as i64 as u64,
                    _ => raw,
                };
                self.write(dst, v);
            }
        } else {
            for (i, src) in elements(&inst.srcs[1]).iter().enumerate() {
                let v = self.value(src, p, params);
                let at = addr + i as u64 * len;
                if space == "shared" {
                    let at = at as usize;
                    shared[at..at + len as usize].copy_from_slice(&v.to_le_bytes()[..len as usize]);
                } else {
                    memory.store(at, len, v);
                }
            }
        }
    }
}

fn is_vector(o: &Opnd) -> bool {
    matches!(o, Opnd::Vector(_))
}

/// The registers of a vector operand, or the operand itself.
fn elements(o: &Opnd) -> Vec<Opnd> {
    match o {
        Opnd::Vector(regs) => regs.iter().map(|&r| Opnd::Reg(r)).collect(),
        other => vec![other.clone()],
    }
}

fn alu(parts: &[&str], s: &[u64]) -> u64 {
    let ty = *parts.last().unwrap();
    let op = parts[0];
    let f = |i: usize| s.get(i).map_or(0.0, |&b| f32_of(b));
    let d = |i: usize| s.get(i).map_or(0.0, |&b| f64_of(b));
    let narrow = matches!(ty, "s32" | "b32" | "u32");
    let unsigned = matches!(ty, "u32" | "u64");
    let int = |i: usize| -> i64 {
        let v = s[i];
        if narrow {
            if unsigned {
                v as u32 as i64
            } else {
                v as u32 as i32 as i64
            }
        } else {
            v as i64
        }
    };
    let wrap = |v: i64| -> u64 {
        if narrow {
            v as u32 as u64
        } else {
            v as u64
        }
    };
    match (op, ty) {
        ("mov", _) | ("cvta", _) => s[0],
        ("add", "f32") => of_f32(f(0) + f(1)),
        ("sub", "f32") => of_f32(f(0) - f(1)),
        ("mul", "f32") => of_f32(f(0) * f(1)),
        ("div", "f32") => of_f32(f(0) / f(1)),
        ("fma", "f32") => of_f32(f(0).mul_add(f(1), f(2))),
        ("mul", "f64") => (d(0) * d(1)).to_bits(),
        ("fma", "f64") => d(0).mul_add(d(1), d(2)).to_bits(),
        ("neg", "f32") => of_f32(-f(0)),
        ("neg", "f64") => (-d(0)).to_bits(),
        ("abs", "f32") => of_f32(f(0).abs()),
        ("min", "f32") => of_f32(nan_min_max(f(0), f(1), false)),
        ("max", "f32") => of_f32(nan_min_max(f(0), f(1), true)),
        ("rcp", "f32") => of_f32(1.0 / f(0)),
        ("sqrt", "f32") => of_f32(f(0).sqrt()),
        ("ex2", "f32") => {
            let r = (f(0) as f64).exp2() as f32;
            let flushed = parts.contains(&"ftz") && r.is_subnormal();
            of_f32(if flushed { 0.0 } else { r })
        }
        ("add", _) => wrap(int(0).wrapping_add(int(1))),
        ("sub", _) => wrap(int(0).wrapping_sub(int(1))),
        ("mul", _) => wrap(int(0).wrapping_mul(int(1))),
        ("mad", _) => wrap(int(0).wrapping_mul(int(1)).wrapping_add(int(2))),
        ("div", _) if unsigned => wrap((s[0] / s[1]) as i64),
        ("div", _) => wrap(int(0).wrapping_div(int(1))),
        ("rem", _) => wrap(int(0).wrapping_rem(int(1))),
        ("min", _) => wrap(int(0).min(int(1))),
        ("max", _) => wrap(int(0).max(int(1))),
        ("neg", _) => wrap(int(0).wrapping_neg()),
        ("abs", _) => wrap(int(0).wrapping_abs()),
        ("shl", _) => wrap(int(0) << s[1]),
        ("shr", _) => wrap(int(0) >> s[1]),
        ("not", "pred") => (s[0] == 0) as u64,
        ("and", "pred") => s[0] & s[1],
        ("or", "pred") => s[0] | s[1],
        ("xor", "pred") => s[0] ^ s[1],
        ("and", _) => wrap(int(0) & int(1)),
        ("or", _) => wrap(int(0) | int(1)),
        ("xor", _) => wrap(int(0) ^ int(1)),
        ("not", _) => wrap(!int(0)),
        ("selp", _) => {
            if s[2] != 0 {
                s[0]
            } else {
                s[1]
            }
        }
        ("setp", _) => setp(parts[1], ty, s, int) as u64,
        // Two values rounded into one word, the first operand in the upper half.
        ("cvt", "f32") if parts[2] == "bf16x2" => {
            let half = |x: u64| cvt(&["cvt", "rn", "bf16", "f32"], x) & 0xffff;
            (half(s[0]) << 16) | half(s[1])
        }
        ("cvt", _) => cvt(parts, s[0]),
        _ => panic!("the emulator does not run `{}`", parts.join(".")),
    }
}

fn setp(cmp: &str, ty: &str, s: &[u64], int: impl Fn(usize) -> i64) -> bool {
    if ty == "f32" {
        let (a, b) = (f32_of(s[0]), f32_of(s[1]));
        return match cmp {
            "eq" => a == b,
            "neu" => a != b,
            "lt" => a < b,
            "le" => a <= b,
            "gt" => a > b,
            "ge" => a >= b,
            "nan" => a.is_nan() || b.is_nan(),
            _ => panic!("setp.{cmp}.f32"),
        };
    }
    let (a, b) = (int(0), int(1));
    match cmp {
        "eq" => a == b,
        "ne" => a != b,
        "lt" | "lo" => a < b,
        "le" | "ls" => a <= b,
        "gt" | "hi" => a > b,
        "ge" | "hs" => a >= b,
        _ => panic!("setp.{cmp}.{ty}"),
    }
}

/// `cvt[.round].to.from`.
fn cvt(parts: &[&str], x: u64) -> u64 {
    let (round, to, from) = match parts.len() {
        4 => (parts[1], parts[2], parts[3]),
        _ => ("", parts[1], parts[2]),
    };
    let float = match from {
        "f32" => f32_of(x) as f64,
        "f64" => f64_of(x),
        "bf16" => f32_of(x << 16) as f64,
        "s32" => x as u32 as i32 as f64,
        "u32" => x as u32 as f64,
        "s64" => x as i64 as f64,
        other => panic!("cvt from {other}"),
    };
    let rounded = match round {
        "rni" => float.round_ties_even(),
        "rzi" => float.trunc(),
        _ => float,
    };
    match (to, from) {
        ("f32", "s64") => of_f32(x as i64 as f32),
        ("f32", _) => of_f32(rounded as f32),
        ("f64", _) => rounded.to_bits(),
        ("bf16", _) => bf16_of(rounded as f32),
        // Integer to integer: the value, truncated to the destination's width.
        ("s32" | "u32", "s64" | "u32" | "s32") => x as u32 as u64,
        ("s64", "s32") => x as u32 as i32 as i64 as u64,
        ("s64", "u32") => x as u32 as u64,
        // Float to integer saturates, NaN becomes 0 (Rust's `as` does both).
        ("s32", _) => rounded as i32 as u32 as u64,
        ("s64", _) => rounded as i64 as u64,
        (to, from) => panic!("cvt to {to} from {from}"),
    }
}

/// Runs `program` over a grid of `blocks` blocks of `threads` threads, with the `.u64`
/// parameters `params` (by name).
pub fn launch(
    program: &Program,
    memory: &mut Memory,
    blocks: u64,
    threads: u64,
    params: &HashMap<String, u64>,
) {
    for block in 0..blocks {
        let mut shared = vec![0u8; program.shared_bytes as usize];
        let mut ts: Vec<Thread> = (0..threads)
            .map(|t| Thread::new(program.regs.len(), [t, threads, block, blocks, t % 32]))
            .collect();
        let mut stops: Vec<Stop> = vec![Stop::Warp; threads as usize];
        let mut waiting = vec![false; threads as usize];
        loop {
            for (i, t) in ts.iter_mut().enumerate() {
                if !t.done && !waiting[i] {
                    stops[i] = t.run(program, memory, &mut shared, params);
                    waiting[i] = !t.done;
                }
            }
            if ts.iter().all(|t| t.done) {
                break;
            }
            let mut progressed = false;
            // Warp collectives (every lane of a warp at the same instruction), then warpgroup
            // ones (every thread of 4 consecutive warps).
            for (size, stop) in [(32, Stop::Warp), (128, Stop::Warpgroup)] {
                for first in (0..threads as usize).step_by(size) {
                    let members: Vec<usize> =
                        (first..(first + size).min(threads as usize)).collect();
                    let ready = members
                        .iter()
                        .all(|&i| !ts[i].done && waiting[i] && stops[i] == stop);
                    if !ready {
                        continue;
                    }
                    let pc = ts[first].pc;
                    assert!(
                        members.iter().all(|&i| ts[i].pc == pc),
                        "threads {first}.. meet at different instructions for {stop:?}"
                    );
                    let inst = &program.insts[pc];
                    match stop {
                        Stop::Warpgroup => {
                            wgmma(inst, &mut ts, &members, (program, params), &shared)
                        }
                        _ => collective(inst, &mut ts, &members, (program, params), &shared),
                    }
                    for &i in &members {
                        ts[i].pc += 1;
                        waiting[i] = false;
                    }
                    progressed = true;
                }
            }
            // A block barrier: every live thread there.
            let live: Vec<usize> = (0..threads as usize).filter(|&i| !ts[i].done).collect();
            if !progressed && live.iter().all(|&i| waiting[i] && stops[i] == Stop::Block) {
                for &i in &live {
                    ts[i].pc += 1;
                    waiting[i] = false;
                }
                progressed = true;
            }
            assert!(progressed, "threads of block {block} deadlock");
        }
    }
}

/// A shuffle, warp barrier, `mma` or `ldmatrix`, executed by `lanes` together.
fn collective(
    inst: &Inst,
    ts: &mut [Thread],
    lanes: &[usize],
    (p, params): (&Program, &HashMap<String, u64>),
    shared: &[u8],
) {
    match inst.parts[0].as_str() {
        "bar" => return,
        "mma" => return mma(inst, ts, lanes),
        "ldmatrix" => return ldmatrix(inst, ts, lanes, (p, params), shared),
        _ => {}
    }
    let values: Vec<u64> = lanes
        .iter()
        .map(|&i| ts[i].value(&inst.srcs[0], p, params))
        .collect();
    let results: Vec<u64> = lanes
        .iter()
        .enumerate()
        .map(|(lane, &i)| {
            let b = ts[i].value(&inst.srcs[1], p, params) as usize;
            let from = match inst.parts[2].as_str() {
                "bfly" => lane ^ b,
                "idx" => b & 31,
                other => panic!("shfl.{other}"),
            };
            *values.get(from).unwrap_or(&values[lane])
        })
        .collect();
    for (&i, v) in lanes.iter().zip(results) {
        ts[i].write(inst.dst.as_ref().unwrap(), v);
    }
}

/// `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 d, [addr]` by the 32 lanes of a warp: lane
/// `l` names row `l % 8` of matrix `l / 8` (16-byte aligned), and word `i` of lane `l` receives
/// row `l / 4`, columns `2·(l % 4)` and the next, of matrix `i` (with `.trans`: column `l / 4`,
/// rows `2·(l % 4)` and the next), the lower column (row) in the low half.
fn ldmatrix(
    inst: &Inst,
    ts: &mut [Thread],
    lanes: &[usize],
    (p, params): (&Program, &HashMap<String, u64>),
    shared: &[u8],
) {
    let name = inst.parts.join(".");
    let trans = match name.as_str() {
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16" => false,
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" => true,
        other => panic!("unsupported {other}"),
    };
    assert_eq!(lanes.len(), 32, "ldmatrix needs a full warp");
    let Opnd::Addr(base, offset) = &inst.srcs[0] else {
        panic!("ldmatrix needs an address")
    };
    let rows: Vec<usize> = lanes
        .iter()
        .map(|&i| ts[i].value(base, p, params).wrapping_add(*offset as u64) as usize)
        .collect();
    for &at in &rows {
        assert!(
            at.is_multiple_of(16),
            "ldmatrix row at {at:#x} is not 16-byte aligned"
        );
    }
    let element = |m: usize, row: usize, col: usize| {
        let at = rows[8 * m + row] + 2 * col;
        u16::from_le_bytes([shared[at], shared[at + 1]]) as u64
    };
    let Some(Opnd::Vector(dsts)) = &inst.dst else {
        panic!("ldmatrix writes a vector")
    };
    for (lane, &i) in lanes.iter().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for (m, &r) in dsts.iter().enumerate() {
            let (lo, hi) = match trans {
                false => (element(m, g, 2 * t), element(m, g, 2 * t + 1)),
                true => (element(m, 2 * t, g), element(m, 2 * t + 1, g)),
            };
            ts[i].regs[r] = lo | hi << 16;
        }
    }
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c` by the 32 lanes of a warp:
/// `D = A·B + C` for a 16×16 `A`, a 16×8 `B` and 16×8 `C`, `D`, each lane holding its
/// fragments in the PTX ISA's layout, with `g = lane >> 2` and `t = lane % 4`:
/// - `a`: four `.b32` of two bf16 each, the lower column in the low half: `A[g][2t..]`,
///   `A[g+8][2t..]`, `A[g][2t+8..]`, `A[g+8][2t+8..]`;
/// - `b`: two `.b32`, the lower row in the low half: `B[2t..][g]`, `B[2t+8..][g]`;
/// - `c`, `d`: four `.f32`: `C[g][2t]`, `C[g][2t+1]`, `C[g+8][2t]`, `C[g+8][2t+1]`.
///
/// Each element of `D` is the f32 rounding of the sum, in f64, of its 16 products (exact: a
/// product of two bf16 has 16 significant bits) and its `C` element. The hardware adds in an
/// order and with intermediate roundings of its own, so it can differ in the last bits.
fn mma(inst: &Inst, ts: &mut [Thread], lanes: &[usize]) {
    assert_eq!(
        inst.parts.join("."),
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
    );
    assert_eq!(lanes.len(), 32, "mma needs a full warp");
    let regs = |o: &Opnd| match o {
        Opnd::Vector(regs) => regs.clone(),
        other => panic!("mma takes vectors, not {other:?}"),
    };
    let (d, a, b, c) = (
        regs(inst.dst.as_ref().unwrap()),
        regs(&inst.srcs[0]),
        regs(&inst.srcs[1]),
        regs(&inst.srcs[2]),
    );
    let bf16 = |bits: u64| f32_of((bits & 0xffff) << 16) as f64;
    let (mut am, mut bm, mut cm) = ([[0.0; 16]; 16], [[0.0; 8]; 16], [[0.0; 8]; 16]);
    for (lane, &i) in lanes.iter().enumerate() {
        let (g, t) = (lane >> 2, lane % 4);
        let regs = &ts[i].regs;
        for (q, &r) in a.iter().enumerate() {
            let (row, col) = (g + 8 * (q & 1), 2 * t + 8 * (q >> 1));
            am[row][col] = bf16(regs[r]);
            am[row][col + 1] = bf16(regs[r] >> 16);
        }
        for (q, &r) in b.iter().enumerate() {
            let k = 2 * t + 8 * q;
            bm[k][g] = bf16(regs[r]);
            bm[k + 1][g] = bf16(regs[r] >> 16);
        }
        for (q, &r) in c.iter().enumerate() {
            cm[g + 8 * (q >> 1)][2 * t + (q & 1)] = f32_of(regs[r]) as f64;
        }
    }
    for (lane, &i) in lanes.iter().enumerate() {
        let (g, t) = (lane >> 2, lane % 4);
        for (q, &r) in d.iter().enumerate() {
            let (row, col) = (g + 8 * (q >> 1), 2 * t + (q & 1));
            let sum: f64 = (0..16).map(|k| am[row][k] * bm[k][col]).sum::<f64>() + cm[row][col];
            ts[i].regs[r] = of_f32(sum as f32);
        }
    }
}

/// `wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 d, a, desc, scale-d, 1, 1, trans-b` by
/// the 128 threads of a warpgroup: `D = A·B (+ D where scale-d)` for a 64×16 `A` in registers
/// (warp `w` holding rows `16w..16w + 16` in `mma`'s A layout), a 16×N `B` in shared memory and
/// a 64×N `D` (warp `w`'s rows, n-tile `j` of 8 columns in words `4j..4j + 4` as `mma`'s
/// accumulators). The descriptor gives `B`'s start, its leading (`LBO`, bits 16–29) and stride
/// (`SBO`, bits 32–45) byte offsets, each stored `>> 4`, and its swizzle (bits 62–63), which must
/// be 128-byte (1): `B` lies in rows of 128 bytes, 8 rows to a 1024-byte atom, the 16-byte chunk
/// `c` of row `r` of an atom at chunk `c ^ r` — for the absolute shared address `a` of an
/// element in the unswizzled layout, at `a ^ (((a >> 7) & 7) << 4)`. Unswizzled, `B[k][n]` lies
/// at `start + 128·(n % 8) + SBO·(n / 8) + 2·(k % 8) + 16·(k / 8)` K-major (`trans-b` 0: a row
/// per `n`, `k` along it; `k < 64`), or at `start + 2·(n % 64) + LBO·(n / 64) + 128·(k % 8) +
/// SBO·(k / 8)` MN-major (`trans-b` 1: a row per `k`, 64 of `n` along it). Sums as [`mma`]
/// does.
fn wgmma(
    inst: &Inst,
    ts: &mut [Thread],
    members: &[usize],
    (p, params): (&Program, &HashMap<String, u64>),
    shared: &[u8],
) {
    let parts: Vec<&str> = inst.parts.iter().map(String::as_str).collect();
    let n: usize = match parts.as_slice() {
        ["wgmma", "mma_async", "sync", "aligned", shape, "f32", "bf16", "bf16"] => shape
            .strip_prefix("m64n")
            .and_then(|s| s.strip_suffix("k16"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unsupported wgmma shape {shape}")),
        _ => panic!("unsupported {}", inst.parts.join(".")),
    };
    let regs = |o: &Opnd| match o {
        Opnd::Vector(regs) => regs.clone(),
        other => panic!("wgmma takes vectors, not {other:?}"),
    };
    assert_eq!(members.len(), 128, "wgmma needs a whole warpgroup");
    let (d, a) = (regs(inst.dst.as_ref().unwrap()), regs(&inst.srcs[0]));
    assert_eq!(
        d.len(),
        n / 2,
        "m64n{n}k16 has {} accumulators per thread",
        n / 2
    );
    let uniform = |o: &Opnd| {
        let v = ts[members[0]].value(o, p, params);
        assert!(
            members.iter().all(|&i| ts[i].value(o, p, params) == v),
            "wgmma operand {o:?} differs across the warpgroup"
        );
        v
    };
    let desc = uniform(&inst.srcs[1]);
    let accumulate = uniform(&inst.srcs[2]) != 0;
    assert_eq!(
        (uniform(&inst.srcs[3]), uniform(&inst.srcs[4])),
        (1, 1),
        "scales other than 1"
    );
    let trans = uniform(&inst.srcs[5]) != 0;
    assert_eq!(
        desc >> 49,
        1 << 13,
        "not a 128-byte swizzle without offset: {desc:#x}"
    );
    let field = |shift: u32| (((desc >> shift) & 0x3fff) << 4) as usize;
    let (start, lbo, sbo) = (field(0), field(16), field(32));
    let b = |k: usize, col: usize| {
        let at = match trans {
            false => start + 128 * (col % 8) + sbo * (col / 8) + 2 * (k % 8) + 16 * (k / 8),
            true => start + 2 * (col % 64) + lbo * (col / 64) + 128 * (k % 8) + sbo * (k / 8),
        };
        let at = at ^ (((at >> 7) & 7) << 4);
        f32_of((u16::from_le_bytes([shared[at], shared[at + 1]]) as u64) << 16) as f64
    };
    let bm: Vec<Vec<f64>> = (0..16)
        .map(|k| (0..n).map(|col| b(k, col)).collect())
        .collect();
    let bf16 = |bits: u64| f32_of((bits & 0xffff) << 16) as f64;
    let mut am = vec![[0.0; 16]; 64];
    for (tt, &i) in members.iter().enumerate() {
        let (w, lane) = (tt / 32, tt % 32);
        let (g, t) = (lane >> 2, lane % 4);
        for (q, &r) in a.iter().enumerate() {
            let (row, col) = (16 * w + g + 8 * (q & 1), 2 * t + 8 * (q >> 1));
            am[row][col] = bf16(ts[i].regs[r]);
            am[row][col + 1] = bf16(ts[i].regs[r] >> 16);
        }
    }
    for (tt, &i) in members.iter().enumerate() {
        let (w, lane) = (tt / 32, tt % 32);
        let (g, t) = (lane >> 2, lane % 4);
        for (q, &r) in d.iter().enumerate() {
            let (row, col) = (
                16 * w + g + 8 * ((q >> 1) & 1),
                8 * (q >> 2) + 2 * t + (q & 1),
            );
            let onto = if accumulate {
                f32_of(ts[i].regs[r]) as f64
            } else {
                0.0
            };
            let sum: f64 = (0..16).map(|k| am[row][k] * bm[k][col]).sum::<f64>() + onto;
            ts[i].regs[r] = of_f32(sum as f32);
        }
    }
}
