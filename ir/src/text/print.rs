//! Printing a graph in the canonical text form (grammar in the parent module).

use crate::graph::{Graph, NodeId};
use crate::op::{Literal, Op};
use crate::region::{Region, RegionKind};
use std::collections::HashMap;
use std::fmt::Write;

pub fn print(g: &Graph) -> String {
    let mut out = String::new();
    let mut names: HashMap<NodeId, String> = HashMap::new();
    writeln!(out, "graph {}", g.name).unwrap();
    for (name, max) in g.symbols() {
        writeln!(out, "sym {name} <= {max}").unwrap();
    }
    for &id in g.inputs().iter().chain(g.weights()) {
        let node = g.node(id);
        let name = match &node.op {
            Op::Input { name } => format!("%{name}"),
            Op::Weight { name } => format!("@{name}"),
            _ => unreachable!("signature holds only inputs and weights"),
        };
        writeln!(out, "{} {name} : {}", node.op.name(), node.ty).unwrap();
        names.insert(id, name);
    }
    for (i, id) in g.order().into_iter().enumerate() {
        let node = g.node(id);
        let name = format!("%{i}");
        write!(out, "{name} = {}", node.op.name()).unwrap();
        let operands: Vec<&str> = g.operands(id).iter().map(|o| names[o].as_str()).collect();
        if let Op::Const(lit) = &node.op {
            write!(out, " {}", literal(lit)).unwrap();
        }
        if !operands.is_empty() {
            write!(out, " {}", operands.join(", ")).unwrap();
        }
        for (key, value) in attributes(&node.op) {
            write!(out, " {key}={value}").unwrap();
        }
        if let Op::Fused(region) = &node.op {
            let values = region.kind.value_count(operands.len());
            write!(out, " {}", region.print_body(values)).unwrap();
        }
        write!(out, " : {}", node.ty).unwrap();
        if let Some(label) = &node.label {
            write!(out, "  // {label}").unwrap();
        }
        out.push('\n');
        names.insert(id, name);
    }
    for (name, id) in g.outputs() {
        writeln!(out, "output {name} = {}", names[id]).unwrap();
    }
    for remark in g.remarks() {
        writeln!(out, "remark {remark}").unwrap();
    }
    out
}

fn literal(lit: &Literal) -> String {
    match lit {
        Literal::Splat(v) => format!("{v:?}"),
        Literal::Dense(vs) => {
            let items: Vec<String> = vs.iter().map(|v| format!("{v:?}")).collect();
            format!("[{}]", items.join(","))
        }
    }
}

fn list(xs: &[usize]) -> String {
    let items: Vec<String> = xs.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(","))
}

/// The op's parameters that the result type does not already carry.
pub(super) fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Iota { axis }
        | Op::Concat { axis }
        | Op::Gather { axis }
        | Op::Scatter { axis, .. } => {
            vec![("axis", axis.to_string())]
        }
        Op::Reduce { axes, .. }
        | Op::Fused(Region {
            kind: RegionKind::Reduce { axes, .. },
            ..
        }) => vec![("axes", list(axes))],
        Op::Permute { perm } => vec![("perm", list(perm))],
        Op::Slice { axis, start, end } => vec![
            ("axis", axis.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
        ],
        Op::FlashAttention(attention)
        | Op::FlashAttentionLse(attention)
        | Op::FlashAttentionGrad { attention, .. } => attention.attributes(),
        _ => Vec::new(),
    }
}
