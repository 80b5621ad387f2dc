"""The alignment contract on ChatML/SmolLM2, Llama-3 and Qwen3 templates."""

from __future__ import annotations

import pytest
from helpers import chat_ids, make_tokenizer

from promptbake.core.errors import AlignmentError, ConfigError
from promptbake.core.types import Query
from promptbake.stages.render import Renderer, check_alignment, end_of_turn_id

STYLES = ["chatml", "smollm2", "llama3", "qwen3"]
EOT = {"chatml": "<|im_end|>", "smollm2": "<|im_end|>", "llama3": "<|eot_id|>", "qwen3": "<|im_end|>"}
PROMPT = "Always answer like a pirate."
QUERY = Query(id="q1", messages=({"role": "user", "content": "How do plants grow?"},))


@pytest.mark.parametrize("style", STYLES)
def test_end_of_turn_token_is_detected(style):
    tok = make_tokenizer(style)
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids(EOT[style])


@pytest.mark.parametrize("style", STYLES)
def test_text_response_matches_full_template_rendering(style):
    """Prefix + response + end-of-turn is exactly what the template renders for the whole conversation."""
    tok = make_tokenizer(style)
    r = Renderer(tok, PROMPT)
    answer = "Arr, they drink water and sunlight, matey!"
    traj = r.from_text(QUERY, answer)
    kw = {"enable_thinking": False} if style == "qwen3" else {}
    for prompted, ids in ((True, traj.prompted_ids), (False, traj.unprompted_ids)):
        msgs = r.messages(QUERY, prompted) + [{"role": "assistant", "content": answer}]
        full = chat_ids(tok, msgs, **kw)
        assert full[: len(ids)] == ids, f"{style} prompted={prompted}"
    assert traj.response_ids[-1] == r.eot_id and traj.finished
    assert tok.decode(traj.response_ids, skip_special_tokens=True) == answer


@pytest.mark.parametrize("style", STYLES)
def test_prompted_and_unprompted_share_the_response(style):
    tok = make_tokenizer(style)
    r = Renderer(tok, PROMPT)
    traj = r.from_text(QUERY, "Plants grow from seeds.")
    assert traj.prompted_ids[-traj.response_len:] == traj.unprompted_ids[-traj.response_len:]
    prompted_text = tok.decode(traj.prompted_ids)
    unprompted_text = tok.decode(traj.unprompted_ids)
    assert PROMPT in prompted_text and PROMPT not in unprompted_text


def test_unprompted_side_keeps_template_default_system_message():
    tok = make_tokenizer("smollm2")
    r = Renderer(tok, PROMPT)
    text = tok.decode(r.prefix(QUERY, prompted=False))
    assert "You are a helpful AI assistant named SmolLM" in text
    assert "named SmolLM" not in tok.decode(r.prefix(QUERY, prompted=True))


def test_qwen3_generation_prompt_has_thinking_disabled():
    tok = make_tokenizer("qwen3")
    r = Renderer(tok, PROMPT)
    assert r.kwargs == {"enable_thinking": False}
    assert tok.decode(r.prefix(QUERY, True)).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_llama3_prefix_has_one_bos():
    tok = make_tokenizer("llama3")
    ids = Renderer(tok, PROMPT).prefix(QUERY, True)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_response_is_cut_after_the_first_stop_token_which_is_kept():
    tok = make_tokenizer("chatml")
    r = Renderer(tok, PROMPT)
    body = tok("Hi there", add_special_tokens=False)["input_ids"]
    traj = r.trajectory(QUERY, body + [r.eot_id] + body)
    assert traj.response_ids == body + [r.eot_id] and traj.finished


def test_unfinished_response_has_no_end_of_turn():
    tok = make_tokenizer("chatml")
    r = Renderer(tok, PROMPT)
    body = tok("Hi there friend", add_special_tokens=False)["input_ids"]
    traj = r.trajectory(QUERY, body)
    assert traj.response_ids == body and not traj.finished


def test_truncation_cuts_the_response_end_identically_on_both_sides():
    tok = make_tokenizer("smollm2")
    long_answer = "word " * 200
    r_full = Renderer(tok, PROMPT, max_length=10_000)
    full = r_full.from_text(QUERY, long_answer)
    # SmolLM2's default system message makes the unprompted prefix the longer one here.
    limit = max(full.prompted_prefix_len, full.unprompted_prefix_len) + 7
    r = Renderer(tok, PROMPT, max_length=limit)
    traj = r.from_text(QUERY, long_answer)
    assert max(len(traj.prompted_ids), len(traj.unprompted_ids)) == limit
    assert traj.response_len == 7 and not traj.finished
    assert traj.response_ids == full.response_ids[:7]
    assert traj.unprompted_ids[: traj.unprompted_prefix_len] == full.unprompted_ids[: full.unprompted_prefix_len]
    check_alignment(traj)


def test_prefix_longer_than_context_is_a_clear_error():
    tok = make_tokenizer("chatml")
    r = Renderer(tok, "very long prompt " * 50, max_length=40)
    with pytest.raises(AlignmentError, match="max_length=40"):
        r.from_text(QUERY, "ok")


def test_existing_system_message_is_kept_and_prompt_prepended():
    tok = make_tokenizer("chatml")
    r = Renderer(tok, PROMPT)
    q = Query(id="s", messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}))
    assert r.messages(q, True)[0]["content"] == PROMPT + "\n\nBe brief."
    assert r.messages(q, False)[0]["content"] == "Be brief."


def test_tokenizer_without_chat_template_is_refused():
    tok = make_tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        Renderer(tok, PROMPT)


def test_misaligned_trajectory_is_detected():
    tok = make_tokenizer("chatml")
    traj = Renderer(tok, PROMPT).from_text(QUERY, "Plants grow.")
    traj.unprompted_ids[-2] += 1
    with pytest.raises(AlignmentError, match="differ"):
        check_alignment(traj)


LLAMA2_TEMPLATE = (  # meta-llama/Llama-2-7b-chat-hf: ' ' + content + ' ' + eos after an assistant turn
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def test_end_of_turn_is_the_first_special_token_after_the_reply_not_a_space():
    """Llama-2's template renders ' ' + content + ' ' + eos: the first token after the reply is a
    space, which as a stop id would end sampling at any lone space."""
    tok = make_tokenizer("smollm2")
    tok.chat_template = LLAMA2_TEMPLATE
    r = Renderer(tok, "Be brief.")
    assert r.eot_id == tok.eos_token_id
    space = tok(" ", add_special_tokens=False)["input_ids"]
    assert not set(space) & set(r.stop_ids)
    traj = r.from_text(Query("q", ({"role": "user", "content": "Hi"},)), "Hello there")
    assert traj.response_ids[-1] == tok.eos_token_id


def test_stop_ids_include_the_models_generation_eos_ids():
    """Llama-3.1 lists <|eom_id|> and <|eot_id|> in generation_config.eos_token_id, Qwen2.5
    <|im_end|> and <|endoftext|>: sampling stops at each, and the turn ends as the template does."""
    tok = make_tokenizer("qwen3")
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    r = Renderer(tok, "Be brief.", eos_ids=[tok.eos_token_id, other])
    assert other in r.stop_ids
    ids = tok("Hello", add_special_tokens=False)["input_ids"]
    traj = r.trajectory(Query("q", ({"role": "user", "content": "Hi"},)), [*ids, other, *ids])
    assert traj.finished and traj.response_ids == [*ids, r.eot_id]


def test_a_template_without_a_system_role_gets_the_prompt_in_the_first_user_message():
    tok = make_tokenizer("chatml")
    tok.chat_template = (  # Gemma-2's: a system message raises
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
        "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    r = Renderer(tok, "Be brief.")
    assert not r.system_role
    q = Query("q", ({"role": "user", "content": "Hi"},))
    assert r.messages(q, True) == [{"role": "user", "content": "Be brief.\n\nHi"}]
    assert r.messages(q, False) == [{"role": "user", "content": "Hi"}]
    check_alignment(r.from_text(q, "Hello"))
