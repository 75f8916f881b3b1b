//! The typed vocabulary of PTX the builder speaks: register types, state spaces, registers,
//! operands (registers and immediates), labels, special registers and comparisons.
//!
//! Invariant: every register belongs to exactly one type, and the register's name carries a
//! prefix of that type alone, so a kernel declares each type's registers as one `%x<N>` range.

use std::fmt;

/// A register (and instruction) type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ty {
    Pred,
    B16,
    /// Untyped 32 bits: pairs of bf16, as `mma` takes its fragments.
    B32,
    U32,
    S32,
    U64,
    S64,
    F32,
    F64,
}

impl Ty {
    /// Every type, in declaration order.
    pub const ALL: [Ty; 9] = [
        Ty::Pred,
        Ty::B16,
        Ty::B32,
        Ty::U32,
        Ty::S32,
        Ty::U64,
        Ty::S64,
        Ty::F32,
        Ty::F64,
    ];

    /// The type suffix of declarations and instructions (`pred`, `f32`, …).
    pub fn name(self) -> &'static str {
        match self {
            Ty::Pred => "pred",
            Ty::B16 => "b16",
            Ty::B32 => "b32",
            Ty::U32 => "u32",
            Ty::S32 => "s32",
            Ty::U64 => "u64",
            Ty::S64 => "s64",
            Ty::F32 => "f32",
            Ty::F64 => "f64",
        }
    }

    /// The register name prefix, unique to the type.
    pub fn prefix(self) -> &'static str {
        match self {
            Ty::Pred => "%p",
            Ty::B16 => "%h",
            Ty::B32 => "%b",
            Ty::U32 => "%r",
            Ty::S32 => "%ri",
            Ty::U64 => "%rd",
            Ty::S64 => "%sd",
            Ty::F32 => "%f",
            Ty::F64 => "%fd",
        }
    }

    /// The untyped bit-size name of the same width (`b32`, `b64`, …), for moves and shuffles.
    pub fn bits(self) -> &'static str {
        match self {
            Ty::Pred => "pred",
            Ty::B16 => "b16",
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => "b32",
            Ty::U64 | Ty::S64 | Ty::F64 => "b64",
        }
    }

    /// The type of each half of a 64- or 32-bit value, for packing and unpacking.
    pub fn half(self) -> Ty {
        match self {
            Ty::U64 | Ty::S64 | Ty::F64 => Ty::U32,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => Ty::B16,
            other => panic!("a .{} register has no halves", other.name()),
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F32 | Ty::F64)
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S32 | Ty::S64)
    }
}

/// A state space of memory operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Param,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Global => "global",
            Space::Shared => "shared",
            Space::Param => "param",
        }
    }
}

/// A virtual register of one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg {
    pub ty: Ty,
    pub(crate) n: u32,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.ty.prefix(), self.n)
    }
}

/// A source operand: a register or an immediate.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Reg(Reg),
    Int(i64),
    F32(f32),
    F64(f64),
    /// The address of a named variable (shared memory, a kernel parameter).
    Symbol(String),
}

impl From<Reg> for Operand {
    fn from(r: Reg) -> Operand {
        Operand::Reg(r)
    }
}

impl From<i64> for Operand {
    fn from(v: i64) -> Operand {
        Operand::Int(v)
    }
}

impl From<f32> for Operand {
    fn from(v: f32) -> Operand {
        Operand::F32(v)
    }
}

impl From<f64> for Operand {
    fn from(v: f64) -> Operand {
        Operand::F64(v)
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Reg(r) => write!(f, "{r}"),
            Operand::Int(v) => write!(f, "{v}"),
            // PTX spells float immediates by their bits, so no decimal rounding is involved.
            Operand::F32(v) => write!(f, "0f{:08X}", v.to_bits()),
            Operand::F64(v) => write!(f, "0d{:016X}", v.to_bits()),
            Operand::Symbol(s) => f.write_str(s),
        }
    }
}

/// A branch target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(pub(crate) u32);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$L{}", self.0)
    }
}

/// Special registers (all read as `u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// `%tid.x`: the thread's index in its block.
    Tid,
    /// `%ntid.x`: threads per block.
    Ntid,
    /// `%ctaid.x`: the block's index in the grid.
    Ctaid,
    /// `%nctaid.x`: blocks in the grid.
    Nctaid,
    /// `%laneid`: the thread's lane in its warp.
    Lane,
}

impl Special {
    pub fn name(self) -> &'static str {
        match self {
            Special::Tid => "%tid.x",
            Special::Ntid => "%ntid.x",
            Special::Ctaid => "%ctaid.x",
            Special::Nctaid => "%nctaid.x",
            Special::Lane => "%laneid",
        }
    }
}

/// Comparisons of `setp`. On floats, `Ne` is unordered (true when either side is NaN) and the
/// others are ordered (false with a NaN), as IEEE comparisons are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Either side is NaN (floats only).
    Nan,
}

impl Cmp {
    pub fn name(self, ty: Ty) -> &'static str {
        match (self, ty.is_float()) {
            (Cmp::Eq, _) => "eq",
            (Cmp::Ne, true) => "neu",
            (Cmp::Ne, false) => "ne",
            (Cmp::Lt, true) => "lt",
            (Cmp::Le, true) => "le",
            (Cmp::Gt, true) => "gt",
            (Cmp::Ge, true) => "ge",
            (Cmp::Lt, false) if !ty.is_signed() => "lo",
            (Cmp::Le, false) if !ty.is_signed() => "ls",
            (Cmp::Gt, false) if !ty.is_signed() => "hi",
            (Cmp::Ge, false) if !ty.is_signed() => "hs",
            (Cmp::Lt, false) => "lt",
            (Cmp::Le, false) => "le",
            (Cmp::Gt, false) => "gt",
            (Cmp::Ge, false) => "ge",
            (Cmp::Nan, _) => "nan",
        }
    }
}
