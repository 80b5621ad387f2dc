"""Self-tests for the offline tokenizer/model fixtures in ``tests/helpers.py``."""

from __future__ import annotations

import pytest
import torch
from helpers import (  # conftest.py puts tests/ on sys.path
    SMOLLM2_DEFAULT_SYSTEM,
    STYLES,
    chat_ids,
    make_tiny_llama,
    make_tokenizer,
    save_tiny_model,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]
USER_ONLY = [{"role": "user", "content": "Hi"}]

CHATML_CONV = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
)
LLAMA3_CONV = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
)

EXPECTED_CONV = {
    "chatml": CHATML_CONV,
    "smollm2": CHATML_CONV,
    "llama3": LLAMA3_CONV,
    # Qwen3 gives the final assistant turn (after the last user message) a think block.
    "qwen3": CHATML_CONV.replace("assistant\nHello!", "assistant\n<think>\n\n</think>\n\nHello!"),
}
EXPECTED_GEN_PROMPT = {
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "smollm2": (
        f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen3": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("style", STYLES)
def test_renders_conversation_and_generation_prompt(style: str) -> None:
    tok = make_tokenizer(style)
    assert tok.apply_chat_template(CONV, tokenize=False) == EXPECTED_CONV[style]
    rendered = tok.apply_chat_template(USER_ONLY, tokenize=False, add_generation_prompt=True)
    assert rendered == EXPECTED_GEN_PROMPT[style]


@pytest.mark.parametrize("style", STYLES)
def test_special_tokens_and_chat_ids(style: str) -> None:
    tok = make_tokenizer(style)
    assert tok.eos_token is not None and tok.pad_token is not None
    assert 400 <= len(tok) <= 600
    text = tok.apply_chat_template(CONV, tokenize=False)
    ids = chat_ids(tok, CONV)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert ids.count(tok.eos_token_id) == 3  # one end-of-turn token per message
    # Every special token is a single id.
    for special in tok.all_special_tokens:
        assert len(tok.encode(special, add_special_tokens=False)) == 1


def test_apply_chat_template_returns_batch_encoding_by_default() -> None:
    # transformers 5: tokenize=True defaults to return_dict=True; chat_ids normalises it.
    tok = make_tokenizer("chatml")
    out = tok.apply_chat_template(USER_ONLY, tokenize=True)
    ids = out["input_ids"] if not isinstance(out, list) else out
    assert list(ids) == chat_ids(tok, USER_ONLY)
    assert chat_ids(tok, USER_ONLY, return_dict=True) == chat_ids(tok, USER_ONLY)


def test_smollm2_keeps_explicit_system_prompt() -> None:
    tok = make_tokenizer("smollm2")
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template(CONV, tokenize=False)
    assert SMOLLM2_DEFAULT_SYSTEM not in rendered
    assert SMOLLM2_DEFAULT_SYSTEM in tok.apply_chat_template(USER_ONLY, tokenize=False)


def test_qwen3_thinking_switch_and_history_stripping() -> None:
    tok = make_tokenizer("qwen3")
    off = tok.apply_chat_template(USER_ONLY, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off == EXPECTED_GEN_PROMPT["qwen3"] + "<think>\n\n</think>\n\n"
    on = tok.apply_chat_template(USER_ONLY, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert on == EXPECTED_GEN_PROMPT["qwen3"]
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nplan\n</think>\n\nHello!"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = tok.apply_chat_template(history, tokenize=False)
    assert "<|im_start|>assistant\nHello!<|im_end|>\n" in rendered
    assert "plan" not in rendered
    # <think> and </think> are single (non-special) tokens, as in the real vocab.
    think_ids = tok.encode("<think></think>", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(think_ids) == ["<think>", "</think>"]
    assert tok.decode(think_ids, skip_special_tokens=True) == "<think></think>"


def test_llama3_single_bos() -> None:
    tok = make_tokenizer("llama3")
    bos = tok.bos_token_id
    for out in (
        tok.apply_chat_template(CONV, tokenize=True, return_dict=False),
        tok.apply_chat_template(CONV, tokenize=True)["input_ids"],
        chat_ids(tok, USER_ONLY, add_generation_prompt=True),
    ):
        assert out[0] == bos and list(out).count(bos) == 1
    # Like the real tokenizer, plain encoding adds BOS, so encoding the *rendered*
    # text must use add_special_tokens=False (or you get two BOS tokens).
    text = tok.apply_chat_template(CONV, tokenize=False)
    assert tok(text, add_special_tokens=False)["input_ids"].count(bos) == 1
    assert tok(text)["input_ids"][:2] == [bos, bos]


@pytest.mark.parametrize("style", STYLES)
def test_unicode_round_trip(style: str) -> None:
    tok = make_tokenizer(style)
    text = "héllo 世界 🙂 — ÆØÅ\tß\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_tokenizer_calls_are_independent() -> None:
    a, b = make_tokenizer("chatml"), make_tokenizer("chatml")
    assert a is not b and a.get_vocab() == b.get_vocab()
    a.add_tokens(["<extra>"])
    assert len(a) == len(b) + 1 and len(make_tokenizer("chatml")) == len(b)


def test_tiny_model_forward_and_generate() -> None:
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok, seed=0)
    assert not model.training and model.dtype == torch.float32
    assert model.config.vocab_size == len(tok) and not model.config.tie_word_embeddings
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    ids = torch.tensor([chat_ids(tok, USER_ONLY, add_generation_prompt=True)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 4
    # Same seed, same weights.
    same = make_tiny_llama(tok, seed=0)
    assert torch.equal(same.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("style", ["smollm2", "llama3"])
def test_save_tiny_model_round_trip(tmp_path, style: str) -> None:
    path = save_tiny_model(tmp_path, style=style, seed=1)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    orig = make_tokenizer(style)
    assert tok.chat_template == orig.chat_template
    assert tok.apply_chat_template(CONV, tokenize=False) == EXPECTED_CONV[style]
    assert chat_ids(tok, CONV) == chat_ids(orig, CONV)
    assert tok("hi")["input_ids"] == orig("hi")["input_ids"]  # add_bos behaviour survives
    assert model.config.vocab_size == len(tok)
    expected = make_tiny_llama(orig, seed=1)
    assert torch.equal(model.lm_head.weight, expected.lm_head.weight)
