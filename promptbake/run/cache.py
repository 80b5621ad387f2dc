"""The teacher-target cache: safetensors shards, keyed by what produced them.

Targets are computed once per bake and reused by every epoch; a later run that
points at the same folder with the same key (model, teacher, prompt, target
kind, K and the exact trajectories) reuses them instead of calling the teacher.
Per response token a top-K entry costs 4K (int32 ids) + 4K (float32 log-probs)
+ 4 (tail) + 4 (the sampled id) = 8K + 8 bytes; full targets kept as the
teacher's hidden states cost 2H + 4 (H the model's width). Each shard holds one tensor per
field for all its targets, so the safetensors header adds well under a byte per
token.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write, write_json
from ..core.types import Targets, Trajectory

FIELDS = ("sampled_ids", "topk_ids", "topk_logprobs", "tail_logprob", "full_logprobs", "weight", "hidden")
# Stored narrower than in memory. Full targets (and hidden states) stay float16 once
# loaded too: full_kl takes them to float32 a chunk at a time.
STORED = {"sampled_ids": "int32", "full_logprobs": "float16", "hidden": "float16"}
LOADED = {"sampled_ids": "int64"}
# Part of every key: a cache in an older layout is recomputed, not misread.
FORMAT = 2


def as_stored(targets: Sequence[Targets]) -> Sequence[Targets]:
    """Targets held as the cache stores them (full log-probs and hidden states in float16),
    so training on freshly scored targets and on ones read back from the cache is the same."""
    for t in targets:
        if t.full_logprobs is not None:
            t.full_logprobs = t.full_logprobs.half()
        if t.hidden is not None:
            t.hidden = t.hidden.half()
    return targets


def targets_key(*, model: str, teacher: str, prompt_sha256: str, kind: str, top_k: int | None,
                trajectories: Sequence[Trajectory]) -> str:
    """A sha256 over everything that determines the targets."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, model, teacher, prompt_sha256, kind, top_k]).encode())
    for t in trajectories:
        h.update(json.dumps([t.prompted_ids, t.response_len]).encode())
    return h.hexdigest()


SHARD_SIZE = 256  # targets per shard: the unit a crashed bake keeps


class TargetStore:
    """Targets of one bake in ``folder``: ``shard-NNNNN.safetensors`` files plus ``index.json``.

    Shards are written one at a time as they are computed, each atomically and
    tagged with the key; the index, written last, lists them all with their
    sizes. A bake that stops half-way keeps its finished shards and a later one
    with the same key computes only the rest.
    """

    def __init__(self, folder: str | Path, shard_size: int | None = None):
        self.folder = Path(folder)
        self.shard_size = shard_size or SHARD_SIZE

    def shard_path(self, n: int) -> Path:
        return self.folder / f"shard-{n:05d}.safetensors"

    def write(self, targets: Sequence[Targets], key: str) -> None:
        """Write every shard, then the index that makes them valid as a whole."""
        for n, start in enumerate(range(0, len(targets), self.shard_size)):
            self.write_shard(n, targets[start: start + self.shard_size], key)
        self.write_index(len(targets), key)

    def write_shard(self, n: int, targets: Sequence[Targets], key: str) -> None:
        """Write shard ``n`` (targets ``n * shard_size`` onwards) atomically: per field, one
        tensor of all the targets' rows, and their row counts in ``lengths``."""
        import torch
        from safetensors.torch import save_file

        from ..core.interfaces import pad_topk

        start = n * self.shard_size
        tensors = {"lengths": torch.tensor([len(t) for t in targets], dtype=torch.int64)}
        for name in FIELDS:
            parts = [getattr(t, name) for t in targets]
            if all(p is None for p in parts):
                continue
            if name == "weight":  # a target without weights trains on every position
                parts = [torch.ones(len(t)) if p is None else p for t, p in zip(targets, parts)]
            elif any(p is None for p in parts):
                raise ValueError(f"targets to cache disagree on whether they hold {name}")
            if name in ("topk_ids", "topk_logprobs"):
                parts = pad_topk(parts, name)  # hosted teachers' rows can be narrower
            value = torch.cat(parts)
            if name in STORED:
                value = value.to(getattr(torch, STORED[name]))
            tensors[name] = value.contiguous()
        metadata = {"key": key, "start": str(start), "count": str(len(targets))}
        atomic_write(self.shard_path(n), lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def write_index(self, count: int, key: str) -> None:
        shards = [{"file": self.shard_path(n).name, "bytes": self.shard_path(n).stat().st_size}
                  for n in range(math.ceil(count / self.shard_size))]
        write_json(self.folder / "index.json", {"key": key, "count": count, "shard_size": self.shard_size,
                                                "shards": shards})

    def index(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / "index.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def read(self, key: str) -> list[Targets] | None:
        """The cached targets if they exist for ``key`` and every shard is whole; else None."""
        index = self.index()
        if index is None or index.get("key") != key:
            return None
        out: list[Targets] = []
        for n, shard in enumerate(index["shards"]):
            path = self.folder / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                return None  # truncated or missing: recompute
            count = min(self.shard_size, index["count"] - n * self.shard_size)
            part = self.read_shard(n, key, count)
            if part is None:
                return None
            out.extend(part)
        return out if len(out) == index["count"] else None

    def read_shard(self, n: int, key: str, count: int) -> list[Targets] | None:
        """Shard ``n`` if it was written for ``key`` and holds ``count`` whole targets; else None."""
        import torch
        from safetensors import safe_open

        path = self.shard_path(n)
        start = n * self.shard_size
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key or meta.get("count") != str(count) or meta.get("start") != str(start):
                    return None
                lengths = f.get_tensor("lengths").tolist()
                fields = {}
                for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                    if name in FIELDS:
                        value = f.get_tensor(name)
                        fields[name] = value.to(getattr(torch, LOADED[name])) if name in LOADED else value
        except Exception:  # noqa: BLE001 - missing, truncated or garbled: safetensors raises several types
            return None
        rows = sum(lengths)
        if len(lengths) != count or "sampled_ids" not in fields or any(v.shape[0] != rows for v in fields.values()):
            return None
        split = {name: value.split(lengths) for name, value in fields.items()}
        return [Targets(**{name: parts[i] for name, parts in split.items()}) for i in range(count)]

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*.safetensors"))
