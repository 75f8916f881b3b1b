//! The causal decoder (Llama family): embedding, pre-norm attention + gated-MLP layers, final
//! norm and the (tied or untied) head. `prefill` and `decode` differ only in their token count
//! and in carrying a cache in; `prefill` applies the head to the last position only, `forward`
//! to every position and returns no cache; the training programs continue from the logits of
//! every position (`train.rs`).

use super::attention::{rope_angles, self_attention, LayerCache, Positions};
use super::greedy::greedy_tokens;
use super::layers::{gated_mlp, linear, rms_norm};
use super::{BuildOptions, Program};
use crate::rope;
use crate::spec::{ModelSpec, Position};
use kiln_ir::{DType, Dim, Graph, IrError, TensorType};

pub fn build(spec: &ModelSpec, program: Program, opts: BuildOptions) -> Result<Graph, IrError> {
    let mut g = Graph::new(program.name());
    let batch = g.symbol("batch", opts.max_batch)?;
    let (seq, past) = match program {
        Program::Decode => (Dim::fixed(1), Some(g.symbol("past", opts.max_seq - 1)?)),
        _ => (g.symbol("seq", opts.max_seq)?, None),
    };
    let tokens_ty = TensorType::new(DType::I64, vec![batch.clone(), seq.clone()]);
    let input_ids = g.input("input_ids", tokens_ty.clone())?;
    let positions = g.input("position_ids", tokens_ty.clone())?;
    let padding = match program.is_training() {
        true => None,
        false => Some(g.input(
            "left_padding",
            TensorType::new(DType::I64, vec![batch.clone()]),
        )?),
    };
    let att = &spec.attention;
    let cache_ty = |len: Dim| {
        TensorType::new(
            DType::F32,
            vec![
                batch.clone(),
                Dim::fixed(att.kv_heads),
                len,
                Dim::fixed(att.head_dim),
            ],
        )
    };
    let mut past_caches = Vec::new();
    if let Some(past) = &past {
        for layer in 0..spec.num_layers {
            let key = g.input(&format!("past_key_{layer}"), cache_ty(past.clone()))?;
            let value = g.input(&format!("past_value_{layer}"), cache_ty(past.clone()))?;
            past_caches.push(LayerCache { key, value });
        }
    }

    let hidden = spec.hidden_size;
    let embed_ty = TensorType::fixed(DType::F32, &[spec.vocab_size, hidden]);
    let embed = g.weight("model.embed_tokens.weight", embed_ty)?;
    let mut x = g.gather(embed, input_ids, 0)?;
    let alpha = opts.loss.embedding_gradient_scale;
    if program.is_training() && alpha != 1.0 {
        // α·e + (1 − α)·stop_gradient(e): e's value, a gradient scaled by α.
        let frozen = g.push(kiln_ir::Op::StopGradient, &[x])?;
        let kept = g.binary_scalar(kiln_ir::BinaryOp::Mul, x, alpha)?;
        let rest = g.binary_scalar(kiln_ir::BinaryOp::Mul, frozen, 1.0 - alpha)?;
        x = g.add(kept, rest)?;
    }
    g.set_label(x, "embed");

    let Position::Rope(rope_spec) = &spec.position else {
        unreachable!("checked by check_supported")
    };
    let tables = rope::tables(rope_spec, att.head_dim, spec.max_positions);
    let angles = rope_angles(
        &mut g,
        positions,
        &tables.inv_freq,
        tables.attention_scaling,
    )?;

    let mut caches = Vec::new();
    let mut past_caches = past_caches.into_iter();
    for layer in 0..spec.num_layers {
        let prefix = format!("model.layers.{layer}");
        let normed = rms_norm(
            &mut g,
            x,
            &format!("{prefix}.input_layernorm"),
            spec.norm.eps,
        )?;
        let (attn, cache) = self_attention(
            &mut g,
            normed,
            &format!("{prefix}.self_attn"),
            hidden,
            att,
            &att.windows[layer],
            Positions {
                queries: positions,
                padding,
            },
            &angles,
            past_caches.next(),
        )?;
        x = g.add(x, attn)?;
        let normed = rms_norm(
            &mut g,
            x,
            &format!("{prefix}.post_attention_layernorm"),
            spec.norm.eps,
        )?;
        let mlp = gated_mlp(&mut g, normed, &format!("{prefix}.mlp"), hidden, &spec.ffn)?;
        x = g.add(x, mlp)?;
        g.set_label(x, format!("{prefix}.out"));
        caches.push(cache);
    }
    let x = match program {
        Program::Prefill => g.slice(x, 1, seq.minus(&Dim::fixed(1)), seq.clone())?,
        _ => x,
    };
    let x = rms_norm(&mut g, x, "model.norm", spec.norm.eps)?;
    let head = if spec.embeddings.tied {
        "model.embed_tokens"
    } else {
        "lm_head"
    };
    let logits = linear(&mut g, x, head, hidden, spec.vocab_size, false)?;
    if program.is_training() {
        super::train::append(&mut g, program, logits, tokens_ty, &opts.loss)?;
        return Ok(g);
    }
    g.output("logits", logits)?;
    if program == Program::Forward {
        return Ok(g);
    }
    let next_tokens = greedy_tokens(&mut g, logits)?;
    g.output("next_tokens", next_tokens)?;
    for (layer, cache) in caches.into_iter().enumerate() {
        g.output(&format!("key_{layer}"), cache.key)?;
        g.output(&format!("value_{layer}"), cache.value)?;
    }
    Ok(g)
}
