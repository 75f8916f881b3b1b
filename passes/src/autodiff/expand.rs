//! Expands a fused region back into the primitives it stands for: the matmul of a
//! `fused_matmul`, each step in order with the type the region gives it, and the reduction of a
//! `fused_reduce_*`. The result computes exactly what the region does (that is the region's
//! definition), so autodiff can differentiate primitives only.

use kiln_ir::{Graph, IrError, NodeId, Op, RegionKind};

/// Replaces fused node `id` by its primitives.
pub fn expand(g: &mut Graph, id: NodeId) -> Result<(), IrError> {
    let Op::Fused(region) = g.node(id).op.clone() else {
        return Ok(());
    };
    let operands = g.operands(id);
    let operand_types: Vec<_> = operands.iter().map(|&o| g.ty(o).clone()).collect();
    let types = region
        .types(&operand_types.iter().collect::<Vec<_>>())
        .map_err(IrError::new)?;
    let mut values = match region.kind {
        RegionKind::MatMul => {
            let product = g.push_typed(Op::MatMul, &operands[..2], types[0].clone())?;
            std::iter::once(product)
                .chain(operands[2..].iter().copied())
                .collect()
        }
        _ => operands.clone(),
    };
    let first_step = values.len();
    for (step, ty) in region.steps.iter().zip(&types[first_step..]) {
        let args: Vec<NodeId> = step.args.iter().map(|&a| values[a]).collect();
        values.push(g.push_typed(step.op.primitive(), &args, ty.clone())?);
    }
    let mut result = *values.last().expect("a region has steps");
    if let RegionKind::Reduce { op, axes } = &region.kind {
        result = g.reduce(*op, result, axes)?;
    }
    if let Some(label) = g.node(id).label.clone() {
        g.set_label(result, label);
    }
    g.replace_uses(id, result);
    g.remove(id);
    Ok(())
}
