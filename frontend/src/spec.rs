//! `ModelSpec`: one normalized description of every architecture kiln covers.
//!
//! Readers (`hf`, `gguf`) produce it; builders consume it. Each axis of the design is an enum,
//! so a reader can describe a model that no builder handles yet, and the builder refuses it by
//! name (`build::check_supported`) rather than approximating it.

/// How tokens see each other across the whole model.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// Each token attends to itself and earlier tokens.
    CausalDecoder,
    /// Bidirectional attention over a prefix, causal after it.
    PrefixDecoder,
    /// A bidirectional encoder and a causal decoder with cross-attention.
    EncoderDecoder,
}

/// The token-mixing half of a block.
#[derive(Clone, Debug, PartialEq)]
pub enum Mixer {
    Attention,
    /// Selective state-space scan.
    Mamba {
        state_size: usize,
        conv_kernel: usize,
        expand: usize,
    },
    Rwkv,
    /// Retention (RetNet).
    Retention,
    /// Long implicit convolution.
    Hyena {
        order: usize,
    },
}

/// The channel-mixing half of a block.
#[derive(Clone, Debug, PartialEq)]
pub enum Mlp {
    Dense,
    /// Top-k routed experts, optionally with always-on shared experts.
    Moe {
        experts: usize,
        top_k: usize,
        shared_experts: usize,
    },
}

/// How the two halves of a block combine with the residual stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Residual {
    /// `x + mixer(norm(x))`, then `+ mlp(norm(·))`.
    Sequential,
    /// `x + mixer(norm(x)) + mlp(norm(x))` (GPT-J, NeoX).
    Parallel,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormPlacement {
    Pre,
    Post,
    /// Before and after each sublayer.
    Sandwich,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Norm {
    pub kind: NormKind,
    pub placement: NormPlacement,
    pub eps: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `x·Φ(x)` with the exact normal CDF.
    Gelu,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// `x·σ(x)` (Swish).
    Silu,
    Relu,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ffn {
    pub intermediate_size: usize,
    pub activation: Activation,
    /// `down(act(gate(x)) ⊙ up(x))` (SwiGLU, GeGLU) rather than `down(act(up(x)))`.
    pub gated: bool,
    pub bias: bool,
}

/// Which elements RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeStyle {
    /// Element `i` with `i + d/2` (Hugging Face Llama).
    RotateHalf,
    /// Element `2i` with `2i + 1` (GPT-J, Meta's original Llama).
    Interleaved,
}

/// Frequency scaling of RoPE, as the transformers `rope_type`s define it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware base rescaling once the sequence exceeds `original_max_positions`.
    Dynamic {
        factor: f64,
        original_max_positions: usize,
    },
    /// Llama 3.1's wavelength-dependent interpolation.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
    /// YaRN: ramped interpolation plus an attention temperature folded into cos/sin.
    Yarn {
        factor: f64,
        original_max_positions: Option<usize>,
        attention_factor: Option<f64>,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Fraction of each head's dimensions that rotate.
    pub partial_rotary_factor: f64,
    pub style: RopeStyle,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Position {
    None,
    Sinusoidal,
    Learned,
    /// T5-style bucketed relative bias.
    RelativeBias {
        buckets: usize,
        max_distance: usize,
    },
    Rope(Rope),
    Alibi,
}

/// Which keys a query sees beyond the layout's rule.
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionWindow {
    Full,
    /// The query and the `n - 1` keys before it.
    Sliding(usize),
    /// Block-sparse pattern with the given block size.
    BlockSparse {
        block: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub heads: usize,
    /// `heads` for MHA, 1 for MQA, in between for GQA.
    pub kv_heads: usize,
    pub head_dim: usize,
    /// One entry per layer.
    pub windows: Vec<AttentionWindow>,
    pub qkv_bias: bool,
    pub out_bias: bool,
    /// `cap · tanh(score / cap)` on attention logits.
    pub logit_softcap: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// The output head reuses the token embedding matrix.
    pub tied: bool,
    /// Embeddings multiplied by this on the way in (Gemma: √hidden).
    pub scale: Option<f64>,
}

/// Token ids with a meaning to decoding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// Generation stops at any of these.
    pub eos: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The family as the source named it (`llama`, `mistral`, `qwen2`).
    pub family: String,
    pub layout: Layout,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub max_positions: usize,
    pub mixer: Mixer,
    pub mlp: Mlp,
    pub residual: Residual,
    pub norm: Norm,
    pub ffn: Ffn,
    pub position: Position,
    pub attention: Attention,
    pub embeddings: Embeddings,
    pub tokens: SpecialTokens,
}
