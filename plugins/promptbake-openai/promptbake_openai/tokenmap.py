"""Map tokens an API returns as text (or bytes) to the student tokenizer's ids.

Hosted chat APIs return each generated token as a string (OpenAI also gives its
UTF-8 bytes; llama.cpp gives ``bytes: null``), and top log-probs keyed by those
strings. A token maps when exactly one student id has those bytes. The sampled
sequence is mapped left to right while every piece maps and the pieces spell
the returned text; the first piece that does not is where certainty ends:

* a match followed by non-ASCII bytes no piece accounts for is distrusted
  too (APIs that decode a partial UTF-8 character drop its bytes);
* the response ids are the mapped pieces, then the rest of the text
  re-tokenised by the student's tokenizer;
* rows up to and including that piece keep the teacher's distribution (their
  context is exactly the student's tokens); rows after it are excluded
  (weight 0), never shifted onto tokens they were not computed for;
* a top-K entry whose string is ambiguous is dropped, so its mass joins the
  tail bucket.

The end-of-turn row of a finished response is excluded too: APIs do not return
log-probs for the token that stopped generation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Piece:
    """One generated position as an API returns it."""

    token: str
    logprob: float
    bytes: bytes | None = None
    top: list[tuple[str, bytes | None, float]] = field(default_factory=list)

    @property
    def surface(self) -> bytes:
        return self.bytes if self.bytes is not None else self.token.encode("utf-8")


@dataclass
class Mapped:
    """A mapped response: student ids, per-row targets, and what could not be mapped."""

    ids: list[int]
    finished: bool
    topk: list[list[tuple[int, float]]]  # one list of (id, logprob) per response row
    weight: list[float]  # 1 = row keeps its target, 0 = excluded
    canonical: bool  # the ids equal the re-tokenised text (plus end of turn)
    entries: int = 0  # top-K entries returned
    entries_mapped: int = 0

    @property
    def excluded(self) -> int:
        return sum(1 for w in self.weight if w == 0)

    def targets(self) -> Any:
        """As promptbake Targets (rows padded to one width with -inf entries; excluded rows weight 0)."""
        from promptbake import sparse_targets

        return sparse_targets(self.topk, self.ids, weight=self.weight)


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable stand-in character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = repr(getattr(backend, "decoder", None)) if backend is not None else ""
    if "ByteLevel" in text:
        return "byte_level"
    if "ByteFallback" in text or "Metaspace" in text or "▁" in text:
        return "sentencepiece"
    return "decode"


def surface_bytes(tokenizer: Any) -> dict[int, bytes]:
    """The exact bytes each id stands for in decoded text (special tokens: their content)."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    kind = _decoder_kind(tokenizer)
    table = _byte_level_table() if kind == "byte_level" else {}
    special = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    out: dict[int, bytes] = {}
    for piece, idx in vocab.items():
        if idx in special:
            out[idx] = special[idx].encode("utf-8")
        elif kind == "byte_level" and all(c in table for c in piece):
            out[idx] = bytes(table[c] for c in piece)
        elif kind == "sentencepiece" and piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out[idx] = bytes([int(piece[3:5], 16)])
        elif kind == "sentencepiece":
            out[idx] = piece.replace("▁", " ").encode("utf-8")
        else:
            out[idx] = tokenizer.decode([idx]).encode("utf-8")
    return out


class TokenMap:
    """Bytes -> student ids, built once per tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.bytes_of = surface_bytes(tokenizer)
        ids_by_bytes: dict[bytes, list[int]] = defaultdict(list)
        for idx, b in self.bytes_of.items():
            ids_by_bytes[b].append(idx)
        self.ids_by_bytes = dict(ids_by_bytes)

    def lookup(self, surface: bytes) -> int | None:
        """The one id with these bytes, or None (unknown, empty or ambiguous)."""
        ids = self.ids_by_bytes.get(surface)
        return ids[0] if surface and ids and len(ids) == 1 else None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def map(self, pieces: Sequence[Piece], text: str, finished: bool, stop_id: int,
            with_targets: bool = True) -> Mapped:
        """Map one response (see the module docstring for the rules)."""
        data = text.encode("utf-8")
        ids: list[int] = []
        cursor = 0
        for piece in pieces:
            idx = self.lookup(piece.surface)
            if idx is None or not data.startswith(piece.surface, cursor):
                break
            ids.append(idx)
            cursor += len(piece.surface)
        # A piece whose text lost bytes (an API decoding part of a UTF-8 character
        # with errors ignored) still matches the text, and the next piece then
        # fails on the lost bytes: distrust the last match when non-ASCII follows.
        if ids and len(ids) < len(pieces) and cursor < len(data) and data[cursor] >= 0x80:
            cursor -= len(self.bytes_of[ids.pop()])
        # Re-tokenise what is left; back off to a character boundary if a mapped
        # piece ended inside a multi-byte character.
        while True:
            try:
                rest = data[cursor:].decode("utf-8")
                break
            except UnicodeDecodeError:
                cursor -= len(self.bytes_of[ids.pop()])
        known = len(ids)  # rows 0..known have the student's exact context
        if rest:
            ids.extend(self.encode(rest))
        canonical = ids == self.encode(text)
        if finished:
            ids.append(stop_id)
        out = Mapped(ids=ids, finished=finished, topk=[[] for _ in ids], weight=[0.0] * len(ids),
                     canonical=canonical)
        if not with_targets:
            return out
        for r in range(min(known + 1, len(pieces), len(ids) - int(finished))):
            row: dict[int, float] = {}
            for token, raw, lp in pieces[r].top:
                out.entries += 1
                idx = self.lookup(raw if raw is not None else token.encode("utf-8"))
                if idx is None or not math.isfinite(lp):
                    continue
                out.entries_mapped += 1
                row[idx] = max(lp, row.get(idx, -math.inf))
            if row:
                out.topk[r] = sorted(row.items(), key=lambda kv: -kv[1])
                out.weight[r] = 1.0
        return out
