//! Text ↔ token ids. [`Tokenizer`] wraps a Hugging Face `tokenizers::Tokenizer` built from one of
//! three sources: a `tokenizer.json`, the vocabulary a GGUF file embeds, or a byte-level fallback
//! for models that have no tokenizer. It also carries what a decoding loop needs beside the
//! vocabulary: the BOS and EOS ids and the chat template. [`DecodeStream`] turns ids into text
//! one id at a time, for streamed output.
//!
//! From GGUF, only `tokenizer.ggml.model == "gpt2"` (byte-level BPE) is read. It is built the
//! way Hugging Face's tokenizer.json of such models spells it: a BPE model over
//! `tokenizer.ggml.tokens` (id = index) and `tokenizer.ggml.merges`, and ByteLevel (no prefix
//! space, GPT-2's split regex) as pre-tokenizer, decoder and post-processor. The pre-tokenizer
//! follows `tokenizer.ggml.pre`: `gpt2` (or no key) is ByteLevel alone; `smollm` and `starcoder`
//! first split digits one by one, as those models do. Tokens whose `tokenizer.ggml.token_type`
//! is 3 (control) or 4 (user-defined) become added tokens, matched whole in text, so
//! `<|im_start|>` encodes to its single id; control tokens are special (dropped by
//! `decode(.., skip_special = true)`). `tokenizer.ggml.add_bos_token` / `add_eos_token` make
//! `encode(.., add_special_tokens = true)` add BOS / EOS.
//!
//! Ids that no token has decode to nothing, as in Hugging Face's tokenizers.

use std::fmt;
use std::path::Path;

use kiln_gguf::{ErrorKind, GgufError, GgufFile};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::AddedToken;

use crate::error::{Result, RuntimeError};
use crate::manifest::ModelInfo;

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's token types that become added tokens: control (special) and user-defined.
const TOKEN_TYPE_CONTROL: i128 = 3;
const TOKEN_TYPE_USER_DEFINED: i128 = 4;

/// The `tokenizer.ggml.pre` values read, in the order the error message lists them.
const SUPPORTED_PRE: &str = "\"gpt2\", \"smollm\", \"starcoder\"";

/// A tokenizer with the ids and chat template its model uses.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file it came from, for errors: a path, a GGUF source, or `<bytes>`.
    source: String,
    bos: Option<u32>,
    eos: Vec<u32>,
    chat_template: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`. It holds no BOS, EOS or chat template (those live
    /// in the model's config): [`Tokenizer::with_model_info`] adds them.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(&source, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            RuntimeError::new(&source, None, format!("not a valid tokenizer.json: {e}"))
        })?;
        Ok(Tokenizer {
            inner,
            source,
            bos: None,
            eos: Vec::new(),
            chat_template: None,
        })
    }

    /// Builds the tokenizer a GGUF file embeds (see the module doc for what is read).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let source = file.source.as_str();
        let model = file.get_str(MODEL).map_err(|e| metadata_error(e, MODEL))?;
        if model != "gpt2" {
            let message = format!(
                "unsupported tokenizer model {model:?}: only \"gpt2\" (byte-level BPE) is read"
            );
            return Err(RuntimeError::new(source, Some(MODEL), message));
        }
        let byte_level = ByteLevel::new(false, true, true);
        let pre = optional(file, PRE, GgufFile::get_str)?;
        let pre_tokenizer = pre_tokenizer(pre, byte_level).ok_or_else(|| {
            let message = format!(
                "unsupported pre-tokenizer {:?}: expected one of {SUPPORTED_PRE}",
                pre.unwrap_or_default()
            );
            RuntimeError::new(source, Some(PRE), message)
        })?;

        let tokens = file
            .get_str_array(TOKENS)
            .map_err(|e| metadata_error(e, TOKENS))?;
        let n_tokens = u32::try_from(tokens.len()).map_err(|_| {
            let message = format!("{} tokens do not fit 32-bit ids", tokens.len());
            RuntimeError::new(source, Some(TOKENS), message)
        })?;
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, token) in (0..n_tokens).zip(&tokens) {
            if let Some(first) = vocab.insert(token.to_string(), id) {
                let message = format!("token {token:?} appears twice, at ids {first} and {id}");
                return Err(RuntimeError::new(source, Some(TOKENS), message));
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, read_merges(file)?)
            .build()
            .map_err(|e| RuntimeError::new(source, Some(MERGES), e.to_string()))?;

        let token_id = |key| {
            let id = optional(file, key, GgufFile::get_u64)?;
            id.map(|id| match u32::try_from(id) {
                Ok(id) if id < n_tokens => Ok(id),
                _ => {
                    let message = format!("token id {id} is not below the {n_tokens} tokens");
                    Err(RuntimeError::new(source, Some(key), message))
                }
            })
            .transpose()
        };
        let bos = token_id(BOS)?;
        let eos = token_id(EOS)?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(byte_level))
            .with_post_processor(Some(post_processor(file, &tokens, bos, eos, byte_level)?));
        inner.add_tokens(&added_tokens(file, &tokens)?);
        Ok(Tokenizer {
            inner,
            source: source.to_string(),
            bos,
            eos: eos.into_iter().collect(),
            chat_template: optional(file, CHAT_TEMPLATE, GgufFile::get_str)?.map(str::to_string),
        })
    }

    /// A tokenizer for models that have none: token id = byte value of the UTF-8 text, 256 ids.
    /// The model's vocabulary must hold at least [`Tokenizer::vocab_size`] ids.
    pub fn bytes() -> Tokenizer {
        let byte_level = ByteLevel::new(false, true, true);
        let vocab: Vocab = byte_chars()
            .map(|(byte, c)| (c.to_string(), u32::from(byte)))
            .collect();
        let mut inner = tokenizers::Tokenizer::new(BPE::new(vocab, Vec::new()));
        inner
            .with_pre_tokenizer(Some(byte_level))
            .with_decoder(Some(byte_level))
            .with_post_processor(Some(byte_level));
        Tokenizer {
            inner,
            source: "<bytes>".to_string(),
            bos: None,
            eos: Vec::new(),
            chat_template: None,
        }
    }

    /// Takes the BOS id, EOS ids and chat template of the model's config where it has them,
    /// replacing the tokenizer's.
    pub fn with_model_info(mut self, info: &ModelInfo) -> Tokenizer {
        if info.bos_token_id.is_some() {
            self.bos = info.bos_token_id;
        }
        if !info.eos_token_ids.is_empty() {
            self.eos.clone_from(&info.eos_token_ids);
        }
        if info.chat_template.is_some() {
            self.chat_template.clone_from(&info.chat_template);
        }
        self
    }

    /// The ids of `text`; with `add_special_tokens`, also the BOS/EOS the tokenizer's
    /// post-processor adds. Special tokens written in `text` (`<|im_start|>`) are matched whole.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; `skip_special` drops special tokens. Bytes that do not form UTF-8
    /// become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.error(format!("decoding failed: {e}")))
    }

    /// A decoder for ids arriving one at a time.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            inner: self.inner.decode_stream(skip_special),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The ids that end generation; empty when unknown.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The number of ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn error(&self, message: String) -> RuntimeError {
        RuntimeError::new(&self.source, None, message)
    }
}

/// Decodes ids one at a time: each step returns the text that id completes. A character whose
/// UTF-8 bytes are spread over several byte-level tokens comes out whole, with the last of them.
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    inner: tokenizers::DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl DecodeStream<'_> {
    /// Adds `id` and returns the newly completed text: empty while a character is incomplete.
    pub fn step(&mut self, id: u32) -> Result<String> {
        let text = self.inner.step(id).map_err(|e| {
            self.tokenizer
                .error(format!("decoding id {id} failed: {e}"))
        })?;
        Ok(text.unwrap_or_default())
    }
}

/// A GGUF metadata error as a runtime error on `key`.
fn metadata_error(e: GgufError, key: &str) -> RuntimeError {
    let message = match e.kind() {
        ErrorKind::MissingKey { .. } => "missing from the metadata".to_string(),
        ErrorKind::WrongType {
            expected, found, ..
        } => format!("expected {expected}, found {found}"),
        _ => e.to_string(),
    };
    RuntimeError::new(e.file(), Some(key), message)
}

/// The value of an optional key: `None` when absent, an error when of the wrong type.
fn optional<'f, T>(
    file: &'f GgufFile,
    key: &str,
    get: impl Fn(&'f GgufFile, &str) -> std::result::Result<T, GgufError>,
) -> Result<Option<T>> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => get(file, key).map(Some).map_err(|e| metadata_error(e, key)),
    }
}

/// The pre-tokenizer `tokenizer.ggml.pre` names, as the models' tokenizer.json spells it.
fn pre_tokenizer(pre: Option<&str>, byte_level: ByteLevel) -> Option<PreTokenizerWrapper> {
    match pre {
        None | Some("gpt2") => Some(byte_level.into()),
        Some("smollm" | "starcoder") => {
            let steps = vec![Digits::new(true).into(), byte_level.into()];
            Some(PreTokenizerSequence::new(steps).into())
        }
        Some(_) => None,
    }
}

/// `tokenizer.ggml.merges`: one `"left right"` string per merge, highest priority first.
fn read_merges(file: &GgufFile) -> Result<Vec<(String, String)>> {
    let merges = file
        .get_str_array(MERGES)
        .map_err(|e| metadata_error(e, MERGES))?;
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split_once(' ') {
            Some((left, right)) => Ok((left.to_string(), right.to_string())),
            None => {
                let message = format!("merge {i} ({merge:?}) is not two tokens split by a space");
                Err(RuntimeError::new(&file.source, Some(MERGES), message))
            }
        })
        .collect()
}

/// The control and user-defined tokens of `tokenizer.ggml.token_type` (absent: none).
fn added_tokens(file: &GgufFile, tokens: &[&str]) -> Result<Vec<AddedToken>> {
    let Some(types) = optional(file, TOKEN_TYPE, GgufFile::get_array)? else {
        return Ok(Vec::new());
    };
    let error = |message: String| RuntimeError::new(&file.source, Some(TOKEN_TYPE), message);
    if types.len() != tokens.len() {
        let message = format!(
            "{} token types for {} tokens (`{TOKENS}`)",
            types.len(),
            tokens.len()
        );
        return Err(error(message));
    }
    let mut added = Vec::new();
    for (i, (value, token)) in types.iter().zip(tokens).enumerate() {
        match value.as_integer() {
            Some(TOKEN_TYPE_CONTROL) => added.push(AddedToken::from(*token, true)),
            Some(TOKEN_TYPE_USER_DEFINED) => added.push(AddedToken::from(*token, false)),
            Some(_) => {}
            None => {
                let found = value.type_name();
                return Err(error(format!(
                    "expected integers, found {found} at index {i}"
                )));
            }
        }
    }
    Ok(added)
}

/// ByteLevel, followed by adding BOS / EOS where `add_bos_token` / `add_eos_token` ask for it.
fn post_processor(
    file: &GgufFile,
    tokens: &[&str],
    bos: Option<u32>,
    eos: Option<u32>,
    byte_level: ByteLevel,
) -> Result<PostProcessorWrapper> {
    let requested = |flag, id_key, id: Option<u32>| -> Result<Option<u32>> {
        if !optional(file, flag, GgufFile::get_bool)?.unwrap_or(false) {
            return Ok(None);
        }
        let message = format!("is true but `{id_key}` is missing");
        id.map(Some)
            .ok_or_else(|| RuntimeError::new(&file.source, Some(flag), message))
    };
    let add_bos = requested(ADD_BOS, BOS, bos)?;
    let add_eos = requested(ADD_EOS, EOS, eos)?;
    if add_bos.is_none() && add_eos.is_none() {
        return Ok(byte_level.into());
    }
    // The template names its special tokens; the names are ours, the ids and texts the file's.
    let special = |name: &str, id: u32| {
        let text = tokens[id as usize].to_string();
        SpecialToken::new(name.to_string(), vec![id], vec![text])
    };
    let mut single = Vec::new();
    let mut special_tokens = Vec::new();
    if let Some(id) = add_bos {
        single.push("bos");
        special_tokens.push(special("bos", id));
    }
    single.push("$A");
    if let Some(id) = add_eos {
        single.push("eos");
        special_tokens.push(special("eos", id));
    }
    let processor = special_tokens
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
        .and_then(|special_tokens| {
            TemplateProcessing::builder()
                .try_single(single)?
                .special_tokens(special_tokens)
                .build()
                .map_err(|e| e.to_string())
        })
        .map_err(|e| RuntimeError::new(&file.source, Some(ADD_BOS), e))?;
    Ok(ProcessorSequence::new(vec![byte_level.into(), processor.into()]).into())
}

/// GPT-2's byte-to-character table: each byte and the printable character that stands for it in
/// byte-level vocabularies. `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for themselves; the other
/// bytes, in order, for U+0100 onwards.
fn byte_chars() -> impl Iterator<Item = (u8, char)> {
    let mut next = 0x100;
    (0..=255u8).map(move |byte| {
        if matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            (byte, char::from(byte))
        } else {
            let c = char::from_u32(next).expect("U+0100..U+01FF are characters");
            next += 1;
            (byte, c)
        }
    })
}
