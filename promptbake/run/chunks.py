"""Chunks of sampled trajectories in the run directory (``RUN/generate/``), each written whole
as it completes, so a stopped bake reads back what it finished."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..core.atomic import write_text
from ..core.types import Targets, Trajectory
from .cache import TargetStore


class ChunkStore:
    """``folder/{split}-NNNNN.jsonl`` (a header line, then one trajectory per line) and,
    when the samples carried targets, ``folder/{split}-NNNNN.targets/`` (a TargetStore)."""

    def __init__(self, folder: str | Path, split: str):
        self.folder = Path(folder)
        self.split = split

    def _paths(self, n: int) -> tuple[Path, Path]:
        stem = f"{self.split}-{n:05d}"
        return self.folder / f"{stem}.jsonl", self.folder / f"{stem}.targets"

    def read(self, n: int, key: str) -> tuple[list[Trajectory], list[Targets] | None] | None:
        """Chunk ``n`` if it was written for ``key`` and is whole; else None."""
        lines_path, targets_path = self._paths(n)
        try:
            lines = lines_path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
            if header.get("key") != key or len(lines) != 1 + header["count"]:
                return None
            trajectories = [Trajectory.from_json(json.loads(line)) for line in lines[1:]]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        if not header.get("targets"):
            return trajectories, None
        targets = TargetStore(targets_path).read(key)
        if targets is None or len(targets) != len(trajectories):
            return None
        return trajectories, targets

    def write(self, n: int, key: str, trajectories: Sequence[Trajectory], targets: Sequence[Targets] | None) -> None:
        """Targets first, then the trajectories file whose header makes the chunk valid."""
        lines_path, targets_path = self._paths(n)
        if targets is not None:
            TargetStore(targets_path).write(targets, key)
        header = {"key": key, "count": len(trajectories), "targets": targets is not None}
        write_text(lines_path, "".join(json.dumps(r) + "\n" for r in [header, *(t.to_json() for t in trajectories)]))
