//! Reader of Hugging Face `config.json` files for the Llama family (`llama`, `mistral`,
//! `qwen2`), accepting both the transformers v4 field names (`rope_theta`, `rope_scaling`) and
//! the v5 ones (`rope_parameters`).
//!
//! Defaults are those of the transformers config classes, so a config that omits a field means
//! what it means to transformers. Values that no model could have (zero sizes, heads that do not
//! divide) are errors naming the field.

use crate::error::FrontendError;
use crate::json::Fields;
use crate::spec::*;

pub const FAMILIES: &[&str] = &["llama", "mistral", "qwen2"];

/// Reads a config from its JSON text; `file` names it in errors.
pub fn read_config(text: &str, file: &str) -> Result<ModelSpec, FrontendError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        FrontendError::new(
            file,
            None,
            format!(
                "not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let f = Fields::new(file, &value)?;
    let family = f.opt_str("model_type")?.ok_or_else(|| {
        f.error(
            "model_type",
            format!("missing (expected one of {})", FAMILIES.join(", ")),
        )
    })?;
    if !FAMILIES.contains(&family) {
        return Err(f.error(
            "model_type",
            format!(
                "unknown model type `{family}` (expected one of {})",
                FAMILIES.join(", ")
            ),
        ));
    }
    let hidden_size = f.positive("hidden_size")?;
    let num_layers = f.positive("num_hidden_layers")?;
    let heads = f.positive("num_attention_heads")?;
    let kv_heads = match f.opt_usize("num_key_value_heads")? {
        Some(0) => {
            return Err(f.error(
                "num_key_value_heads",
                "expected a positive integer, found 0",
            ))
        }
        Some(n) => n,
        None => heads,
    };
    if heads % kv_heads != 0 {
        return Err(f.error(
            "num_key_value_heads",
            format!("{kv_heads} key/value heads do not divide num_attention_heads = {heads}"),
        ));
    }
    let head_dim = match f.opt_usize("head_dim")? {
        Some(0) => return Err(f.error("head_dim", "expected a positive integer, found 0")),
        Some(d) => d,
        None if hidden_size % heads != 0 => {
            return Err(f.error(
                "hidden_size",
                format!("{hidden_size} is not divisible by num_attention_heads = {heads} (and no head_dim is given)"),
            ))
        }
        None => hidden_size / heads,
    };
    let max_positions = f.positive("max_position_embeddings")?;
    let qkv_bias = match family {
        "qwen2" => true,
        _ => f.bool_or("attention_bias", false)?,
    };
    let out_bias = family == "llama" && qkv_bias;
    Ok(ModelSpec {
        family: family.to_string(),
        layout: Layout::CausalDecoder,
        vocab_size: f.positive("vocab_size")?,
        hidden_size,
        num_layers,
        max_positions,
        mixer: Mixer::Attention,
        mlp: Mlp::Dense,
        residual: Residual::Sequential,
        norm: Norm {
            kind: NormKind::RmsNorm,
            placement: NormPlacement::Pre,
            eps: f.f64_or("rms_norm_eps", 1e-6)?,
        },
        ffn: Ffn {
            intermediate_size: f.positive("intermediate_size")?,
            activation: activation(&f)?,
            gated: true,
            bias: family == "llama" && f.bool_or("mlp_bias", false)?,
        },
        position: Position::Rope(rope(&f, family, head_dim)?),
        attention: Attention {
            heads,
            kv_heads,
            head_dim,
            windows: windows(&f, family, num_layers)?,
            qkv_bias,
            out_bias,
            logit_softcap: None,
        },
        embeddings: Embeddings {
            tied: f.bool_or("tie_word_embeddings", false)?,
            scale: None,
        },
        tokens: special_tokens(&f)?,
    })
}

/// `bos_token_id` (an id or null) and `eos_token_id` (an id, a list of ids, or null).
fn special_tokens(f: &Fields) -> Result<SpecialTokens, FrontendError> {
    let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let bos = match f.get("bos_token_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(id(v).ok_or_else(|| f.error("bos_token_id", "expected a token id"))?),
    };
    let eos = match f.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| id(v).ok_or_else(|| f.error("eos_token_id", "expected a list of token ids")))
            .collect::<Result<_, _>>()?,
        Some(v) => vec![id(v)
            .ok_or_else(|| f.error("eos_token_id", "expected a token id or a list of them"))?],
    };
    Ok(SpecialTokens { bos, eos })
}

fn activation(f: &Fields) -> Result<Activation, FrontendError> {
    match f.opt_str("hidden_act")?.unwrap_or("silu") {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu" => Ok(Activation::Gelu),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(f.error(
            "hidden_act",
            format!(
                "unknown activation `{other}` (expected silu, gelu, gelu_pytorch_tanh or relu)"
            ),
        )),
    }
}

/// The attention window of each layer: v5 `layer_types` when present, else the family's rule
/// (Mistral: every layer slides when `sliding_window` is set; Qwen2: layers from
/// `max_window_layers` on slide when `use_sliding_window` is true).
fn windows(
    f: &Fields,
    family: &str,
    num_layers: usize,
) -> Result<Vec<AttentionWindow>, FrontendError> {
    let window = f.opt_usize("sliding_window")?;
    let sliding = |key: &str| -> Result<AttentionWindow, FrontendError> {
        match window {
            Some(0) => Err(f.error("sliding_window", "expected a positive integer, found 0")),
            Some(w) => Ok(AttentionWindow::Sliding(w)),
            None => Err(f.error(
                key,
                "asks for sliding attention but `sliding_window` is not set",
            )),
        }
    };
    if let Some(types) = f.opt_str_array("layer_types")? {
        if types.len() != num_layers {
            return Err(f.error(
                "layer_types",
                format!(
                    "has {} entries, expected one per layer ({num_layers})",
                    types.len()
                ),
            ));
        }
        return types
            .iter()
            .map(|t| match *t {
                "full_attention" => Ok(AttentionWindow::Full),
                "sliding_attention" => sliding("layer_types"),
                other => Err(f.error(
                    "layer_types",
                    format!("unknown layer type `{other}` (expected full_attention or sliding_attention)"),
                )),
            })
            .collect();
    }
    let first_sliding = match family {
        "mistral" if window.is_some() => 0,
        "qwen2" if f.bool_or("use_sliding_window", false)? => {
            f.opt_usize("max_window_layers")?.unwrap_or(28)
        }
        _ => num_layers,
    };
    (0..num_layers)
        .map(|i| {
            if i >= first_sliding {
                sliding("sliding_window")
            } else {
                Ok(AttentionWindow::Full)
            }
        })
        .collect()
}

/// RoPE parameters from v5 `rope_parameters`, or v4 `rope_theta` + `rope_scaling`.
fn rope(f: &Fields, family: &str, head_dim: usize) -> Result<Rope, FrontendError> {
    let default_theta = if family == "qwen2" {
        1_000_000.0
    } else {
        10_000.0
    };
    let (params, theta) = match f.opt_object("rope_parameters")? {
        Some(p) => {
            let theta = p.f64_or("rope_theta", f.f64_or("rope_theta", default_theta)?)?;
            (Some(p), theta)
        }
        None => (
            f.opt_object("rope_scaling")?,
            f.f64_or("rope_theta", default_theta)?,
        ),
    };
    if theta <= 0.0 {
        return Err(f.error(
            "rope_theta",
            format!("expected a positive number, found {theta}"),
        ));
    }
    let partial = match &params {
        Some(p) if p.has("partial_rotary_factor") => p.f64_or("partial_rotary_factor", 1.0)?,
        _ => f.f64_or("partial_rotary_factor", 1.0)?,
    };
    let rotated = (head_dim as f64 * partial) as usize;
    if !(partial > 0.0 && partial <= 1.0 && rotated.is_multiple_of(2)) {
        return Err(f.error(
            "partial_rotary_factor",
            format!("{partial} must be in (0, 1] and rotate an even number of the {head_dim} head dimensions"),
        ));
    }
    let scaling = match params {
        None => RopeScaling::None,
        Some(p) => scaling(&p, f)?,
    };
    Ok(Rope {
        theta,
        partial_rotary_factor: partial,
        style: RopeStyle::RotateHalf,
        scaling,
    })
}

fn scaling(p: &Fields, top: &Fields) -> Result<RopeScaling, FrontendError> {
    let kind = match p.opt_str("rope_type")? {
        Some(k) => k,
        None => p.opt_str("type")?.unwrap_or("default"),
    };
    let factor = || -> Result<f64, FrontendError> {
        match p.opt_f64("factor")? {
            Some(x) if x > 0.0 => Ok(x),
            Some(x) => Err(p.error("factor", format!("expected a positive number, found {x}"))),
            None => Err(p.error("factor", format!("missing (rope type `{kind}` needs it)"))),
        }
    };
    let original = |required: bool| -> Result<Option<usize>, FrontendError> {
        match p.opt_usize("original_max_position_embeddings")? {
            Some(n) => Ok(Some(n)),
            None if required => top
                .opt_usize("original_max_position_embeddings")?
                .or(top.opt_usize("max_position_embeddings")?)
                .map(Some)
                .ok_or_else(|| p.error("original_max_position_embeddings", "missing")),
            None => Ok(None),
        }
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor()?,
            original_max_positions: original(true)?.expect("required"),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: p.opt_f64("low_freq_factor")?.ok_or_else(|| p.error("low_freq_factor", "missing"))?,
            high_freq_factor: p.opt_f64("high_freq_factor")?.ok_or_else(|| p.error("high_freq_factor", "missing"))?,
            original_max_positions: original(true)?.expect("required"),
        },
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            original_max_positions: original(false)?,
            attention_factor: p.opt_f64("attention_factor")?,
            beta_fast: p.f64_or("beta_fast", 32.0)?,
            beta_slow: p.f64_or("beta_slow", 1.0)?,
            mscale: p.opt_f64("mscale")?,
            mscale_all_dim: p.opt_f64("mscale_all_dim")?,
            truncate: p.bool_or("truncate", true)?,
        },
        other => {
            return Err(p.error(
                "rope_type",
                format!("unsupported rope type `{other}` (expected default, linear, dynamic, llama3 or yarn)"),
            ))
        }
    })
}
