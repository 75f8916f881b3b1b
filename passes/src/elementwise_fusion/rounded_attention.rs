//! Attention results rounded where they are stored: `cast(flash_attention(…)) : bf16`, where the
//! f32 result has no other reader and is no program output, becomes `flash_attention(…) : bf16`
//! (the op's typing rule allows a bf16 result: the f32 one rounded to nearest even, which is
//! what the cast computes). The `bf16` policy casts the attention output for the output
//! projection; folded, that cast is no kernel of its own and the f32 result never reaches
//! memory. Leaves alone an attention result read by anything else (a training program's
//! backward reads the f32 result).

use kiln_ir::{DType, Graph, IrError, NodeId, Op};
use std::collections::HashSet;

/// Folds every such cast into its attention; returns how many.
pub fn run(g: &mut Graph) -> Result<usize, IrError> {
    let outputs: HashSet<NodeId> = g.outputs().iter().map(|(_, id)| *id).collect();
    let mut folded = 0;
    for cast in g.order() {
        if !matches!(g.node(cast).op, Op::Cast) || g.ty(cast).dtype != DType::BF16 {
            continue;
        }
        let attention = g.operands(cast)[0];
        if !matches!(g.node(attention).op, Op::FlashAttention(_))
            || g.ty(attention).dtype != DType::F32
            || outputs.contains(&attention)
            || g.users(attention) != [cast]
        {
            continue;
        }
        let op = g.node(attention).op.clone();
        let operands = g.operands(attention);
        super::absorb(g, (cast, attention), op, &operands)?;
        folded += 1;
    }
    Ok(folded)
}
