//! Parsing the canonical text form back into a [`Graph`] (grammar in the parent module).
//!
//! Every node goes through the graph's typed constructors, so a parsed graph has been type
//! checked line by line; errors name the line.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Literal, Op, ReduceOp, ScatterMode, UnaryOp};
use crate::region::Region;
use crate::ty::TensorType;
use std::collections::HashMap;

pub fn parse(text: &str) -> Result<Graph, IrError> {
    let mut parser = Parser::default();
    for (i, line) in text.lines().enumerate() {
        parser
            .line(line.trim())
            .map_err(|e| IrError::new(format!("line {}: {e}", i + 1)))?;
    }
    parser
        .graph
        .ok_or_else(|| IrError::new("no `graph NAME` line"))
}

#[derive(Default)]
struct Parser {
    graph: Option<Graph>,
    values: HashMap<String, NodeId>,
}

impl Parser {
    fn line(&mut self, line: &str) -> Result<(), String> {
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
        if keyword == "graph" {
            if self.graph.is_some() {
                return Err("a second `graph` line".into());
            }
            self.graph = Some(Graph::new(rest.trim()));
            return Ok(());
        }
        let g = self.graph.as_mut().ok_or("expected `graph NAME` first")?;
        match keyword {
            "sym" => {
                let (name, max) = rest.split_once("<=").ok_or("expected `sym NAME <= MAX`")?;
                let max = max
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad maximum `{}`", max.trim()))?;
                g.symbol(name.trim(), max).map_err(|e| e.0)?;
            }
            "input" | "weight" => {
                let (name, ty) = rest.split_once(" : ").ok_or("expected `NAME : TYPE`")?;
                let ty = parse_type(ty)?;
                let (sigil, bare) = if keyword == "input" {
                    ('%', "input")
                } else {
                    ('@', "weight")
                };
                let stripped = name
                    .trim()
                    .strip_prefix(sigil)
                    .ok_or_else(|| format!("{bare} names start with `{sigil}`"))?;
                let id = if keyword == "input" {
                    g.input(stripped, ty)
                } else {
                    g.weight(stripped, ty)
                }
                .map_err(|e| e.0)?;
                self.values.insert(name.trim().to_string(), id);
            }
            "output" => {
                let (name, value) = rest
                    .split_once(" = ")
                    .ok_or("expected `output NAME = VALUE`")?;
                let id = lookup(&self.values, value.trim())?;
                g.output(name.trim(), id).map_err(|e| e.0)?;
            }
            "remark" => g.remark(rest),
            _ if keyword.starts_with('%') => {
                let (name, id) = node_line(g, &self.values, line)?;
                if self.values.insert(name.clone(), id).is_some() {
                    return Err(format!("{name} defined twice"));
                }
            }
            _ => return Err(format!("unknown line kind `{keyword}`")),
        }
        Ok(())
    }
}

fn lookup(values: &HashMap<String, NodeId>, name: &str) -> Result<NodeId, String> {
    values
        .get(name)
        .copied()
        .ok_or_else(|| format!("`{name}` is not defined above"))
}

fn node_line(
    g: &mut Graph,
    values: &HashMap<String, NodeId>,
    line: &str,
) -> Result<(String, NodeId), String> {
    let (body, label) = match line.split_once(" // ") {
        Some((body, label)) => (body.trim_end(), Some(label.trim())),
        None => (line, None),
    };
    let (name, rhs) = body
        .split_once(" = ")
        .ok_or("expected `%N = OP ... : TYPE`")?;
    let (rhs, ty) = rhs.rsplit_once(" : ").ok_or("missing ` : TYPE`")?;
    let ty = parse_type(ty)?;
    let (rhs, body) = match rhs.split_once('{') {
        Some((head, body)) => (head, Some(body.strip_suffix('}').ok_or("unclosed `{`")?)),
        None => (rhs, None),
    };
    let mut tokens = rhs.split_whitespace();
    let op_name = tokens.next().ok_or("missing op name")?;
    let mut operands = Vec::new();
    let mut attrs: HashMap<&str, &str> = HashMap::new();
    let mut literal = None;
    for token in tokens {
        let token = token.trim_end_matches(',');
        if token.starts_with('%') || token.starts_with('@') {
            operands.push(lookup(values, token)?);
        } else if let Some((key, value)) = token.split_once('=') {
            attrs.insert(key, value);
        } else if op_name == "const" && literal.is_none() {
            literal = Some(parse_literal(token)?);
        } else {
            return Err(format!("unexpected `{token}`"));
        }
    }
    let op = match body {
        Some(body) => {
            let axes = attrs.get("axes").map(|a| parse_list(a)).transpose()?;
            let kind = Region::kind_of_name(op_name, axes)?;
            let values = kind.value_count(operands.len());
            Op::Fused(Region {
                steps: Region::parse_steps(body, values)?,
                kind,
            })
        }
        None => build_op(op_name, &attrs, literal)?,
    };
    let id = g.push_typed(op, &operands, ty).map_err(|e| e.0)?;
    if let Some(label) = label {
        g.set_label(id, label);
    }
    Ok((name.trim().to_string(), id))
}

fn build_op(
    name: &str,
    attrs: &HashMap<&str, &str>,
    literal: Option<Literal>,
) -> Result<Op, String> {
    let attr = |key: &str| {
        attrs
            .get(key)
            .copied()
            .ok_or_else(|| format!("{name} needs `{key}=`"))
    };
    let axis =
        || -> Result<usize, String> { attr("axis")?.parse().map_err(|_| "bad axis".to_string()) };
    if let Some(u) = UnaryOp::from_name(name) {
        return Ok(Op::Unary(u));
    }
    if let Some(b) = BinaryOp::from_name(name) {
        return Ok(Op::Binary(b));
    }
    if let Some(op) = ReduceOp::from_name(name) {
        return Ok(Op::Reduce {
            op,
            axes: parse_list(attr("axes")?)?,
        });
    }
    if let Some(mode) = ScatterMode::from_name(name) {
        return Ok(Op::Scatter {
            axis: axis()?,
            mode,
        });
    }
    Ok(match name {
        "const" => Op::Const(literal.ok_or("const needs a value")?),
        "iota" => Op::Iota { axis: axis()? },
        "select" => Op::Select,
        "cast" => Op::Cast,
        "matmul" => Op::MatMul,
        "reshape" => Op::Reshape,
        "broadcast" => Op::Broadcast,
        "permute" => Op::Permute {
            perm: parse_list(attr("perm")?)?,
        },
        "slice" => Op::Slice {
            axis: axis()?,
            start: parse_dim(attr("start")?)?,
            end: parse_dim(attr("end")?)?,
        },
        "concat" => Op::Concat { axis: axis()? },
        "gather" => Op::Gather { axis: axis()? },
        "flash_attention" => Op::FlashAttention(crate::Attention::from_attributes(attrs)?),
        "flash_attention_lse" => Op::FlashAttentionLse(crate::Attention::from_attributes(attrs)?),
        "grad" => Op::Grad,
        "stop_gradient" => Op::StopGradient,
        _ if name.starts_with("flash_attention_grad_") => {
            let wrt = crate::attention::AttentionInput::ALL
                .into_iter()
                .find(|w| w.grad_name() == name)
                .ok_or_else(|| format!("unknown op `{name}`"))?;
            Op::FlashAttentionGrad {
                attention: crate::Attention::from_attributes(attrs)?,
                wrt,
            }
        }
        _ => return Err(format!("unknown op `{name}`")),
    })
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("expected a `[..]` list, got `{s}`"))?;
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("bad list item `{x}`")))
        .collect()
}

fn parse_literal(s: &str) -> Result<Literal, String> {
    let number = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|_| format!("bad number `{x}`"))
    };
    match s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some("") => Ok(Literal::Dense(Vec::new())),
        Some(inner) => Ok(Literal::Dense(
            inner.split(',').map(number).collect::<Result<_, _>>()?,
        )),
        None => Ok(Literal::Splat(number(s)?)),
    }
}

/// `f32[batch, seq, 64]`
pub(crate) fn parse_type(s: &str) -> Result<TensorType, String> {
    let s = s.trim();
    let (dtype, dims) = s.split_once('[').ok_or_else(|| format!("bad type `{s}`"))?;
    let dims = dims
        .strip_suffix(']')
        .ok_or_else(|| format!("bad type `{s}`"))?;
    let dtype: DType = dtype.parse()?;
    let shape = if dims.trim().is_empty() {
        Vec::new()
    } else {
        dims.split(',').map(parse_dim).collect::<Result<_, _>>()?
    };
    Ok(TensorType::new(dtype, shape))
}

/// An affine dimension: `64`, `seq`, `past+1`, `2*seq-3`.
pub(crate) fn parse_dim(s: &str) -> Result<Dim, String> {
    let s = s.trim();
    let bad = || format!("bad dimension `{s}`");
    let mut terms = Vec::new();
    let mut constant = 0i64;
    let mut rest = s;
    while !rest.is_empty() {
        let (sign, body) = match rest.as_bytes()[0] {
            b'-' => (-1, &rest[1..]),
            b'+' => (1, &rest[1..]),
            _ if rest.len() == s.len() => (1, rest),
            _ => return Err(bad()),
        };
        let end = body.find(['+', '-']).unwrap_or(body.len());
        let term = &body[..end];
        rest = &body[end..];
        let (k, name) = match term.split_once('*') {
            Some((k, name)) => (k.parse::<i64>().map_err(|_| bad())?, Some(name)),
            None if term.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                constant += sign * term.parse::<i64>().map_err(|_| bad())?;
                continue;
            }
            None => (1, Some(term)),
        };
        let name = name.filter(|n| is_identifier(n)).ok_or_else(bad)?;
        terms.push((name.to_string(), sign * k));
    }
    Ok(Dim::affine(terms, constant))
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
