"""The built-in query set and user query files."""

from __future__ import annotations

import json

import pytest

from promptbake.errors import ConfigError
from promptbake.queries import builtin_queries, load_queries


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
