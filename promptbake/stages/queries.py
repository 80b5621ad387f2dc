"""Queries: the built-in set (with a fixed held-out split) and user files.

A JSONL line is one of ``{"messages": [...]}``, ``{"prompt": "..."}`` or
``{"question": "..."}``, optionally with ``"id"``, ``"category"`` and ``"split"``
(``train``, or ``heldout`` / ``test`` / ``eval`` / ``validation``). Other local
formats (CSV, Parquet, JSON) are read with ``datasets`` using the same column
names. A file with a split column gives its train rows to training and, unless
another held-out file is named, its held-out rows to the evaluation; training and
held-out queries with the same text are refused (:func:`bake_queries`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.types import Query

TEXT_KEYS = ("prompt", "question")
BUILTIN = "builtin"
SPLITS = {"train": "train", "heldout": "heldout", "held-out": "heldout", "held_out": "heldout", "test": "heldout",
          "eval": "heldout", "evaluation": "heldout", "validation": "heldout", "valid": "heldout", "val": "heldout"}


def _split_of(row: dict[str, Any], where: str) -> str | None:
    value = row.get("split")
    if value is None or value == "":
        return None
    name = SPLITS.get(str(value).strip().lower())
    if name is None:
        raise ConfigError(f"{where}: split '{value}' is neither train nor held-out "
                          f"(use train, or heldout, test, eval or validation).")
    return name


ROLES = ("system", "user", "assistant", "tool")
KEPT = ("role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content")  # message fields kept


def _message(m: Any, where: str) -> dict[str, Any]:
    """One chat message as the template takes it: text content, or an assistant's ``tool_calls``."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ConfigError(f"{where}: each message needs a role of {', '.join(ROLES)}.")
    calls = m.get("tool_calls")
    if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list)
                              or not all(isinstance(c, dict) for c in calls)):
        raise ConfigError(f"{where}: tool_calls must be a list of calls on an assistant message.")
    content = m.get("content")
    if not isinstance(content, str) and not (calls and content is None):
        raise ConfigError(f"{where}: each message needs text content (an assistant's tool call may have none).")
    return {k: m[k] for k in KEPT if k in m}


def _query(row: dict[str, Any], where: str, index: int) -> Query:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object.")
    qid = str(row.get("id", index))
    category = row.get("category")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of "
                              f"{{'role': system|user|assistant|tool, 'content': text}} objects.")
        messages = tuple(_message(m, where) for m in msgs)
        if messages[-1]["role"] not in ("user", "tool"):
            raise ConfigError(f"{where}: the last message must be a user message (or a tool result).")
        if not any(m["role"] == "user" for m in messages):
            raise ConfigError(f"{where}: a conversation needs a user message.")
    else:
        key = next((k for k in TEXT_KEYS if k in row), None)
        if key is None or not isinstance(row[key], str):
            raise ConfigError(f"{where}: needs a 'messages', 'prompt' or 'question' field.")
        messages = ({"role": "user", "content": row[key]},)
    if not str(messages[-1].get("content") or "").strip():
        raise ConfigError(f"{where}: the query text is empty.")
    tools = row.get("tools") or ()
    if not isinstance(tools, list | tuple) or not all(isinstance(t, dict) for t in tools):
        raise ConfigError(f"{where}: 'tools' must be a list of tool schemas (JSON objects).")
    return Query(id=qid, messages=messages, category=category, tools=tuple(tools))


def builtin_queries(split: str = "train") -> list[Query]:
    """The bundled queries of one split ("train" or "heldout")."""
    text = resources.files("promptbake").joinpath("data/queries.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [_query(r, "built-in queries", i) for i, r in enumerate(rows) if r["split"] == split]


def load_queries(source: str | None, split: str = "train", limit: int | None = None) -> list[Query]:
    """Queries from ``source`` (a file), or the built-in ``split`` when source is None.

    A file with a ``split`` column gives the rows of ``split`` (rows without one are
    training rows); a file without one gives all its rows.
    """
    if source is None or source == BUILTIN:
        queries = builtin_queries(split)
        name = f"builtin:{split}"
    else:
        rows = _load_file(Path(source))
        if any(s is not None for _, s in rows):
            queries = [q for q, s in rows if (s or "train") == split]
            name = f"{source} (split {split})"
        else:
            queries = [q for q, _ in rows]
            name = str(source)
    if not queries:
        raise ConfigError(f"The query set {name} is empty.")
    seen: dict[str, int] = {}
    unique = []
    for q in queries:  # duplicate ids would collide in the run directory
        n = seen.get(q.id, 0)
        seen[q.id] = n + 1
        unique.append(q if n == 0 else Query(id=f"{q.id}~{n}", messages=q.messages, category=q.category))
    return unique[:limit] if limit else unique


# Follow-ups that fit most conversations, for turns=N with followups="builtin" (a writer model
# writes conversation-specific ones with followups="generate").
FOLLOWUPS = (
    "Can you explain that in more detail?", "Why is that?", "Can you give me an example?",
    "How would you say that more simply?", "What is the most important part of that?",
    "Is there anything I should be careful about?", "Can you summarise that in one sentence?",
    "What would you recommend I do first?", "How does that compare with the alternatives?",
    "Could you say more about the last point?", "What do most people get wrong about this?",
    "Thanks! And what should I do next?", "Can you put that as a short list?",
    "I'm not sure I follow. Can you try again?", "What is a common mistake here?",
    "How long does that usually take?", "Is that always true?", "What if I only have a few minutes?",
    "Can you tell me more?", "Why does that matter?",
)


def with_followups(queries: list[Query], turns: int, seed: int) -> list[Query]:
    """Single-turn queries grown to ``turns`` user turns with follow-ups from :data:`FOLLOWUPS`, each
    conversation's drawn from ``seed`` and its id (conversations given in the data stay as they are)."""
    import random

    if turns <= 1:
        return queries
    out = []
    for q in queries:
        if len(q.messages) != 1:
            out.append(q)
            continue
        rng = random.Random(f"{seed}:{q.id}")
        extra = rng.sample(FOLLOWUPS, min(turns - 1, len(FOLLOWUPS)))
        out.append(Query(id=q.id, messages=(*q.messages, *({"role": "user", "content": t} for t in extra)),
                         category=q.category, tools=q.tools))
    return out


def has_split(source: str | None, split: str) -> bool:
    """Whether the user file ``source`` has rows marked ``split`` in a split column."""
    if source is None or source == BUILTIN:
        return False
    return any(s == split for _, s in _load_file(Path(source)))


def _text(query: Query) -> str:
    """What two queries share when they are the same query: every message, case and spacing aside."""
    return "\n".join(" ".join(str(m.get("content") or "").split()).casefold() for m in query.messages)


def check_disjoint(train: list[Query], heldout: list[Query]) -> None:
    """Refuse held-out queries whose text is also a training query's: they measure memory, not the bake."""
    seen = {_text(q) for q in train}
    shared = [q for q in heldout if _text(q) in seen]
    if shared:
        raise ConfigError(f"{len(shared)} of the {len(heldout)} held-out queries are also training queries "
                          f"(e.g. {shared[0].text[:60]!r}); the evaluation must use queries the bake never trained "
                          f"on, so remove them from one of the sets.")


def bake_queries(config: BakeConfig, evaluate: bool | None = None) -> tuple[list[Query], list[Query]]:
    """A bake's training and held-out queries: ``heldout`` when named, else the held-out rows of
    a ``queries`` file with a split column, else the built-in held-out split; checked disjoint,
    then single queries grown to ``turns`` user turns (:func:`with_followups`)."""
    c = config
    train = with_followups(load_queries(c.queries, "train", c.max_queries), c.turns, c.seed)
    if not (c.evaluate if evaluate is None else evaluate):
        return train, []
    source = c.heldout if c.heldout is not None or not has_split(c.queries, "heldout") else c.queries
    held = load_queries(source, "heldout", c.max_heldout)
    check_disjoint(train, held)
    return train, with_followups(held, c.turns, c.seed)


def _load_file(path: Path) -> list[tuple[Query, str | None]]:
    """Every query of a file with its split (None where the row names none)."""
    if not path.is_file():
        raise ConfigError(f"Query file {path} does not exist.")
    if path.suffix in (".jsonl", ".ndjson"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"Query file {path} is not valid UTF-8.") from None
        rows: list[tuple[int, Any]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number} is not valid JSON: {exc.msg}.") from None
        return [(_query(row, f"{path} line {number}", number - 1), _split_of(row, f"{path} line {number}"))
                for number, row in rows]
    builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".parquet": "parquet",
               ".txt": "text"}.get(path.suffix)
    if builder is None:
        raise ConfigError(f"Cannot read queries from {path}: use .jsonl, .json, .csv or .parquet.")
    import datasets

    kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    try:
        data = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable files
        raise ConfigError(f"Could not read queries from {path}: {exc}") from None
    if builder == "text":
        return [(_query({"prompt": r["text"]}, f"{path} line {i + 1}", i), None)
                for i, r in enumerate(data) if r["text"].strip()]
    return [(_query(dict(r), f"{path} row {i + 1}", i), _split_of(dict(r), f"{path} row {i + 1}"))
            for i, r in enumerate(data)]
