//! Fused regions: several elementwise ops evaluated as one op, optionally feeding a reduction.
//!
//! A `fused` node's operands are the region's *leaves*, all of one shape (the region's
//! domain). Its steps are elementwise primitives (unary, binary, compare, `select`, `cast`)
//! over earlier values, numbered `$0…`: the leaves first, then each step's result in order.
//! The last step's value is the result ([`RegionKind::Map`]), or is reduced over `axes`
//! ([`RegionKind::Reduce`]), with the reduce op's rules. A region has at least one step.
//! A matmul epilogue ([`RegionKind::MatMul`], `fused_matmul %a, %b, %c…`) is the same over
//! the product `a·b` (value `$0`) and the operands after the first two (`$1…`), all of the
//! product's shape.
//!
//! The meaning of a region is exactly that of its primitives applied in order to whole
//! tensors (each step rounds to its type as the primitive would), so the interpreter evaluates
//! it step by step and a fusion pass is checkable against the unfused graph. Passes create
//! regions; frontends never do.
//!
//! Text form: `fused %a, %b { $2 = mul $0, $1; $3 = cast $2 to bf16 } : bf16[..]`, or
//! `fused_reduce_sum %a axes=[1] { $1 = mul $0, $0 } : f32[..]`.

use crate::dtype::DType;
use crate::infer::infer;
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::ty::TensorType;

/// What a region does with its last value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// The last value is the result.
    Map,
    /// The last value is reduced over `axes` (sorted, unique), which stay with size 1.
    Reduce { op: ReduceOp, axes: Vec<usize> },
    /// The first two operands' matmul is value `$0`; the last value is the result.
    MatMul,
}

impl RegionKind {
    /// How many values precede the steps, for a node of `operands` operands.
    pub fn value_count(&self, operands: usize) -> usize {
        match self {
            RegionKind::MatMul => operands.saturating_sub(1),
            _ => operands,
        }
    }
}

/// The elementwise primitive of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepOp {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    /// Conversion to the given element type.
    Cast(DType),
}

/// One step: `op` applied to the values numbered `args`, all earlier than the step itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    pub op: StepOp,
    pub args: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    pub kind: RegionKind,
    pub steps: Vec<Step>,
}

impl StepOp {
    /// The primitive op this step applies (its result type comes from [`Region::types`]).
    pub fn primitive(self) -> Op {
        match self {
            StepOp::Unary(u) => Op::Unary(u),
            StepOp::Binary(b) => Op::Binary(b),
            StepOp::Select => Op::Select,
            StepOp::Cast(_) => Op::Cast,
        }
    }

    /// The step form of an elementwise primitive of result type `dtype`; `None` for others.
    pub fn of(op: &Op, dtype: DType) -> Option<StepOp> {
        Some(match op {
            Op::Unary(u) => StepOp::Unary(*u),
            Op::Binary(b) => StepOp::Binary(*b),
            Op::Select => StepOp::Select,
            Op::Cast => StepOp::Cast(dtype),
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            StepOp::Unary(u) => u.name(),
            StepOp::Binary(b) => b.name(),
            StepOp::Select => "select",
            StepOp::Cast(_) => "cast",
        }
    }
}

impl Region {
    /// The op name in the text form.
    pub fn name(&self) -> &'static str {
        match &self.kind {
            RegionKind::Map => "fused",
            RegionKind::MatMul => "fused_matmul",
            RegionKind::Reduce { op, .. } => match op {
                ReduceOp::Sum => "fused_reduce_sum",
                ReduceOp::Max => "fused_reduce_max",
                ReduceOp::Mean => "fused_reduce_mean",
            },
        }
    }

    /// The kind of region a `fused…` op name stands for (a reduction needs its `axes`).
    pub fn kind_of_name(name: &str, axes: Option<Vec<usize>>) -> Result<RegionKind, String> {
        match name {
            "fused" => Ok(RegionKind::Map),
            "fused_matmul" => Ok(RegionKind::MatMul),
            _ => {
                let op = name
                    .strip_prefix("fused_")
                    .and_then(ReduceOp::from_name)
                    .ok_or_else(|| format!("`{name}` takes no `{{…}}` body"))?;
                let axes = axes.ok_or_else(|| format!("{name} needs `axes=`"))?;
                Ok(RegionKind::Reduce { op, axes })
            }
        }
    }

    /// The type of every value of the region, leaves first; an error names the broken rule.
    pub fn types(&self, operands: &[&TensorType]) -> Result<Vec<TensorType>, String> {
        let product;
        let mut leaves: Vec<&TensorType> = operands.to_vec();
        if self.kind == RegionKind::MatMul {
            if operands.len() < 2 {
                return Err("fused_matmul needs the matmul's two operands".into());
            }
            // A product of narrow operands is accumulated and held in f32.
            product = infer(&Op::MatMul, &operands[..2], None).map(|mut t| {
                if t.dtype.is_narrow() {
                    t.dtype = DType::F32;
                }
                t
            })?;
            leaves = std::iter::once(&product)
                .chain(operands[2..].iter().copied())
                .collect();
        }
        let domain = leaves
            .first()
            .ok_or("a fused region needs at least one operand")?;
        if let Some(other) = leaves.iter().find(|l| l.shape != domain.shape) {
            return Err(format!(
                "fused operands must share one shape: {domain} and {other}"
            ));
        }
        if self.steps.is_empty() {
            return Err("a fused region needs at least one step".into());
        }
        let mut types: Vec<TensorType> = leaves.iter().map(|&t| t.clone()).collect();
        for (i, step) in self.steps.iter().enumerate() {
            let n = types.len();
            let args = step
                .args
                .iter()
                .map(|&a| types.get(a))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("step ${n} reads a value defined after it"))?;
            let declared = match step.op {
                StepOp::Cast(dtype) => Some(TensorType::new(dtype, domain.shape.clone())),
                _ => None,
            };
            let ty = infer(&step.op.primitive(), &args, declared.as_ref())
                .map_err(|e| format!("step {i} (${n}): {e}"))?;
            types.push(ty);
        }
        Ok(types)
    }

    /// The result type for leaves of these types.
    pub fn infer(&self, leaves: &[&TensorType]) -> Result<TensorType, String> {
        let last = self.types(leaves)?.pop().expect("a region has steps");
        match &self.kind {
            RegionKind::Map | RegionKind::MatMul => Ok(last),
            RegionKind::Reduce { op, axes } => infer(
                &Op::Reduce {
                    op: *op,
                    axes: axes.clone(),
                },
                &[&last],
                None,
            ),
        }
    }

    /// The body in the text form: `{ $2 = mul $0, $1; $3 = cast $2 to bf16 }`.
    pub fn print_body(&self, leaves: usize) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let args: Vec<String> = step.args.iter().map(|a| format!("${a}")).collect();
                let to = match step.op {
                    StepOp::Cast(dtype) => format!(" to {dtype}"),
                    _ => String::new(),
                };
                format!(
                    "${} = {} {}{to}",
                    leaves + i,
                    step.op.name(),
                    args.join(", ")
                )
            })
            .collect();
        format!("{{ {} }}", steps.join("; "))
    }

    /// Parses the steps of a body printed by [`Region::print_body`] (with or without braces).
    pub fn parse_steps(body: &str, leaves: usize) -> Result<Vec<Step>, String> {
        let body = body.trim();
        let body = body
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .unwrap_or(body);
        body.split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, text)| parse_step(text, leaves + i))
            .collect()
    }
}

fn parse_step(text: &str, number: usize) -> Result<Step, String> {
    let (name, rhs) = text
        .split_once(" = ")
        .ok_or_else(|| format!("expected `$N = OP $A, …`, got `{text}`"))?;
    if name.trim() != format!("${number}") {
        return Err(format!("step `{}` should be `${number}`", name.trim()));
    }
    let (rhs, to) = match rhs.split_once(" to ") {
        Some((rhs, dtype)) => (rhs, Some(dtype.trim().parse::<DType>()?)),
        None => (rhs, None),
    };
    let (op_name, args) = rhs.trim().split_once(' ').unwrap_or((rhs.trim(), ""));
    let op = match (op_name, to) {
        ("cast", Some(dtype)) => StepOp::Cast(dtype),
        ("cast", None) => return Err("cast needs `to DTYPE`".into()),
        ("select", None) => StepOp::Select,
        (name, None) => UnaryOp::from_name(name)
            .map(StepOp::Unary)
            .or_else(|| BinaryOp::from_name(name).map(StepOp::Binary))
            .ok_or_else(|| format!("`{name}` is not an elementwise op"))?,
        (name, Some(_)) => return Err(format!("`to` only follows cast, not `{name}`")),
    };
    let args = args
        .split(',')
        .map(|a| {
            a.trim()
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("bad step operand `{}`", a.trim()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Step { op, args })
}
