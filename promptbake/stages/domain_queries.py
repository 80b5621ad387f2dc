"""Queries from the prompt's own domain: a writer model (the teacher by default, the system prompt
in view) writes the messages this prompt's users would send (``promptbake queries``, or
``queries = "generate:N"`` in a bake).

A garden centre's support bot is asked about seedlings and delivery slots, not about the moon:
baking it on generic queries trains it where its users never go. The writer samples many
candidates; empty, cut-off and overlong ones are dropped, and near-duplicates removed with
rapidfuzz (``token_set_ratio`` over words: short messages that differ by a few inserted or
reordered words are the duplicates a sampler makes; MinHash, made for long documents, is
unreliable on a dozen words and would bring scipy). The held-out split is drawn after
de-duplicating the union, so no held-out query nearly repeats a training one. Every query is
saved with the writer, model and seed that made it. ``followups`` more user turns each, written
by the same writer from the conversation's earlier user turns, make whole conversations.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import write_text
from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.interfaces import SamplingConfig, Teacher
from ..core.progress import counter
from ..core.types import Prefix, Query
from ..run.distributed import Ranks
from .render import Renderer

# Worded for the smallest writers too: asked as the assistant itself, with its instructions as the
# opening, the embedded 135M model writes questions where a third-person framing made it answer.
ASK = ("{prompt}\n\nWhat is one short question a user might ask you? Reply with the question only.{examples}")
EXAMPLES = " Questions users asked before:\n{lines}\nWrite a new one, different from these."
FOLLOW = ("A user is talking with an AI assistant that follows these instructions:\n\n{prompt}\n\n"
          "The user's messages so far:\n{lines}\n\nWrite the user's next message. Write only the message.")
SIMILAR = 90  # rapidfuzz token_set_ratio at or above which two queries are near-duplicates
GENERATE = "generate:"  # queries = "generate:N" in a bake
FILE = "queries.jsonl"  # where a bake keeps the queries it generated (its run directory)


def clean(text: str, max_words: int = 60) -> str | None:
    """The first line of a written message, unquoted; None when it is no usable query."""
    line = next((x.strip() for x in text.strip().splitlines() if x.strip()), "")
    line = re.sub(r"^(user|message|question)\s*[:\-]\s*", "", line, flags=re.IGNORECASE).strip().strip('"').strip()
    words = line.split()
    if len(words) < 3 or len(words) > max_words or not re.search(r"[A-Za-z\u00C0-\uFFFF]", line):
        return None
    return line


def near_duplicates(texts: Sequence[str], threshold: int = SIMILAR) -> list[int]:
    """Indices of the texts that nearly repeat an earlier one (the later of each pair)."""
    from rapidfuzz import fuzz, process, utils

    kept: list[str] = []
    dropped = []
    for i, text in enumerate(texts):
        if kept and process.extractOne(text, kept, scorer=fuzz.token_set_ratio, processor=utils.default_process,
                                       score_cutoff=threshold) is not None:
            dropped.append(i)
        else:
            kept.append(text)
    return dropped


def variety(texts: Sequence[str]) -> dict[str, float]:
    """distinct-1 and distinct-2 over the words of ``texts`` (1.0: no word or pair repeats)."""
    out: dict[str, float] = {}
    words = [t.lower().split() for t in texts]
    for n in (1, 2):
        grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    return out


def _prefix(renderer: Renderer, text: str) -> Prefix:
    q = Query(id="writer", messages=({"role": "user", "content": text},))
    return Prefix(ids=renderer.prefix(q, False), messages=tuple(renderer.messages(q, False)))


def write_queries(writer: Teacher, renderer: Renderer, prompt: str, n: int, *, heldout: int = 0,
                  examples: Sequence[str] = (), followups: int = 0, seed: int = 0, model: str = "",
                  show_progress: bool = True, max_new_tokens: int = 64) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``n`` training and ``heldout`` held-out queries (JSONL rows with ``split``, the writer, model and
    seed) and what was measured (candidates, near-duplicate rate, distinct-n)."""
    want = n + heldout
    rng = random.Random(seed)
    kept: list[tuple[str, int]] = []
    candidates = duplicates = unusable = 0
    per_round = max(8, 2 * want)
    with counter(want, "write queries", show_progress, unit="query") as bar:
        for r in range(12):  # rounds of candidates until enough distinct ones are kept
            shots = [EXAMPLES.format(lines="\n".join(f"- {e}" for e in rng.sample(list(examples), min(3, len(examples)))))
                     if examples else "" for _ in range(per_round)]
            prefixes = [_prefix(renderer, ASK.format(prompt=prompt, examples=s)) for s in shots]
            sampling = SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_new_tokens=max_new_tokens,
                                      min_new_tokens=1, seed=seed * 1000 + r, stop_ids=list(renderer.stop_ids))
            texts = [renderer.tokenizer.decode([t for t in g[0].token_ids if t not in renderer.stop_ids],
                                               skip_special_tokens=True) for g in writer.generate(prefixes, sampling)]
            candidates += len(texts)
            fresh = [(c, seed * 1000 + r) for c in map(clean, texts) if c is not None]
            unusable += len(texts) - len(fresh)
            known = [*examples, *(t for t, _ in kept)]  # a new query may repeat neither
            drop = set(near_duplicates([*known, *(t for t, _ in fresh)]))
            start = len(kept)
            for i, item in enumerate(fresh):
                if len(known) + i in drop:
                    duplicates += 1
                elif len(kept) < want:
                    kept.append(item)
            bar.update(len(kept) - start)
            if len(kept) >= want:
                break
    if len(kept) < want:
        raise ConfigError(f"The writer gave {len(kept)} distinct usable queries of the {want} asked for "
                          f"({candidates} written, {duplicates} near-duplicates, {unusable} unusable); ask for fewer, "
                          f"give example queries, or use a stronger writer (writer=...).")
    order = list(range(want))
    rng.shuffle(order)
    rows = []
    for place, i in enumerate(order):
        text, sample_seed = kept[i]
        rows.append({"id": f"gen-{place:05d}", "messages": [{"role": "user", "content": text}],
                     "split": "train" if place < n else "heldout", "writer": writer.name, "model": model,
                     "seed": sample_seed})
    if followups:
        _add_followups(writer, renderer, prompt, rows, followups, seed, max_new_tokens)
    texts = [r["messages"][0]["content"] for r in rows]
    measured = {"asked": want, "candidates": candidates, "kept": len(rows), "near_duplicates": duplicates,
                "unusable": unusable, "near_duplicate_rate": duplicates / max(candidates - unusable, 1),
                **variety(texts)}
    return rows, measured


def _add_followups(writer: Teacher, renderer: Renderer, prompt: str, rows: list[dict[str, Any]], turns: int,
                   seed: int, max_new_tokens: int) -> None:
    """``turns`` more user turns on every row, each written from the row's earlier user turns."""
    for t in range(turns):
        prefixes = [_prefix(renderer, FOLLOW.format(prompt=prompt, lines="\n".join(
            f"- {m['content']}" for m in row["messages"]))) for row in rows]
        sampling = SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_new_tokens=max_new_tokens, min_new_tokens=1,
                                  seed=seed * 1000 + 500 + t, stop_ids=list(renderer.stop_ids))
        for row, group in zip(rows, writer.generate(prefixes, sampling)):
            text = renderer.tokenizer.decode([x for x in group[0].token_ids if x not in renderer.stop_ids],
                                             skip_special_tokens=True)
            row["messages"].append({"role": "user", "content": clean(text) or "Can you tell me more?"})


def save(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return Path(path)


def count_of(source: str | None) -> int | None:
    """N of a ``generate:N`` queries setting, else None."""
    if not source or not source.startswith(GENERATE):
        return None
    raw = source[len(GENERATE):]
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"queries = '{source}': write generate:N with N a positive number of queries.")
    return int(raw)


def generated(config: BakeConfig, writer: Teacher, renderer: Renderer, folder: str | Path,
              ranks: Ranks | None = None) -> BakeConfig:
    """A bake's settings with ``queries = "generate:N"`` resolved to a file of N training queries
    (and held-out ones, max_heldout or 48, unless ``heldout`` names a file) written by ``writer`` into
    ``folder``; a resumed bake reads the file it wrote. Under a distributed launch (``ranks``)
    rank 0 writes them (the near-duplicates are removed over the whole set) while the others
    wait, then every process reads the file."""
    from dataclasses import replace

    n = count_of(config.queries)
    assert n is not None
    path = Path(folder) / FILE
    ranks = ranks or Ranks()
    if ranks.main and not (config.resume and path.is_file()):
        held = 0 if config.heldout is not None or not config.evaluate else (config.max_heldout or 48)
        rows, measured = write_queries(writer, renderer, prompt_text(config), n, heldout=held, seed=config.seed,
                                       model=config.teacher_model or config.model, show_progress=config.progress)
        save(rows, path)
        write_text(Path(folder) / "queries-measured.json", json.dumps(measured, indent=2) + "\n")
    ranks.gather(None)  # the file is whole for every process
    return replace(config, queries=str(path))


def prompt_text(config: BakeConfig) -> str:
    prompt = config.prompt
    if not isinstance(prompt, str):
        raise ConfigError("queries = generate:N writes queries for one system prompt, not a mixture; "
                          "write them with promptbake queries for each prompt and join the files.")
    return prompt
