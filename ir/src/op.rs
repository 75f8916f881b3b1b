//! The closed set of operations.
//!
//! Frontends emit only the primitives below; structured ops (fused attention, fused regions, …)
//! are added to this enum by the passes that introduce them. Every op has exactly one result.
//! Ops listed as *typed* take their result type from the node (the graph stores it and the text
//! form prints it); for every other op the result type follows from the operands
//! (see `infer.rs`).
//!
//! | group | ops | operands |
//! | --- | --- | --- |
//! | sources | `input`, `weight`, `const`, `iota` (typed) | none |
//! | elementwise | unary, binary, compare, `select`, `cast` (typed) | same shapes (broadcast is explicit) |
//! | reduce | `reduce_sum`, `reduce_max`, `reduce_mean` | one; reduced axes are kept with size 1 |
//! | contraction | `matmul` (typed when it widens) | `[.., m, k] × [.., k, n]`, batch dims broadcast |
//! | layout | `reshape`, `broadcast` (typed), `permute`, `slice`, `concat` | |
//! | indexing | `gather`, `scatter`, `scatter_add` | data, integer indices (, updates) |
//! | structured | `fused`, `fused_reduce_*` (elementwise regions, see `region.rs`) | leaves of one shape |
//! | structured | `flash_attention` (see `attention.rs`) | queries, keys, values (, positions) |
//! | structured | `flash_attention_lse`, `flash_attention_grad_{q,k,v}` (its backward) | the forward's (, result, its cotangent, log-sum-exp) |
//! | derivative | `grad` | a scalar loss, the value it is differentiated by |
//! | derivative | `stop_gradient` | one; its value, through which no gradient flows |

use crate::attention::{Attention, AttentionInput};
use crate::dim::Dim;
use crate::region::Region;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// The name in the canonical text form.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            pub fn from_name(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|op| op.name() == s)
            }
        }
    };
}

named_enum!(
    /// Elementwise functions of one tensor; the result has the operand's type.
    UnaryOp {
        /// `-x` (numbers).
        Neg => "neg",
        /// `|x|` (numbers).
        Abs => "abs",
        /// `eˣ` (floats).
        Exp => "exp",
        /// natural logarithm (floats).
        Log => "log",
        /// `√x` (floats).
        Sqrt => "sqrt",
        /// `1/√x` (floats).
        Rsqrt => "rsqrt",
        /// `1/x` (floats).
        Recip => "recip",
        /// hyperbolic tangent (floats).
        Tanh => "tanh",
        /// Gauss error function (floats).
        Erf => "erf",
        /// `1/(1+e⁻ˣ)` (floats).
        Sigmoid => "sigmoid",
        /// sine (floats).
        Sin => "sin",
        /// cosine (floats).
        Cos => "cos",
        /// logical not (bool).
        Not => "not",
    }
);

impl UnaryOp {
    pub fn accepts(self, dtype: crate::DType) -> bool {
        match self {
            UnaryOp::Neg | UnaryOp::Abs => dtype != crate::DType::Bool,
            UnaryOp::Not => dtype == crate::DType::Bool,
            _ => dtype.is_float(),
        }
    }
}

named_enum!(
    /// Elementwise functions of two tensors of the same type.
    BinaryOp {
        /// `a + b`.
        Add => "add",
        /// `a - b`.
        Sub => "sub",
        /// `a · b`.
        Mul => "mul",
        /// `a / b` (integers: truncating).
        Div => "div",
        /// larger of the two (NaN if either is NaN).
        Max => "max",
        /// smaller of the two (NaN if either is NaN).
        Min => "min",
        /// `aᵇ` (floats).
        Pow => "pow",
        /// logical and (bool).
        And => "and",
        /// logical or (bool).
        Or => "or",
        /// `a == b` → bool.
        Eq => "eq",
        /// `a != b` → bool.
        Ne => "ne",
        /// `a < b` → bool.
        Lt => "lt",
        /// `a <= b` → bool.
        Le => "le",
        /// `a > b` → bool.
        Gt => "gt",
        /// `a >= b` → bool.
        Ge => "ge",
    }
);

impl BinaryOp {
    pub fn is_compare(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }

    pub fn accepts(self, dtype: crate::DType) -> bool {
        match self {
            BinaryOp::And | BinaryOp::Or => dtype == crate::DType::Bool,
            BinaryOp::Pow => dtype.is_float(),
            BinaryOp::Eq | BinaryOp::Ne => true,
            _ => dtype != crate::DType::Bool,
        }
    }
}

named_enum!(
    /// Reductions over a set of axes.
    ReduceOp {
        /// sum (f64 accumulation in the interpreter).
        Sum => "reduce_sum",
        /// maximum (NaN if any element is NaN; the type's least value over no elements).
        Max => "reduce_max",
        /// arithmetic mean (floats).
        Mean => "reduce_mean",
    }
);

named_enum!(
    /// How `scatter` combines updates with the data they land on.
    ScatterMode {
        /// the update replaces the element (`index_copy`).
        Replace => "scatter",
        /// the update is added to the element (`index_add`; the gradient of `gather`).
        Add => "scatter_add",
    }
);

/// A constant's values: one value repeated over the shape, or every element (row-major).
/// Equality and hashing compare bit patterns, so `NaN` literals are equal to themselves and
/// CSE may merge them.
#[derive(Clone, Debug)]
pub enum Literal {
    Splat(f64),
    Dense(Vec<f64>),
}

impl Literal {
    fn bits(&self) -> (bool, impl Iterator<Item = u64> + '_) {
        let (splat, values): (bool, &[f64]) = match self {
            Literal::Splat(v) => (true, std::slice::from_ref(v)),
            Literal::Dense(vs) => (false, vs),
        };
        (splat, values.iter().map(|v| v.to_bits()))
    }
}

impl PartialEq for Literal {
    fn eq(&self, other: &Literal) -> bool {
        let (a_splat, a) = self.bits();
        let (b_splat, b) = other.bits();
        a_splat == b_splat && a.eq(b)
    }
}

impl Eq for Literal {}

impl std::hash::Hash for Literal {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (splat, bits) = self.bits();
        splat.hash(state);
        bits.for_each(|b| b.hash(state));
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A runtime input of the program, bound by name (typed).
    Input {
        name: String,
    },
    /// A model parameter, bound by name from the weights (typed).
    Weight {
        name: String,
    },
    /// A constant tensor (typed; dense literals need a fixed shape).
    Const(Literal),
    /// The index along `axis` at every position (typed, integer or float).
    Iota {
        axis: usize,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `cond ? a : b` elementwise; `cond` is bool.
    Select,
    /// Conversion to the node's element type (typed; shape unchanged). Floats become integers
    /// truncated toward zero and saturated to the type's range (NaN becomes 0).
    Cast,
    /// Reduction over `axes` (sorted, unique); each reduced axis stays with size 1.
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
    },
    /// Batched matrix product `[.., m, k] × [.., k, n] → [.., m, n]`; batch dims broadcast.
    /// The result has the operands' type, or `f32` for `f16`/`bf16` operands that accumulate in
    /// f32 (declared on the node). Products are summed in at least f32 precision (the
    /// interpreter: f64) and rounded once to the result type.
    MatMul,
    /// Same elements, new shape (typed; row-major order unchanged).
    Reshape,
    /// Result axis `i` is operand axis `perm[i]`.
    Permute {
        perm: Vec<usize>,
    },
    /// Repeats size-1 (or missing leading) axes up to the node's shape (typed).
    Broadcast,
    /// Elements `start..end` along `axis`.
    Slice {
        axis: usize,
        start: Dim,
        end: Dim,
    },
    /// Joins the operands along `axis`.
    Concat {
        axis: usize,
    },
    /// `out[pre, idx, post] = data[pre, indices[idx], post]` along `axis`.
    Gather {
        axis: usize,
    },
    /// The inverse of `gather`: writes (or adds) `updates` into a copy of `data` at `indices`.
    Scatter {
        axis: usize,
        mode: ScatterMode,
    },
    /// Elementwise steps over the operands evaluated as one op, optionally reduced (see
    /// [`Region`]); introduced by fusion, never by frontends.
    Fused(Region),
    /// `softmax(scale·q·kᵀ + mask)·v` in one op, never holding the scores (introduced by the
    /// `attention-fusion` pass; semantics in `attention.rs`).
    FlashAttention(Attention),
    /// The log-sum-exp of each query's scaled scores over its visible keys (see `attention.rs`).
    FlashAttentionLse(Attention),
    /// The gradient of `flash_attention` by one operand, recomputed from the log-sum-exp (see
    /// `attention.rs`).
    FlashAttentionGrad {
        attention: Attention,
        wrt: AttentionInput,
    },
    /// `∂loss/∂x` for a rank-0 float `loss` (operand 0) and a float value `x` (operand 1); the
    /// result has `x`'s type. A training program states its gradients this way; the `autodiff`
    /// pass replaces every `grad` with the reverse-mode computation, so no backend sees one.
    Grad,
    /// Its operand's value, with no derivative: `autodiff` sends no cotangent through it (the
    /// GLM embedding-gradient shrink, frozen branches). Backends read it as the operand.
    StopGradient,
}

impl Op {
    /// The op's name in the canonical text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::Const(_) => "const",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Select => "select",
            Op::Cast => "cast",
            Op::Reduce { op, .. } => op.name(),
            Op::MatMul => "matmul",
            Op::Reshape => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather { .. } => "gather",
            Op::Scatter { mode, .. } => mode.name(),
            Op::Fused(region) => region.name(),
            Op::FlashAttention(_) => "flash_attention",
            Op::FlashAttentionLse(_) => "flash_attention_lse",
            Op::FlashAttentionGrad { wrt, .. } => wrt.grad_name(),
            Op::Grad => "grad",
            Op::StopGradient => "stop_gradient",
        }
    }

    /// Sources have no operands and are not computed from other values.
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Weight { .. } | Op::Const(_) | Op::Iota { .. }
        )
    }

    /// The number of operands, `None` for the variadic `concat` and fused regions.
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input { .. } | Op::Weight { .. } | Op::Const(_) | Op::Iota { .. } => 0,
            Op::Unary(_) | Op::Cast | Op::Reduce { .. } | Op::Reshape | Op::StopGradient => 1,
            Op::Permute { .. } | Op::Broadcast | Op::Slice { .. } => 1,
            Op::Binary(_) | Op::MatMul | Op::Gather { .. } | Op::Grad => 2,
            Op::Select | Op::Scatter { .. } => 3,
            Op::FlashAttention(a) | Op::FlashAttentionLse(a) => a.arity(),
            Op::FlashAttentionGrad { attention, .. } => attention.arity() + 3,
            Op::Concat { .. } | Op::Fused(_) => return None,
        })
    }
}
