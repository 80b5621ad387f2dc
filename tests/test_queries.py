"""The built-in query set and user query files."""

from __future__ import annotations

import json

import pytest

from promptbake import BakeConfig
from promptbake.core.errors import ConfigError
from promptbake.stages.queries import builtin_queries, load_queries


def test_builtin_set_is_large_diverse_and_split():
    train, held = builtin_queries("train"), builtin_queries("heldout")
    assert len(train) + len(held) >= 150
    assert len({q.category for q in train + held}) >= 10
    assert len(held) >= 30
    assert not {q.id for q in train} & {q.id for q in held}
    assert not {q.text for q in train} & {q.text for q in held}
    assert {q.category for q in held} == {q.category for q in train}  # every category held out


def test_jsonl_accepts_messages_prompt_and_question(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "How are you?"}], "id": "m"},
        {"prompt": "What is rain?"},
        {"question": "Why is grass green?", "category": "science"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    qs = load_queries(str(path))
    assert [q.text for q in qs] == ["How are you?", "What is rain?", "Why is grass green?"]
    assert len(qs[0].messages) == 3 and qs[0].id == "m" and qs[2].category == "science"


def test_malformed_line_reports_its_number(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        load_queries(str(path))


@pytest.mark.parametrize("line, message", [
    ('{"text": "no known key"}', "needs a 'messages', 'prompt' or 'question'"),
    ('{"prompt": "   "}', "empty"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "last message must be a user"),
    ('{"messages": "x"}', "non-empty list"),
    ('[1, 2]', "expected a JSON object"),
])
def test_invalid_rows_are_one_sentence(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_queries(str(path))


def test_non_utf8_empty_and_missing_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_queries(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_queries(str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        load_queries(str(tmp_path / "nope.jsonl"))


def test_csv_through_datasets_and_duplicate_ids(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("id,prompt\na,What is a cloud?\na,What is snow?\n")
    qs = load_queries(str(path))
    assert [q.text for q in qs] == ["What is a cloud?", "What is snow?"]
    assert [q.id for q in qs] == ["a", "a~1"]


def test_limit():
    assert len(load_queries(None, "train", limit=5)) == 5


def test_a_split_column_is_honoured_and_overlaps_are_refused(tmp_path, tiny_model, bake_settings):
    from promptbake import Baker

    rows = [{"prompt": f"Question {i}?", "split": "train"} for i in range(6)]
    rows += [{"prompt": "Held out one?", "split": "test"}, {"prompt": "Held out two?", "split": "heldout"}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [q.text for q in load_queries(str(path), "train")] == [f"Question {i}?" for i in range(6)]
    assert [q.text for q in load_queries(str(path), "heldout")] == ["Held out one?", "Held out two?"]
    settings = {**bake_settings, "max_queries": None, "max_heldout": None}
    result = Baker("Be a pirate.", model=tiny_model(), queries=str(path), **settings).run()
    assert result.eval["trajectories"] == 2  # the file's held-out rows, not the built-in ones
    # A held-out query that is also a training query is refused before any work.
    rows.append({"prompt": "  question 3? ", "split": "eval"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="1 of the 3 held-out queries are also training queries"):
        Baker("Be a pirate.", model=tiny_model(), queries=str(path), **{**settings, "out": str(tmp_path / "b")}).run()
    assert not (tmp_path / "b").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "split": "dev-ish"}) + "\n")
    with pytest.raises(ConfigError, match="neither train nor held-out"):
        load_queries(str(bad))


def test_the_builtin_splits_are_disjoint():
    from promptbake.stages.queries import bake_queries, check_disjoint

    train, held = bake_queries(BakeConfig())
    check_disjoint(train, held)
    assert len(train) == 152 and len(held) == 48
