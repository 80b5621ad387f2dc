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


class TargetStore:
    """Targets of one bake in ``folder``: ``shard-NNNNN.safetensors`` files plus ``index.json``."""

    def __init__(self, folder: str | Path, shard_size: int = 256):
        self.folder = Path(folder)
        self.shard_size = shard_size

    def write(self, targets: Sequence[Targets], key: str) -> None:
        """Write shards (each atomically), then the index that makes them valid."""
        import torch
        from safetensors.torch import save_file

        shards = []
        for n, start in enumerate(range(0, len(targets), self.shard_size)):
            tensors = {}
            for i, t in enumerate(targets[start: start + self.shard_size]):
                for name in FIELDS:
                    value = getattr(t, name)
                    if value is None:
                        continue
                    if name == "full_logprobs":
                        value = value.to(torch.float16)  # halves the largest target kind
                    elif name == "sampled_ids":
                        value = value.to(torch.int32)
                    tensors[f"{start + i}.{name}"] = value.contiguous()
            shard = f"shard-{n:05d}.safetensors"
            atomic_write(self.folder / shard, lambda tmp, t=tensors: save_file(t, tmp, metadata={"key": key}))
            shards.append({"file": shard, "bytes": (self.folder / shard).stat().st_size})
        write_json(self.folder / "index.json", {"key": key, "count": len(targets), "shards": shards})

    def index(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / "index.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def read(self, key: str) -> list[Targets] | None:
        """The cached targets if they exist for ``key`` and every shard is whole; else None."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        index = self.index()
        if index is None or index.get("key") != key:
            return None
        items: dict[int, dict[str, Any]] = {}
        for shard in index["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                return None  # truncated or missing: recompute
            try:
                tensors = load_file(path)
            except SafetensorError:
                return None
            for name, value in tensors.items():
                i, field = name.split(".", 1)
                if field == "full_logprobs":
                    value = value.float()
                elif field == "sampled_ids":
                    value = value.long()
                items.setdefault(int(i), {})[field] = value
        if sorted(items) != list(range(index["count"])):
            return None
        return [Targets(**items[i]) for i in range(index["count"])]

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*.safetensors"))
