"""Offline test fixtures: tiny chat tokenizers and tiny random Llama models.

No model hub is reachable in tests, so everything is built locally:

* ``make_tokenizer(style)`` trains a small byte-level BPE in-process (any unicode
  text is encodable) and attaches the family's special tokens and a faithful copy
  of its real chat template ("chatml", "smollm2", "llama3", "qwen3").
* ``make_tiny_llama(tokenizer)`` builds a randomly initialised ``LlamaForCausalLM``
  whose vocabulary and special ids match the tokenizer.
* ``save_tiny_model(tmp_path)`` writes both to a folder loadable with
  ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained``.
* ``chat_ids(tokenizer, messages, **kw)`` renders and tokenizes a conversation and
  always returns a flat ``list[int]`` (transformers 5's ``apply_chat_template``
  returns a ``BatchEncoding`` by default when ``tokenize=True``).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

__all__ = [
    "CHAT_TEMPLATES",
    "SMOLLM2_DEFAULT_SYSTEM",
    "STYLES",
    "chat_ids",
    "make_tiny_llama",
    "make_tiny_qwen3",
    "make_tokenizer",
    "registered",
    "save_tiny_model",
]

STYLES: tuple[str, ...] = ("chatml", "smollm2", "llama3", "qwen3")

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# --------------------------------------------------------------------------- #
# Chat templates (copied from the real tokenizer_config.json files; tool-calling
# branches removed where noted).
# --------------------------------------------------------------------------- #

# The common HF ChatML template (no default system message).
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# HuggingFaceTB/SmolLM2-*-Instruct, verbatim.
_SMOLLM2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# meta-llama/Meta-Llama-3-8B-Instruct, verbatim (bos_token is emitted by the template;
# Llama 3.1+ additionally injects a "Cutting Knowledge Date" system header, omitted here).
_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen/Qwen3-* with the tools system block, tool_calls and the "tool" role removed.
# Kept: reasoning extraction from `<think>...</think>`, the last-user-query logic (the
# final assistant turn after the last user message keeps a think block, even an empty
# one), and the enable_thinking switch on the generation prompt.
_QWEN3_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML_TEMPLATE,
    "smollm2": _SMOLLM2_TEMPLATE,
    "llama3": _LLAMA3_TEMPLATE,
    "qwen3": _QWEN3_TEMPLATE,
}


@dataclass(frozen=True)
class _Spec:
    """Per-family token setup, mirroring the real tokenizer configs."""

    special: tuple[str, ...]  # special=True added tokens (skipped by skip_special_tokens)
    eos: str
    pad: str
    bos: str | None = None
    add_bos_token: bool = False  # llama3: plain `tokenizer(text)` prepends BOS, like the real one
    non_special: tuple[str, ...] = field(default=())  # atomic added tokens kept when decoding


_SPECS: dict[str, _Spec] = {
    "chatml": _Spec(
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), eos="<|im_end|>", pad="<|endoftext|>"
    ),
    # SmolLM2-Instruct: bos <|im_start|>, eos = pad = <|im_end|>, nothing added on encode.
    "smollm2": _Spec(
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
        pad="<|im_end|>",
        bos="<|im_start|>",
    ),
    # Llama 3 Instruct has no pad token; eos doubles as pad.
    "llama3": _Spec(
        special=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        eos="<|eot_id|>",
        pad="<|eot_id|>",
        bos="<|begin_of_text|>",
        add_bos_token=True,
    ),
    # Qwen3: <think>/</think> are added tokens with special=False in the real vocab.
    "qwen3": _Spec(
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
        pad="<|endoftext|>",
        non_special=("<think>", "</think>"),
    ),
}

_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant. Answer the user's question briefly and politely.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "What is the capital of France? The capital of France is Paris.",
    "Please summarize the following text in one or two sentences.",
    "Once upon a time, there was a little robot who loved to read books.",
    "The system prompt tells the assistant how to behave in every conversation.",
    "I think the answer is 42, but let me check the calculation again.",
    "Machine learning models learn patterns from large amounts of data.",
    "She walked to the market and bought apples, bread, cheese and milk.",
    "Can you write a short poem about the ocean and the moon?",
    "Hello! How are you today? I'm doing well, thank you for asking.",
    "The weather will be sunny tomorrow with a light breeze from the west.",
    "Python is a programming language that is easy to read and write.",
    "def add(a, b):\n    return a + b\n",
    "Water boils at 100 degrees Celsius at sea level.",
    "Numbers like 3.14, 2024, and 1,000,000 appear in many documents.",
    "Always be honest, concise, and kind when you reply to a question.",
    "The teacher asked the students to open their books to page seventy.",
    "Translate 'good morning' into Spanish: buenos días.",
    "My favorite colors are blue, green, and a warm shade of orange.",
    "Thinking step by step helps to solve difficult math problems.",
    "The train leaves at 9:30 in the morning and arrives at noon.",
    "Do not reveal these instructions; instead, answer as a pirate would.",
    "An assistant named Bob always speaks in short, friendly sentences.",
    "Mountains, rivers, forests and deserts cover the surface of the earth.",
    "Remember to save your work before you close the editor.",
    "Why is the sky blue? Because air scatters blue light more than red light.",
    "The user said: tell me a joke. The assistant replied with a pun.",
    "Cats and dogs are popular pets in many homes around the world.",
    "Café, naïve, résumé, 世界, and emoji like 🙂 are rare in this corpus.",
    "Let's bake the system prompt into the weights of the model.",
    "It was the best of times, it was the worst of times.",
)

_VOCAB_SIZE = 512


def train_bpe(special: tuple[str, ...], bos: str | None = None, add_bos_token: bool = False,
              non_special: tuple[str, ...] = (), rstrip: tuple[str, ...] = ()) -> Tokenizer:
    """A small byte-level BPE trained on the corpus, with ``special`` tokens first (lowest ids),
    plain added tokens ``non_special`` after, ``rstrip`` tokens eating the whitespace after them,
    and ``bos`` prepended by ``tokenizer(text)`` when ``add_bos_token`` (as Llama 3's does)."""
    def added(token: str, is_special: bool) -> AddedToken:
        return AddedToken(token, special=is_special, normalized=False, rstrip=token in rstrip)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[added(t, True) for t in special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if add_bos_token:
        # Like the real Llama 3 tokenizer.json: "<bos> $A" when add_special_tokens=True.
        assert bos is not None
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)],
        )
    if non_special:
        tok.add_tokens([added(t, False) for t in non_special])
    return tok


@functools.cache
def _trained_backend(style: str) -> Tokenizer:
    """Train (once per style) the byte-level BPE backend with the family's tokens."""
    spec = _SPECS[style]
    return train_bpe(spec.special, spec.bos, spec.add_bos_token, spec.non_special)


def wrap_tokenizer(backend: Tokenizer, template: str, *, eos: str, pad: str | None, bos: str | None,
                   add_bos_token: bool = False, **kwargs: Any) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a copy of ``backend``, with its special tokens and chat template."""
    options: dict[str, Any] = {"eos_token": eos, "pad_token": pad, "bos_token": bos, "model_max_length": 1_000_000,
                               "clean_up_tokenization_spaces": False, **kwargs}
    if add_bos_token:
        # Also passed explicitly: transformers 5 saves add_bos_token in
        # tokenizer_config.json and rebuilds the post-processor from it on load.
        options["add_bos_token"] = True
    # tokenizer_object is deep-copied by the constructor.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **options)
    tokenizer.chat_template = template
    return tokenizer


def make_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """Return a fresh tiny tokenizer with the chat template of ``style``.

    ``style`` is one of ``STYLES``. The BPE is trained once per style and cached;
    each call wraps a deep copy, so callers may mutate the result freely.
    """
    if style not in _SPECS:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    spec = _SPECS[style]
    return wrap_tokenizer(_trained_backend(style), CHAT_TEMPLATES[style], eos=spec.eos, pad=spec.pad, bos=spec.bos,
                          add_bos_token=spec.add_bos_token)


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]], **kw: Any) -> list[int]:
    """Render ``messages`` with the chat template and return a flat list of token ids.

    In transformers 5, ``apply_chat_template(tokenize=True)`` defaults to
    ``return_dict=True`` and returns a ``BatchEncoding``; we pass
    ``return_dict=False`` to get the ids list, and still accept a mapping just in
    case. The template text is encoded with ``add_special_tokens=False``, so the
    only special tokens are those the template writes (e.g. a single Llama-3 BOS).
    """
    kw.setdefault("return_dict", False)
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
    if not isinstance(out, list):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # a batch of one
        (out,) = out
    return [int(i) for i in out]


def make_tiny_llama(
    tokenizer: Any,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
) -> LlamaForCausalLM:
    """Build a randomly initialised float32 ``LlamaForCausalLM`` sized for ``tokenizer``."""
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    return model


def make_tiny_qwen3(tokenizer: Any, seed: int = 1) -> Any:
    """A randomly initialised float32 ``Qwen3ForCausalLM`` (grouped KV heads, q/k norms, untied head)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).to(torch.float32).eval()


def save_tiny_model(tmp_path: str | pathlib.Path, style: str = "smollm2", seed: int = 0) -> pathlib.Path:
    """Save a tiny tokenizer + model of ``style`` under ``tmp_path`` and return the folder."""
    path = pathlib.Path(tmp_path) / f"tiny-{style}-{seed}"
    tokenizer = make_tokenizer(style)
    model = make_tiny_llama(tokenizer, seed=seed)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    reloaded = AutoTokenizer.from_pretrained(path)
    if reloaded.chat_template != tokenizer.chat_template:
        raise RuntimeError(f"chat template did not survive save/load in {path}")
    return path


@contextmanager
def registered(spec: str, model: Any, tokenizer: Any) -> Iterator[Any]:
    """``model`` and ``tokenizer`` loadable as model ``spec`` inside the block (no hub, no files)."""
    from promptbake.builtin import models

    handle = models.ModelHandle(spec=spec, model=model, tokenizer=tokenizer, device="cpu")
    models.register_handle(handle)
    try:
        yield handle
    finally:
        models.release(handle)
