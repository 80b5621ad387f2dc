"""The teacher-target cache: safetensors shards, keyed by what produced them.

Targets are computed once per bake and reused by every epoch; a later run that
points at the same folder with the same key (model, teacher, prompt, target
kind, K and the exact trajectories) reuses them instead of calling the teacher.
Per response token a top-K entry costs 4K (int32 ids) + 4K (float32 log-probs)
+ 4 (tail) + 4 (the sampled id) = 8K + 8 bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .rundir import atomic_write, write_json
from .types import Targets, Trajectory

FIELDS = ("sampled_ids", "topk_ids", "topk_logprobs", "tail_logprob", "full_logprobs", "weight")


def targets_key(*, model: str, teacher: str, prompt_sha256: str, kind: str, top_k: int | None,
                trajectories: Sequence[Trajectory]) -> str:
    """A sha256 over everything that determines the targets."""
    h = hashlib.sha256()
    h.update(json.dumps([model, teacher, prompt_sha256, kind, top_k]).encode())
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
        """Write shard ``n`` (targets ``n * shard_size`` onwards) atomically."""
        import torch
        from safetensors.torch import save_file

        start = n * self.shard_size
        tensors = {}
        for i, t in enumerate(targets):
            for name in FIELDS:
                value = getattr(t, name)
                if value is None:
                    continue
                if name == "full_logprobs":
                    value = value.to(torch.float16)  # halves the largest target kind
                elif name == "sampled_ids":
                    value = value.to(torch.int32)
                tensors[f"{start + i}.{name}"] = value.contiguous()
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
        from safetensors import safe_open

        path = self.shard_path(n)
        start = n * self.shard_size
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key or meta.get("count") != str(count) or meta.get("start") != str(start):
                    return None
                items: dict[int, dict[str, Any]] = {}
                for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                    i, field = name.split(".", 1)
                    value = f.get_tensor(name)
                    if field == "full_logprobs":
                        value = value.float()
                    elif field == "sampled_ids":
                        value = value.long()
                    items.setdefault(int(i), {})[field] = value
        except Exception:  # noqa: BLE001 - missing, truncated or garbled: safetensors raises several types
            return None
        if sorted(items) != list(range(start, start + count)) or any("sampled_ids" not in v for v in items.values()):
            return None
        return [Targets(**items[start + i]) for i in range(count)]

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*.safetensors"))
