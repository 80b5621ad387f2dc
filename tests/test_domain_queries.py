"""Queries from the prompt's own domain: written by a model, cleaned, de-duplicated, split."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from promptbake import (
    Baker,
    ConfigError,
    Sample,
    SamplingConfig,
    Teacher,
    TeacherCapabilities,
)
from promptbake.cli import cli
from promptbake.stages import domain_queries as dq
from promptbake.stages.render import Renderer

GARDEN = ("You are Fern, the friendly support assistant of Greenleaf Garden Centre. You help customers with "
          "plants, seedlings, orders and delivery slots. Keep a warm, practical tone.")


class ScriptedWriter(Teacher):
    """A writer that answers from a list, in turn (near-duplicates and junk included)."""

    name = "scripted"
    capabilities = TeacherCapabilities(can_score=False)

    def __init__(self, tokenizer, texts):
        self.tok, self.texts, self.calls, self.asked = tokenizer, list(texts), 0, []

    def generate(self, prefixes, sampling: SamplingConfig):
        out = []
        for p in prefixes:
            self.asked.append(self.tok.decode(p.ids))
            text = self.texts[self.calls % len(self.texts)]
            self.calls += 1
            out.append([Sample(self.tok(text, add_special_tokens=False)["input_ids"], True)])
        return out

    def score(self, *a, **k):
        raise NotImplementedError


TEXTS = ["When can you deliver my tomato seedlings?", "when can you deliver my tomato seedlings??",
         "ok", "Do you sell peat-free compost in large bags?", "Can I change my delivery slot to Saturday?",
         "Which roses grow well in shade?", "Message: Do my basil plants need full sun?",
         "Can I change the delivery slot to Saturday please?", "How often should I water a new lemon tree?",
         "Is the garden centre open on bank holidays?"]


def test_written_queries_are_clean_distinct_split_and_recorded():
    from helpers import make_tokenizer

    tok = make_tokenizer("smollm2")
    writer = ScriptedWriter(tok, TEXTS)
    rows, measured = dq.write_queries(writer, Renderer(tok, "", 10**6), GARDEN, 5, heldout=2, seed=3,
                                      model="scripted-1", show_progress=False,
                                      examples=["Do you deliver on Sundays?"])
    texts = [r["messages"][0]["content"] for r in rows]
    assert len(rows) == 7 and len(set(texts)) == 7
    assert "ok" not in texts and all(not t.lower().startswith("message:") for t in texts)
    assert not dq.near_duplicates(texts)  # no two nearly alike, train and held-out included
    assert [r["split"] for r in rows].count("heldout") == 2
    assert all(r["writer"] == "scripted" and r["model"] == "scripted-1" and isinstance(r["seed"], int) for r in rows)
    assert measured["near_duplicates"] >= 2 and measured["unusable"] >= 1 and 0 < measured["distinct_2"] <= 1
    assert GARDEN in writer.asked[0] and "Do you deliver on Sundays?" in writer.asked[0]  # the prompt in view, seeded


def test_too_few_distinct_queries_is_one_sentence():
    from helpers import make_tokenizer

    tok = make_tokenizer("smollm2")
    with pytest.raises(ConfigError, match="distinct usable queries"):
        dq.write_queries(ScriptedWriter(tok, ["The same question every time?"]), Renderer(tok, "", 10**6),
                         GARDEN, 3, show_progress=False)


def test_followups_make_conversations():
    from helpers import make_tokenizer

    tok = make_tokenizer("smollm2")
    rows, _ = dq.write_queries(ScriptedWriter(tok, TEXTS), Renderer(tok, "", 10**6), GARDEN, 3, followups=2,
                               show_progress=False)
    assert all(len(r["messages"]) == 3 and {m["role"] for m in r["messages"]} == {"user"} for r in rows)


def test_near_duplicates_and_variety():
    assert dq.near_duplicates(["How do I water basil?", "how do I water  basil", "Which roses like shade?"]) == [1]
    assert dq.variety(["a b", "a b"]) == {"distinct_1": 0.5, "distinct_2": 0.5}
    assert dq.clean('User: "Can you deliver on Friday?"\nmore') == "Can you deliver on Friday?"
    assert dq.count_of("generate:12") == 12 and dq.count_of("q.jsonl") is None
    with pytest.raises(ConfigError, match="generate:N"):
        dq.count_of("generate:many")


def test_a_bake_writes_its_queries_with_the_teacher(tiny_model, bake_settings, monkeypatch):
    """queries = "generate:N": the teacher writes N queries (and the held-out ones) into the run
    directory before sampling, and the bake trains and evaluates on them."""
    from promptbake.builtin.hf import HFTeacher

    original = HFTeacher.generate
    texts = iter(TEXTS * 20)

    def writing(self, prefixes, sampling):
        if "Reply with the question only" not in self.tokenizer.decode(prefixes[0].ids):
            return original(self, prefixes, sampling)  # the bake's own samples
        return [[Sample(self.tokenizer(next(texts), add_special_tokens=False)["input_ids"], True)] for _ in prefixes]

    monkeypatch.setattr(HFTeacher, "generate", writing)
    settings = {**bake_settings, "max_queries": None, "max_heldout": 2}
    result = Baker(GARDEN, model=tiny_model(), queries="generate:4", **settings).run()
    rows = [json.loads(line) for line in (result.run_dir / "queries.jsonl").read_text().splitlines()]
    assert {r["messages"][0]["content"] for r in rows} <= {dq.clean(t) for t in TEXTS}  # the writer's
    assert [r["split"] for r in rows].count("train") == 4 and [r["split"] for r in rows].count("heldout") == 2
    assert result.metrics["trajectories"] == 4 * settings["samples_per_query"]
    assert result.eval["trajectories"] == 2
    assert json.loads((result.run_dir / "queries-measured.json").read_text())["kept"] == 6


@pytest.mark.slow
def test_the_embedded_model_writes_queries_from_the_command_line(tmp_path):
    out = tmp_path / "garden.jsonl"
    got = CliRunner().invoke(cli, ["queries", "-p", GARDEN, "-n", "8", "--heldout", "4", "-o", str(out), "--quiet"])
    assert got.exit_code == 0, got.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {r["model"] for r in rows} == {"smollm2-135m"}
    assert "distinct-1" in got.output
