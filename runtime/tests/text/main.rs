//! Tests of text in and out of a model, through the public API: `tokenizer` (tokenizers from
//! tokenizer.json, GGUF and bytes, checked against reference ids), `chat` (chat templates) and
//! `sampling`. Tests marked as needing SmolLM2 read the real model's GGUF (see `smollm2`) and
//! are skipped when it is absent.

mod chat;
mod sampling;
mod smollm2;
mod tokenizer;
