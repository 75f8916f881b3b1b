//! The graph: nodes (op + result type + optional label) connected by operand edges.
//!
//! Storage is a petgraph `StableGraph`; an edge runs from an operand to its user and carries the
//! operand's slot. A program's signature is its ordered inputs, its weights and its named
//! outputs. Node ids stay valid across removals, so passes can rewrite in place.
//!
//! The graph enforces on construction what it can cheaply (types are inferred and checked,
//! operands exist, names are unique); [`crate::verify`] checks everything, after any rewrite.

use crate::error::IrError;
use crate::infer::infer;
use crate::op::Op;
use crate::ty::TensorType;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeMap, HashSet};

pub type NodeId = NodeIndex;

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// A human hint (e.g. `layers.0.attn.q`) printed after the node; no meaning to passes.
    pub label: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    symbols: BTreeMap<String, usize>,
    g: StableDiGraph<Node, u32>,
    inputs: Vec<NodeId>,
    weights: Vec<NodeId>,
    outputs: Vec<(String, NodeId)>,
    remarks: Vec<String>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            ..Graph::default()
        }
    }

    /// Declares a symbolic dimension with its maximum and returns it as a [`crate::Dim`].
    pub fn symbol(&mut self, name: &str, max: usize) -> Result<crate::Dim, IrError> {
        match self.symbols.get(name) {
            Some(&m) if m != max => Err(IrError::new(format!(
                "symbol `{name}` declared twice with maxima {m} and {max}"
            ))),
            _ => {
                self.symbols.insert(name.to_string(), max);
                Ok(crate::Dim::sym(name))
            }
        }
    }

    pub fn symbols(&self) -> &BTreeMap<String, usize> {
        &self.symbols
    }

    pub fn input(&mut self, name: &str, ty: TensorType) -> Result<NodeId, IrError> {
        check_name("input", name, false)?;
        if self.find_source(&self.inputs, name).is_some() {
            return Err(IrError::new(format!("input `{name}` declared twice")));
        }
        let id = self.push_typed(Op::Input { name: name.into() }, &[], ty)?;
        self.inputs.push(id);
        Ok(id)
    }

    /// The weight of this name, declared on first use; a second use must agree on the type.
    pub fn weight(&mut self, name: &str, ty: TensorType) -> Result<NodeId, IrError> {
        check_name("weight", name, true)?;
        if let Some(id) = self.find_source(&self.weights, name) {
            if self.g[id].ty != ty {
                return Err(IrError::new(format!(
                    "weight `{name}` used as {ty} and as {}",
                    self.g[id].ty
                )));
            }
            return Ok(id);
        }
        let id = self.push_typed(Op::Weight { name: name.into() }, &[], ty)?;
        self.weights.push(id);
        Ok(id)
    }

    fn find_source(&self, list: &[NodeId], name: &str) -> Option<NodeId> {
        list.iter().copied().find(|&id| match &self.g[id].op {
            Op::Input { name: n } | Op::Weight { name: n } => n == name,
            _ => false,
        })
    }

    /// Adds an op whose result type follows from its operands.
    pub fn push(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, IrError> {
        let types = self.operand_types(operands)?;
        let ty = infer(&op, &types, None).map_err(IrError::new)?;
        self.insert(op, operands, ty)
    }

    /// Adds an op with a declared result type (required for typed ops, checked for the rest).
    pub fn push_typed(
        &mut self,
        op: Op,
        operands: &[NodeId],
        ty: TensorType,
    ) -> Result<NodeId, IrError> {
        let types = self.operand_types(operands)?;
        let inferred = infer(&op, &types, Some(&ty)).map_err(IrError::new)?;
        if inferred != ty {
            return Err(IrError::new(format!(
                "{} produces {inferred}, declared {ty}",
                op.name()
            )));
        }
        self.insert(op, operands, ty)
    }

    fn operand_types(&self, operands: &[NodeId]) -> Result<Vec<&TensorType>, IrError> {
        operands
            .iter()
            .map(|&id| {
                self.g
                    .node_weight(id)
                    .map(|n| &n.ty)
                    .ok_or_else(|| IrError::new(format!("operand {} does not exist", id.index())))
            })
            .collect()
    }

    fn insert(&mut self, op: Op, operands: &[NodeId], ty: TensorType) -> Result<NodeId, IrError> {
        for sym in ty.shape.iter().flat_map(|d| d.symbols()) {
            if !self.symbols.contains_key(sym) {
                return Err(IrError::new(format!("symbol `{sym}` is not declared")));
            }
        }
        let id = self.g.add_node(Node {
            op,
            ty,
            label: None,
        });
        for (slot, &operand) in operands.iter().enumerate() {
            self.g.add_edge(operand, id, slot as u32);
        }
        Ok(id)
    }

    pub fn set_label(&mut self, id: NodeId, label: impl Into<String>) {
        self.g[id].label = Some(label.into());
    }

    pub fn output(&mut self, name: &str, id: NodeId) -> Result<(), IrError> {
        check_name("output", name, false)?;
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Err(IrError::new(format!("output `{name}` declared twice")));
        }
        self.outputs.push((name.to_string(), id));
        Ok(())
    }

    pub fn remark(&mut self, text: impl Into<String>) {
        self.remarks.push(text.into());
    }

    pub fn remarks(&self) -> &[String] {
        &self.remarks
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.g[id].ty
    }

    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    pub fn weights(&self) -> &[NodeId] {
        &self.weights
    }

    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    /// Operands in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, src)| src).collect()
    }

    /// Operand slots as stored, for the verifier.
    pub(crate) fn operand_slots(&self, id: NodeId) -> Vec<u32> {
        let mut slots: Vec<u32> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| *e.weight())
            .collect();
        slots.sort_unstable();
        slots
    }

    /// Distinct users, in id order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Makes every user of `old` (and every output naming it) use `new` instead.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let edges: Vec<_> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, target, slot) in edges {
            self.g.remove_edge(edge);
            self.g.add_edge(new, target, slot);
        }
        for (_, out) in &mut self.outputs {
            if *out == old {
                *out = new;
            }
        }
    }

    /// Makes `user` read `new` in every operand slot where it reads `old`.
    pub fn replace_operand_uses(&mut self, user: NodeId, old: NodeId, new: NodeId) {
        let edges: Vec<_> = self
            .g
            .edges_connecting(old, user)
            .map(|e| (e.id(), *e.weight()))
            .collect();
        for (edge, slot) in edges {
            self.g.remove_edge(edge);
            self.g.add_edge(new, user, slot);
        }
    }

    /// Stores weight `id` as `dtype` from now on: the weight node takes the new element type and
    /// every former user (and output) reads `cast(weight)` back to the old type instead, so the
    /// graph stays well typed. Returns the cast (the weight itself when the type is unchanged).
    pub fn retype_weight(&mut self, id: NodeId, dtype: crate::DType) -> Result<NodeId, IrError> {
        let old = self.g[id].ty.clone();
        if !self.weights.contains(&id) {
            return Err(IrError::new(format!("node {} is not a weight", id.index())));
        }
        if old.dtype == dtype {
            return Ok(id);
        }
        let users: Vec<_> = self
            .g
            .edges_directed(id, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        self.g[id].ty = old.with_dtype(dtype);
        let cast = self.push_typed(Op::Cast, &[id], old)?;
        for (edge, target, slot) in users {
            self.g.remove_edge(edge);
            self.g.add_edge(cast, target, slot);
        }
        for (_, out) in &mut self.outputs {
            if *out == id {
                *out = cast;
            }
        }
        Ok(cast)
    }

    /// Removes a node that nothing uses any more. Signature nodes (inputs, weights) stay.
    pub fn remove(&mut self, id: NodeId) {
        debug_assert!(
            self.users(id).is_empty(),
            "removing a node that is still used"
        );
        if !self.inputs.contains(&id) && !self.weights.contains(&id) {
            self.g.remove_node(id);
        }
    }

    /// The canonical order of computed nodes: a post-order walk from the outputs (operands in
    /// slot order), then any node no output reaches, in id order. Inputs and weights are not
    /// part of it. The order depends only on the graph's structure and its outputs' order.
    pub fn order(&self) -> Vec<NodeId> {
        let mut seen: HashSet<NodeId> = self.inputs.iter().chain(&self.weights).copied().collect();
        let mut order = Vec::new();
        let roots: Vec<NodeId> = self
            .outputs
            .iter()
            .map(|(_, id)| *id)
            .chain(self.g.node_indices())
            .collect();
        for root in roots {
            if seen.contains(&root) {
                continue;
            }
            // Iterative post-order: (node, operands already pushed?)
            let mut stack = vec![(root, false)];
            while let Some((id, expanded)) = stack.pop() {
                if expanded {
                    order.push(id);
                    continue;
                }
                if !seen.insert(id) {
                    continue;
                }
                stack.push((id, true));
                for operand in self.operands(id).into_iter().rev() {
                    if !seen.contains(&operand) {
                        stack.push((operand, false));
                    }
                }
            }
        }
        order
    }

    pub(crate) fn petgraph(&self) -> &StableDiGraph<Node, u32> {
        &self.g
    }
}

/// Names of inputs and outputs are `[A-Za-z_][A-Za-z0-9_.]*`; weight names may also start with a
/// digit and contain `-` (GGUF tensor names do). This keeps them unambiguous in the text form.
fn check_name(kind: &str, name: &str, weight: bool) -> Result<(), IrError> {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || (weight && c == '-');
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (weight && ok_char(c)));
    if ok_first && name.chars().all(ok_char) {
        Ok(())
    } else {
        Err(IrError::new(format!("invalid {kind} name `{name}`")))
    }
}
