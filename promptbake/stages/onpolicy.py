"""On-policy baking: part of each epoch's data is sampled by the student itself and scored by the teacher.

Off-policy baking trains only on the prompted teacher's own text; once the
student writes its own, small departures can compound. With ``on_policy = f``,
at the start of every epoch the student (with its current weights) answers a
fraction ``f`` of the training queries, the teacher scores those answers with the
prompt, and the epoch trains on them in place of the teacher's samples for the
same queries (the rest stays off-policy). This is the mix of on- and
off-policy data of GKD and on-policy context distillation, with the forward KL
the bake's loss already computes.

Each epoch's on-policy samples and targets are saved before the epoch trains,
so a resumed bake trains on exactly the same data.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

from ..core import decoding
from ..core.batching import batches
from ..core.config import BakeConfig
from ..core.interfaces import Student, Teacher
from ..core.types import Prefix, Query, Targets, Trajectory
from ..run.chunks import ChunkStore
from .generate import chunk_seed
from .render import Renderer
from .score import score_as_stored


class OnPolicySampler:
    """Replaces a fraction of each epoch's trajectories with student samples scored by the teacher."""

    def __init__(self, teacher: Teacher, student: Student, renderer: Renderer, queries: Sequence[Query],
                 config: BakeConfig, folder: str | Path, kind: str):
        self.teacher, self.student, self.renderer, self.config = teacher, student, renderer, config
        self.queries = {q.id: q for q in queries}
        self.store = ChunkStore(folder, "epoch")
        self.kind = kind  # "topk", "full" or "hidden": what the teacher hands over (Baker.target_kind)

    def chosen(self, epoch: int, count: int) -> list[int]:
        """The indices of the trajectories replaced in ``epoch`` (seeded by the bake's seed and the epoch)."""
        take = round(self.config.on_policy * count)
        return sorted(random.Random(chunk_seed(self.config.seed, "on-policy", epoch)).sample(range(count), take))

    def for_epoch(self, epoch: int, trajectories: Sequence[Trajectory], targets: Sequence[Targets],
                  data_key: str) -> tuple[list[Trajectory], list[Targets], int]:
        """The epoch's trajectories and targets, and how many of them the student sampled."""
        trajs, tgts = list(trajectories), list(targets)
        chosen = self.chosen(epoch, len(trajs))
        if not chosen:
            return trajs, tgts, 0
        key = hashlib.sha256(json.dumps([data_key, epoch, chosen]).encode()).hexdigest()
        # Chunk files are named by number: one chunk per epoch.
        got = self.store.read(epoch, key)
        if got is None or got[1] is None:
            got = self._sample(epoch, [trajs[i] for i in chosen])
            self.store.write(epoch, key, *got)
        for i, new, target in zip(chosen, got[0], got[1] or []):
            trajs[i], tgts[i] = new, target
        return trajs, tgts, len(chosen)

    def _sample(self, epoch: int, old: Sequence[Trajectory]) -> tuple[list[Trajectory], list[Targets]]:
        cfg, r = self.config, self.renderer
        queries = [self.queries[t.query_id] for t in old]
        sampling = decoding.bake_sampling(cfg, r.stop_ids, decoding.bake_extras(cfg, self.student),
                                          seed=chunk_seed(cfg.seed, "on-policy-sample", epoch))
        prefixes = [Prefix(ids=r.prefix(q, False), messages=tuple(r.messages(q, False))) for q in queries]
        samples = [group[0] for group in self.student.generate(prefixes, sampling)]
        new = [r.trajectory(q, s.token_ids, t.sample) for q, s, t in zip(queries, samples, old)]
        targets: list[Targets] = []
        for part in batches(new, cfg.score_batch_size * 4):
            targets.extend(score_as_stored(self.teacher, part, self.kind, cfg.top_k))
        return new, targets
