"""The score stage: the teacher's targets at every response position, computed once.

Targets are kept as the target cache stores them (run/cache.py), written shard by shard as
they are computed, and reused by every epoch, by a resumed bake and by a later run whose key
matches (``target_cache``). What the teacher hands over is the target cache policy
(:func:`target_kind`): what the loss needs, except that full targets travel as the teacher's
final hidden states where the student holds the teacher's frozen output layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.batching import batches
from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.interfaces import Loss, Student, Teacher
from ..core.progress import counter
from ..core.types import Targets, Trajectory, prompt_sha256
from ..run import files
from ..run.cache import TargetStore, as_stored, targets_key
from ..run.distributed import Ranks
from ..run.rundir import RunDir


def target_kind(teacher: Teacher, student: Student, loss: Loss) -> str:
    """What the teacher hands the student: what the loss needs ("tokens", "topk", "full"),
    except that full targets travel as the teacher's final hidden states ("hidden") when
    the student holds the teacher's frozen output layer, at 2H bytes a token instead of
    2V. Call after both are set up."""
    need = loss.needs
    if need == "full" and teacher.capabilities.hidden_states and student.capabilities.hidden_targets:
        head = teacher.output_layer()
        if head is not None and student.reads_hidden_targets(head):
            return "hidden"
    return need


def bake_key(config: BakeConfig, teacher: Teacher, kind: str, trajectories: Sequence[Trajectory]) -> str:
    """The key of a bake's targets: everything that determines them (also what a training
    checkpoint was trained on, so a resumed bake trusts only one for the same data)."""
    return targets_key(model=config.teacher_model or config.model, teacher=teacher.name,
                       prompt_sha256=prompt_sha256(config.prompt), kind=kind,
                       top_k=config.top_k if kind == "topk" else None, trajectories=trajectories)


def target_store(config: BakeConfig, run: RunDir, key: str) -> TargetStore:
    """Where targets of ``key`` are kept: the run's ``targets/``, or the shared ``target_cache``."""
    folder = Path(config.target_cache) / key[:16] if config.target_cache else run.file(files.TARGETS)
    return TargetStore(folder)


def score_as_stored(teacher: Teacher, trajectories: Sequence[Trajectory], kind: str,
                    top_k: int | None) -> Sequence[Targets]:
    """The teacher's targets of one batch, of ``kind`` ("topk", "full" or "hidden": full
    targets as the teacher's final hidden states), held as the cache stores them."""
    if kind == "hidden":
        return as_stored(teacher.score_hidden(trajectories))
    return as_stored(teacher.score(trajectories, top_k=top_k if kind == "topk" else None, full=kind == "full"))


def score_batches(teacher: Teacher, trajectories: Sequence[Trajectory], kind: str, config: BakeConfig,
                  sample_targets: Sequence[Targets] | None = None,
                  on_batch: Callable[[int], None] | None = None) -> list[Targets]:
    """Targets for every response position of ``trajectories``, computed now.

    ``kind`` "tokens" (ce) needs no teacher pass; a teacher that cannot score (hosted APIs)
    gives its targets with its samples (``sample_targets``), used as they are.
    """
    if kind == "tokens":
        import torch

        return [Targets(sampled_ids=torch.tensor(t.response_ids, dtype=torch.long)) for t in trajectories]
    if not teacher.capabilities.can_score:
        if sample_targets is None:
            raise ConfigError(f"Teacher '{teacher.name}' cannot score and returned no log-probs "
                              f"with its samples; use loss ce.")
        return list(sample_targets)
    out: list[Targets] = []
    for part in batches(trajectories, config.score_batch_size * 4):
        out.extend(score_as_stored(teacher, part, kind, config.top_k))
        if on_batch is not None:
            on_batch(len(part))
    return out


def score(teacher: Teacher, trajectories: Sequence[Trajectory], kind: str, config: BakeConfig, run: RunDir,
          sample_targets: Sequence[Targets] | None = None, ranks: Ranks | None = None) -> list[Targets]:
    """The stage: targets from the cache when its key matches, else scored shard by shard and
    written to it (shards already written for the same key, by a stopped bake, are read).

    Under a distributed launch (``ranks``) every process scores its shards (shard ``n`` is rank
    ``n % world``'s), then reads the others' once all are written; rank 0 writes the index and
    the records. Every process returns the whole, in order.
    """
    ranks = ranks or Ranks()
    key = bake_key(config, teacher, kind, trajectories)
    store = target_store(config, run, key)
    cached = store.read(key)
    if all(ranks.gather(cached is not None)):  # every process takes the cache, or none does
        if ranks.main:
            run.log({"stage": "score", "cache": "hit", "folder": str(store.folder)})
        return cached  # type: ignore[return-value]
    size = store.shard_size
    starts = range(0, len(trajectories), size)
    got: dict[int, list[Targets]] = {}
    reused: list[int] = []
    with counter(len(trajectories), "score", config.progress and kind != "tokens", unit="trajectory") as bar:
        for n, start in enumerate(starts):
            if not ranks.mine(n):
                continue
            part = trajectories[start: start + size]
            found = store.read_shard(n, key, len(part))
            if found is None:
                given = sample_targets[start: start + size] if sample_targets else None
                found = score_batches(teacher, part, kind, config, given, on_batch=bar.update)
                store.write_shard(n, found, key)
            else:
                reused.append(n)
                bar.update(len(part))
            got[n] = found
    shards_reused, by_rank = len(reused), {}
    if ranks.world > 1:
        done = ranks.gather({"scored": sorted(set(got) - set(reused)), "reused": len(reused)})
        for n, start in enumerate(starts):  # the others' shards, all written before the gather
            if n not in got:
                found = store.read_shard(n, key, len(trajectories[start: start + size]))
                got[n] = ranks.written(found, n, f"target shard {n}", store.folder, "--out (and target_cache)")
        shards_reused, by_rank = sum(d["reused"] for d in done), {"scored_by_rank": [d["scored"] for d in done]}
    out = [t for n in sorted(got) for t in got[n]]
    if ranks.main:
        store.write_index(len(out), key)
        run.log({"stage": "score", "cache": "miss", "shards_reused": shards_reused, "folder": str(store.folder),
                 "bytes": store.bytes(), **by_rank})
    return out
