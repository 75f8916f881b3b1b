//! Chat prompts: renders a model's chat template, a Jinja template in Hugging Face's convention,
//! into the text the model is prompted with.
//!
//! The template sees what `transformers`' `apply_chat_template` gives it: `messages` (a list of
//! `{role, content}` maps), `add_generation_prompt`, `bos_token`, `eos_token` and the function
//! `raise_exception(message)`, which fails the rendering with that message. It renders as
//! `transformers` does: with `trim_blocks` and `lstrip_blocks`, loop controls
//! (`{% break %}`, `{% continue %}`), and Python's string and dict methods (`.strip()`,
//! `.startswith()`, `.split()`, `.items()`, `.get()`…) through `minijinja-contrib`'s pycompat.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// Names the template in errors.
const SOURCE: &str = "<chat template>";

/// One message of a conversation: `role` is `system`, `user` or `assistant` by convention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders `template` for `messages`; `add_generation_prompt` asks for the text that opens the
/// assistant's reply. `bos` and `eos` are the texts of the BOS and EOS tokens.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    let template = env
        .template_from_str(template)
        .map_err(|e| template_error("does not parse", e))?;
    template
        .render(context! {
            messages,
            add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| template_error("failed", e))
}

fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `e` with the template line it points at, as a runtime error.
fn template_error(what: &str, e: Error) -> RuntimeError {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    let message = match e.detail() {
        Some(detail) => format!("{what}{line}: {}: {detail}", e.kind()),
        None => format!("{what}{line}: {}", e.kind()),
    };
    RuntimeError::new(SOURCE, None, message)
}
