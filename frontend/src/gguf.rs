//! Reader of GGUF metadata for the `llama` architecture (llama.cpp's key names).
//!
//! The spec describes the model in Hugging Face's layout: llama.cpp permutes the rows of the q
//! and k projections so its RoPE can rotate adjacent pairs, and kiln's weight loader undoes that
//! permutation, so a GGUF Llama and its Hugging Face original give the same spec and graphs.
//! Facts GGUF keeps in tensors rather than keys are read from the tensor table: a missing
//! `output.weight` means a tied head, `blk.0.attn_q.bias` means q/k/v biases.

use crate::error::FrontendError;
use crate::spec::*;
use kiln_gguf::GgufFile;

const ARCHITECTURES: &[&str] = &["llama"];

pub fn read_spec(file: &GgufFile) -> Result<ModelSpec, FrontendError> {
    let m = Meta { file };
    let arch = m.string("general.architecture")?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(m.error(
            "general.architecture",
            format!(
                "unsupported architecture `{arch}` (expected one of {})",
                ARCHITECTURES.join(", ")
            ),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden_size = m.positive(&key("embedding_length"))?;
    let heads = m.positive(&key("attention.head_count"))?;
    let kv_heads = m
        .opt_positive(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(m.error(
            &key("attention.head_count_kv"),
            format!("{kv_heads} key/value heads do not divide attention.head_count = {heads}"),
        ));
    }
    let head_dim = match m.opt_positive(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden_size % heads != 0 => {
            return Err(m.error(
                &key("embedding_length"),
                format!("{hidden_size} is not divisible by attention.head_count = {heads}"),
            ))
        }
        None => hidden_size / heads,
    };
    let rotary = m
        .opt_positive(&key("rope.dimension_count"))?
        .unwrap_or(head_dim);
    if rotary > head_dim || rotary % 2 != 0 {
        return Err(m.error(
            &key("rope.dimension_count"),
            format!("{rotary} must be even and at most the head dimension {head_dim}"),
        ));
    }
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(FrontendError::new(
            &file.source,
            Some("rope_freqs.weight"),
            "per-frequency RoPE factors (llama3-style scaling stored as a tensor) are not supported yet",
        ));
    }
    let vocab_size = match m.opt_positive(&key("vocab_size"))? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens") {
            Some(_) => file
                .get_array("tokenizer.ggml.tokens")
                .map_err(|e| m.error("tokenizer.ggml.tokens", e.to_string()))?
                .len(),
            None => {
                return Err(m.error(
                    &key("vocab_size"),
                    "missing, and no tokenizer.ggml.tokens to count",
                ))
            }
        },
    };
    let num_layers = m.positive(&key("block_count"))?;
    Ok(ModelSpec {
        family: arch.to_string(),
        layout: Layout::CausalDecoder,
        vocab_size,
        hidden_size,
        num_layers,
        max_positions: m.positive(&key("context_length"))?,
        mixer: Mixer::Attention,
        mlp: Mlp::Dense,
        residual: Residual::Sequential,
        norm: Norm {
            kind: NormKind::RmsNorm,
            placement: NormPlacement::Pre,
            eps: m
                .number(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        },
        ffn: Ffn {
            intermediate_size: m.positive(&key("feed_forward_length"))?,
            activation: Activation::Silu,
            gated: true,
            bias: file.tensor("blk.0.ffn_gate.bias").is_some(),
        },
        position: Position::Rope(Rope {
            theta: m.number(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            partial_rotary_factor: rotary as f64 / head_dim as f64,
            style: RopeStyle::RotateHalf,
            scaling: rope_scaling(&m, arch)?,
        }),
        attention: Attention {
            heads,
            kv_heads,
            head_dim,
            windows: vec![AttentionWindow::Full; num_layers],
            qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
            out_bias: file.tensor("blk.0.attn_output.bias").is_some(),
            logit_softcap: None,
        },
        embeddings: Embeddings {
            tied: file.tensor("output.weight").is_none(),
            scale: None,
        },
        tokens: SpecialTokens {
            bos: token_id(file, "tokenizer.ggml.bos_token_id")?,
            eos: token_id(file, "tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
        },
    })
}

fn rope_scaling(m: &Meta, arch: &str) -> Result<RopeScaling, FrontendError> {
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    let kind = match m.file.get(&key("type")) {
        Some(_) => m.string(&key("type"))?,
        None => "none",
    };
    let factor = || -> Result<f64, FrontendError> {
        match m.number(&key("factor"))? {
            Some(f) if f > 0.0 => Ok(f),
            _ => Err(m.error(
                &key("factor"),
                format!("missing or not positive (scaling type `{kind}` needs it)"),
            )),
        }
    };
    Ok(match kind {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            original_max_positions: m.opt_positive(&key("original_context_length"))?,
            attention_factor: None,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        },
        other => {
            return Err(m.error(
                &key("type"),
                format!("unsupported RoPE scaling `{other}` (expected none, linear or yarn)"),
            ))
        }
    })
}

/// Typed metadata access whose errors name the file and the key.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> FrontendError {
        FrontendError::new(&self.file.source, Some(key), message)
    }

    fn found(&self, key: &str) -> String {
        self.file
            .get(key)
            .map(|v| v.type_name())
            .unwrap_or("nothing")
            .to_string()
    }

    fn string(&self, key: &str) -> Result<&str, FrontendError> {
        match self.file.get(key) {
            None => Err(self.error(key, "missing (expected a string)")),
            Some(_) => self.file.get_str(key).map_err(|_| {
                self.error(key, format!("expected a string, found {}", self.found(key)))
            }),
        }
    }

    fn opt_positive(&self, key: &str) -> Result<Option<usize>, FrontendError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(_) => match self.file.get_u64(key) {
                Ok(0) => Err(self.error(key, "expected a positive integer, found 0")),
                Ok(n) => usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.error(key, format!("{n} is too large"))),
                Err(_) => Err(self.error(
                    key,
                    format!("expected a positive integer, found {}", self.found(key)),
                )),
            },
        }
    }

    fn positive(&self, key: &str) -> Result<usize, FrontendError> {
        self.opt_positive(key)?
            .ok_or_else(|| self.error(key, "missing (expected a positive integer)"))
    }

    fn number(&self, key: &str) -> Result<Option<f64>, FrontendError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(_) => self.file.get_f64(key).map(Some).map_err(|_| {
                self.error(key, format!("expected a number, found {}", self.found(key)))
            }),
        }
    }
}

fn token_id(file: &GgufFile, key: &str) -> Result<Option<u32>, FrontendError> {
    if file.get(key).is_none() {
        return Ok(None);
    }
    file.get_u64(key)
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| FrontendError::new(&file.source, Some(key), "expected a token id"))
}
