//! Graphviz DOT export, for looking at a graph (`kiln ir --format dot | dot -Tsvg`).
//!
//! Node names follow the canonical text form (`%N`, `%input`, `@weight`), so the picture and
//! the text dump can be read side by side.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::fmt::Write;

pub fn to_dot(g: &Graph) -> String {
    let mut out = String::new();
    writeln!(out, "digraph \"{}\" {{", escape(&g.name)).unwrap();
    writeln!(
        out,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    )
    .unwrap();
    for &id in g.inputs().iter().chain(g.weights()) {
        let (name, color) = match &g.node(id).op {
            Op::Input { name } => (format!("%{name}"), "lightblue"),
            Op::Weight { name } => (format!("@{name}"), "lightgrey"),
            _ => unreachable!("signature holds only inputs and weights"),
        };
        node(&mut out, id, &format!("{name}\n{}", g.ty(id)), color);
    }
    for (i, id) in g.order().into_iter().enumerate() {
        let n = g.node(id);
        let mut text = format!("%{i} = {}\n{}", n.op.name(), n.ty);
        if let Some(label) = &n.label {
            write!(text, "\n{label}").unwrap();
        }
        node(&mut out, id, &text, "white");
        for (slot, operand) in g.operands(id).into_iter().enumerate() {
            writeln!(
                out,
                "  n{} -> n{} [label=\"{slot}\"];",
                operand.index(),
                id.index()
            )
            .unwrap();
        }
    }
    for (name, id) in g.outputs() {
        writeln!(
            out,
            "  \"out_{0}\" [label=\"{0}\", shape=ellipse];",
            escape(name)
        )
        .unwrap();
        writeln!(out, "  n{} -> \"out_{}\";", id.index(), escape(name)).unwrap();
    }
    out.push_str("}\n");
    out
}

fn node(out: &mut String, id: NodeId, text: &str, color: &str) {
    writeln!(
        out,
        "  n{} [label=\"{}\", style=filled, fillcolor={color}];",
        id.index(),
        escape(text)
    )
    .unwrap();
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
