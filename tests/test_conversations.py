"""Whole conversations: every assistant turn answered by the prompted teacher in order and trained
with the prompt absent, each turn aligned on its own; tool calls trained, tool results never."""

from __future__ import annotations

import json

import pytest
from families import make_family_model, make_family_tokenizer
from helpers import make_tiny_llama, make_tokenizer, registered

from promptbake import Baker, ConfigError, Query
from promptbake.builtin import models
from promptbake.stages.generate import trained_turns
from promptbake.stages.render import Renderer, check_alignment

PROMPT = "You are a pirate captain. Always answer like a pirate, matey."
CONVERSATIONS = [
    [{"role": "user", "content": "What is rain?"}, {"role": "user", "content": "And snow?"}],
    [{"role": "user", "content": "Tell me about the sea."}, {"role": "user", "content": "Why is it salty?"}],
    [{"role": "user", "content": "Hello there!"}, {"role": "user", "content": "How are you today?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "user", "content": "Another one?"}],
]
HELD = [[{"role": "user", "content": "What is a ship?"}, {"role": "user", "content": "How big is it?"}],
        [{"role": "user", "content": "Where is the island?"}, {"role": "user", "content": "Can we go?"}]]
SETTINGS = {"samples_per_query": 2, "max_new_tokens": 8, "epochs": 2, "batch_size": 4, "lr": 3e-3,
            "progress": False, "device": "cpu", "probe_samples": 0}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TOOL_RESULT = "sunny and twenty-two degrees"


def write(path, conversations, split=None, **extra):
    rows = [{"id": f"c{i}", "messages": c, **({"split": split} if split else {}), **extra}
            for i, c in enumerate(conversations)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny(style):
    if style in ("chatml", "smollm2", "llama3"):
        tok = make_tokenizer(style)
        return tok, make_tiny_llama(tok)
    tok = make_family_tokenizer(style)
    models.ensure_pad(tok)
    return tok, make_family_model(style, tok)


@pytest.mark.parametrize("style", ["smollm2", "llama3", "qwen3"])
def test_each_turn_is_answered_in_order_and_trained_with_the_prompt_absent(style, tmp_path):
    tok, model = tiny(style)
    train = write(tmp_path / "train.jsonl", CONVERSATIONS)
    held = write(tmp_path / "held.jsonl", HELD)
    with registered(f"conv-{style}", model, tok):
        result = Baker(PROMPT, model=f"conv-{style}", queries=train, heldout=held, out=str(tmp_path / "run"),
                       **SETTINGS).run()
    run = result.run_dir
    trajs = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajs) == len(CONVERSATIONS) * 2 * 2  # 2 samples, 2 turns each
    assert [t.get("turn", 1) for t in trajs[:4]] == [1, 2, 1, 2]  # query, sample, turn order
    r = Renderer(tok, PROMPT, 4096)
    for first, second in zip(trajs[0::2], trajs[1::2]):
        q = CONVERSATIONS[int(first["query_id"][1:])]
        # Turn 2's history is the teacher's own turn-1 answer, on both sides alike.
        history = Query(first["query_id"], (q[0], {"role": "assistant", "content": first["text"]}, q[1]))
        assert second["prompted_ids"][: -second["response_len"]] == r.prefix(history, True)
        assert second["unprompted_ids"][: -second["response_len"]] == r.prefix(history, False)
        for t in (first, second):
            from promptbake.core.types import Trajectory

            check_alignment(Trajectory.from_json(t))
    by_turn = result.eval["by_turn"]
    assert set(by_turn) == {"1", "2"} and all(v["tokens"] > 0 for v in by_turn.values())
    assert sum(v["tokens"] for v in by_turn.values()) == result.eval["tokens"]
    assert result.metrics["steps"] == 2 * 4  # the schedule counted every turn: 16 trajectories, batches of 4


def test_single_queries_grow_to_n_turns_and_train_turns_last(tmp_path, tiny_model, bake_settings):
    spec = tiny_model()
    result = Baker(PROMPT, model=spec, turns=3, train_turns="last", **bake_settings).run()
    trajs = [json.loads(line) for line in (result.run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert {t["turn"] for t in trajs} == {3}  # only each conversation's last turn is trained
    assert len(trajs) == bake_settings["max_queries"] * bake_settings["samples_per_query"]
    held = [json.loads(line) for line in (result.run_dir / "heldout.jsonl").read_text().splitlines()]
    assert sorted({t.get("turn", 1) for t in held}) == [1, 2, 3]  # every held-out turn is evaluated
    assert set(result.eval["by_turn"]) == {"1", "2", "3"}
    assert trained_turns([Query("a", ({"role": "user", "content": "x"},) * 3)], 2) == 6


def test_a_template_that_rerenders_history_is_aligned_per_turn():
    """Qwen3 drops the think block of an assistant turn once it is history: a turn's history is
    what the template renders, on both sides alike, and the alignment holds per turn."""
    tok = make_family_tokenizer("qwen3")
    r = Renderer(tok, PROMPT, 4096, chat_template_kwargs={"enable_thinking": True})
    earlier = {"role": "assistant", "content": "<think>\nsecret reasoning\n</think>\n\nArr, water."}
    q = Query("q", ({"role": "user", "content": "What is rain?"}, earlier, {"role": "user", "content": "And snow?"}))
    for prompted in (True, False):
        assert "secret reasoning" not in tok.decode(r.prefix(q, prompted))
    given = r.given(Query("q", q.messages[:1]), earlier)  # the earlier turn itself, trained as given
    check_alignment(given)
    assert "secret reasoning" in given.text


def _tool_conversation():
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    return [{"role": "user", "content": "What's the weather in Paris?"}, call,
            {"role": "tool", "content": TOOL_RESULT, "name": "get_weather"}]


def test_tool_calls_are_trained_and_tool_results_are_only_context(tmp_path):
    tok, model = tiny("qwen3")
    rows = [{"id": f"t{i}", "messages": _tool_conversation(), "tools": [WEATHER]} for i in range(4)]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result_ids = tok(TOOL_RESULT, add_special_tokens=False)["input_ids"]
    with registered("conv-tools", model, tok):
        result = Baker(PROMPT, model="conv-tools", queries=str(path), evaluate=False, out=str(tmp_path / "run"),
                       **SETTINGS).run()
    trajs = [json.loads(line) for line in (result.run_dir / "trajectories.jsonl").read_text().splitlines()]
    calls, answers = [t for t in trajs if t.get("turn", 1) == 1], [t for t in trajs if t.get("turn") == 2]
    assert len(calls) == len(answers) == 4 * 2
    for t in calls:  # the assistant's tool call is the trained response
        assert "get_weather" in t["text"] and "Paris" in t["text"]
    for t in answers:
        response = t["prompted_ids"][-t["response_len"]:]
        prefix = t["prompted_ids"][: -t["response_len"]]

        def holds(seq):
            return any(seq[i: i + len(result_ids)] == result_ids for i in range(len(seq)))

        assert holds(prefix) and not holds(response)  # the tool result is context, never trained
    # The loss sees exactly the response rows: no position of the tool result has a target.
    index = json.loads((result.run_dir / "targets" / "index.json").read_text())
    assert index["count"] == len(trajs)
    from safetensors.torch import load_file

    shard = load_file(result.run_dir / "targets" / index["shards"][0]["file"])
    assert shard["lengths"].tolist() == [t["response_len"] for t in trajs][: len(shard["lengths"])]


def test_a_template_without_tools_is_refused_in_one_sentence(tmp_path, tiny_model, bake_settings):
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"messages": _tool_conversation(), "tools": [WEATHER]}) + "\n")
    with pytest.raises(ConfigError, match="does not render tools"):
        Baker(PROMPT, model=tiny_model(), queries=str(path), **bake_settings).run()


def test_conversation_rows_are_checked(tmp_path):
    from promptbake.stages.queries import load_queries

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(ConfigError, match="last message must be a user message"):
        load_queries(str(path))
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi", "tool_calls": [{}]}]}) + "\n")
    with pytest.raises(ConfigError, match="tool_calls must be a list of calls on an assistant message"):
        load_queries(str(path))



def test_probes_are_scored_per_turn_on_each_sides_own_answers(tmp_path, tiny_model, bake_settings):
    spec = tiny_model()
    result = Baker(PROMPT, model=spec, turns=2, probes=["max_length=40"], **bake_settings).run()
    assert set(result.eval["probes_by_turn"]) == {"1", "2"}
    rows = [json.loads(line) for line in (result.run_dir / "answers.jsonl").read_text().splitlines()]
    assert sorted({r["turn"] for r in rows}) == [1, 2]
    assert all({"base", "prompted", "baked"} <= set(r) for r in rows)
    assert len(rows) == 2 * bake_settings["max_heldout"]
