"""Sampling the prompted teacher chunk by chunk, each chunk saved as it completes.

Queries are split into fixed chunks; chunk ``c`` samples with a seed derived
from (bake seed, split, c), so a chunk's samples do not depend on which chunks
ran before it in this process. Each finished chunk is written atomically to
``RUN/generate/`` under a key over everything that determines it; a bake that
stops half-way and is resumed reads the finished chunks back and samples only
the rest, and the result equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .batching import batches
from .cache import TargetStore
from .errors import ConfigError
from .interfaces import SamplingConfig, Teacher
from .progress import counter
from .render import Renderer
from .rundir import write_text
from .types import Prefix, Query, Targets, Trajectory

CHUNK_QUERIES = 64  # queries per saved chunk: what a crash can cost at most


def chunk_seed(seed: int, split: str, chunk: int) -> int:
    """A 31-bit sampling seed for one chunk of one split."""
    digest = hashlib.sha256(f"{seed}:{split}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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


def chunk_key(teacher: Teacher, model: str, sampling: SamplingConfig, prefixes: Sequence[Prefix],
              n_queries: int) -> str:
    """A sha256 over what determines a chunk's samples."""
    h = hashlib.sha256()
    h.update(json.dumps([str(teacher), model, sampling.n, sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                         sampling.min_new_tokens, sampling.seed, list(sampling.stop_ids), sampling.logprobs,
                         n_queries, *([sorted(sampling.extras.items())] if sampling.extras else [])]).encode())
    for p in prefixes:
        h.update(json.dumps([p.ids, list(p.messages)]).encode())
    return h.hexdigest()


def generate(teacher: Teacher, renderer: Renderer, queries: Sequence[Query], sampling: SamplingConfig,
             split: str, store: ChunkStore | None = None, show_progress: bool = True,
             log: Any = None, model: str = "") -> tuple[list[Trajectory], list[Targets] | None]:
    """Trajectories (``sampling.n`` per query) and, when every sample carried them, their targets.

    ``sampling.seed`` is the bake's seed; each chunk samples with :func:`chunk_seed`.
    Chunks found whole in ``store`` under the same key (teacher, ``model``, sampling and
    prompts) are read instead of sampled.
    """
    trajectories: list[Trajectory] = []
    targets: list[Targets] = []
    reused = 0
    base_seed = sampling.seed
    with counter(len(queries), f"generate ({split})", show_progress, unit="query") as bar:
        for c, part in enumerate(batches(list(queries), CHUNK_QUERIES)):
            rendered = [(renderer.prefix(q, True), renderer.prefix(q, False)) for q in part]
            prefixes = [Prefix(ids=p, messages=tuple(renderer.messages(q, True))) for q, (p, _) in zip(part, rendered)]
            chunk_sampling = replace(sampling, seed=chunk_seed(base_seed, split, c))
            key = chunk_key(teacher, model, chunk_sampling, prefixes, len(part))
            got = store.read(c, key) if store is not None else None
            if got is not None:
                reused += 1
            else:
                got = _sample(teacher, renderer, part, rendered, prefixes, chunk_sampling)
                if store is not None:
                    store.write(c, key, *got)
            trajectories.extend(got[0])
            if got[1] is not None:
                targets.extend(got[1])
            bar.update(len(part))
    if log is not None and reused:
        log({"stage": "generate", "split": split, "chunks_reused": reused})
    return trajectories, (targets if trajectories and len(targets) == len(trajectories) else None)


def _sample(teacher: Teacher, renderer: Renderer, queries: Sequence[Query], rendered: Sequence[tuple[list[int], list[int]]],
            prefixes: Sequence[Prefix], sampling: SamplingConfig) -> tuple[list[Trajectory], list[Targets] | None]:
    samples = teacher.generate(prefixes, sampling)
    out: list[Trajectory] = []
    targets: list[Targets] = []
    for q, pre, group in zip(queries, rendered, samples):
        for i, sample in enumerate(group):
            traj = renderer.trajectory(q, sample.token_ids, i, prefixes=pre)
            out.append(traj)
            if sample.targets is not None:
                targets.append(cut_to(traj, sample.targets))
    return out, (targets if out and len(targets) == len(out) else None)


def cut_to(traj: Trajectory, targets: Targets) -> Targets:
    """A sample's targets cut to the trajectory (which may end earlier), on its tokens."""
    import torch

    if len(targets) < traj.response_len:
        raise ConfigError(f"The teacher gave {len(targets)} target rows for a {traj.response_len}-token "
                          f"response ({traj.key}); a teacher must give one row per sampled token.")
    out = targets.head(traj.response_len)
    out.sampled_ids = torch.tensor(traj.response_ids, dtype=torch.long)
    return out
