"""Queries: the built-in set (with a fixed held-out split) and user files.

A JSONL line is one of ``{"messages": [...]}``, ``{"prompt": "..."}`` or
``{"question": "..."}``, optionally with ``"id"`` and ``"category"``. Other
local formats (CSV, Parquet, JSON) are read with ``datasets`` using the same
column names.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .types import Query

TEXT_KEYS = ("prompt", "question")
BUILTIN = "builtin"


def _query(row: dict[str, Any], where: str, index: int) -> Query:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object.")
    qid = str(row.get("id", index))
    category = row.get("category")
    if "messages" in row:
        msgs = row["messages"]
        if (not isinstance(msgs, list) or not msgs
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                           and m.get("role") in ("system", "user", "assistant") for m in msgs)):
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of "
                              f"{{'role': system|user|assistant, 'content': text}} objects.")
        if msgs[-1]["role"] != "user":
            raise ConfigError(f"{where}: the last message must be a user message.")
        messages = tuple({"role": m["role"], "content": m["content"]} for m in msgs)
    else:
        key = next((k for k in TEXT_KEYS if k in row), None)
        if key is None or not isinstance(row[key], str):
            raise ConfigError(f"{where}: needs a 'messages', 'prompt' or 'question' field.")
        messages = ({"role": "user", "content": row[key]},)
    if not messages[-1]["content"].strip():
        raise ConfigError(f"{where}: the query text is empty.")
    return Query(id=qid, messages=messages, category=category)


def builtin_queries(split: str = "train") -> list[Query]:
    """The bundled queries of one split ("train" or "heldout")."""
    text = resources.files("promptbake").joinpath("data/queries.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [_query(r, "built-in queries", i) for i, r in enumerate(rows) if r["split"] == split]


def load_queries(source: str | None, split: str = "train", limit: int | None = None) -> list[Query]:
    """Queries from ``source`` (a file), or the built-in ``split`` when source is None."""
    if source is None or source == BUILTIN:
        queries = builtin_queries(split)
    else:
        queries = _load_file(Path(source))
    if not queries:
        raise ConfigError(f"The query set {source or 'builtin:' + split} is empty.")
    seen: dict[str, int] = {}
    unique = []
    for q in queries:  # duplicate ids would collide in the run directory
        n = seen.get(q.id, 0)
        seen[q.id] = n + 1
        unique.append(q if n == 0 else Query(id=f"{q.id}~{n}", messages=q.messages, category=q.category))
    return unique[:limit] if limit else unique


def _load_file(path: Path) -> list[Query]:
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
        return [_query(row, f"{path} line {number}", number - 1) for number, row in rows]
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
        return [_query({"prompt": r["text"]}, f"{path} line {i + 1}", i)
                for i, r in enumerate(data) if r["text"].strip()]
    return [_query(dict(r), f"{path} row {i + 1}", i) for i, r in enumerate(data)]
