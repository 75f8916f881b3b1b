//! Chat templates: SmolLM2's (a committed copy, and the GGUF's own when present) and two
//! templates in the styles Hugging Face models use, exercising `.strip()`, slicing,
//! `raise_exception`, loop variables and controls, `namespace`, and `trim_blocks` /
//! `lstrip_blocks`. Expected texts are what Python's jinja2 3.1.6 renders with `transformers`'
//! settings (trim_blocks, lstrip_blocks, loopcontrols).

use kiln_runtime::{render_chat, ChatMessage, Tokenizer};

use crate::smollm2;

/// `tokenizer.chat_template` of SmolLM2-135M-Instruct.Q4_1.gguf.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SMOLLM2_HI: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";

/// Llama-2 style: whitespace stripped by `-`, alternation enforced with `raise_exception`.
const INST: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'].strip() %}
    {%- set rest = messages[1:] %}
{%- else %}
    {%- set system = '' %}
    {%- set rest = messages %}
{%- endif %}
{%- for message in rest %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + (system + '\n\n' if loop.first and system else '') + message['content'].strip() + ' [/INST]' }}
    {%- else %}
        {{- ' ' + message['content'].strip() + eos_token }}
    {%- endif %}
{%- endfor %}
"#;

/// No `-` anywhere: the layout relies on trim_blocks and lstrip_blocks.
const LINES: &str = r#"{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message.role == 'system' %}
        {% continue %}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
{{ message.role | upper }}{{ ' (q)' if message.content.endswith('?') else '' }}: {{ message.get('content') }}
{% if loop.last and add_generation_prompt %}
ASSISTANT ({{ ns.turns }} turns):
{% endif %}
{% endfor %}
"#;

fn hi() -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", "Hi")]
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  Be brief.  "),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "Hello! "),
        ChatMessage::new("user", "Bye?"),
    ]
}

#[test]
fn smollm2_template_adds_its_default_system_prompt() {
    let text = render_chat(SMOLLM2, &hi(), true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(text, SMOLLM2_HI);

    let with_system = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    let text = render_chat(SMOLLM2, &with_system, false, "", "").unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn smollm2_gguf_template_is_the_committed_copy() {
    let Some(file) = smollm2::gguf("smollm2_gguf_template_is_the_committed_copy") else {
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let template = tokenizer.chat_template().unwrap();
    assert_eq!(template, SMOLLM2);
    let text = render_chat(template, &hi(), true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(text, SMOLLM2_HI);
    // The rendered prompt encodes with its markers as single ids.
    let ids = tokenizer.encode(&text, false).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
}

#[test]
fn inst_template_strips_slices_and_uses_bos_eos() {
    let text = render_chat(INST, &conversation(), false, "<s>", "</s>").unwrap();
    assert_eq!(
        text,
        "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Bye? [/INST]"
    );
}

#[test]
fn raise_exception_fails_the_rendering_with_its_message() {
    let messages = [ChatMessage::new("assistant", "x")];
    let err = render_chat(INST, &messages, false, "<s>", "</s>").unwrap_err();
    assert_eq!(err.file, "<chat template>");
    assert!(
        err.message
            .contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{err}"
    );
}

#[test]
fn block_whitespace_is_trimmed_as_in_transformers() {
    let text = render_chat(LINES, &conversation(), true, "", "").unwrap();
    assert_eq!(
        text,
        "USER:  Hi \nASSISTANT: Hello! \nUSER (q): Bye?\nASSISTANT (3 turns):\n"
    );
}

#[test]
fn template_errors_say_where() {
    let err = render_chat("{% for m in messages %}", &hi(), false, "", "").unwrap_err();
    assert!(err.message.starts_with("does not parse (line 1)"), "{err}");
    let err = render_chat("\n{{ messages[0].content.nope() }}", &hi(), false, "", "").unwrap_err();
    assert!(err.message.starts_with("failed (line 2)"), "{err}");
}
