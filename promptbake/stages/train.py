"""The train stage: epochs of shuffled, length-bucketed micro-batches, ``grad_accum`` of them per
optimizer step, checkpointed as it goes, the adapter saved atomically after each epoch and at
the end.

A student that trains step by step gets :meth:`Student.step` from the loop below; one that owns
its loop (a distributed trainer) gets the same plan through :meth:`Student.fit`. The training
state is checkpointed every ``checkpoint_every`` steps and at the end; a resumed bake restores
the newest checkpoint trained on the same data and replays the same shuffle, skipping the
steps already taken. With ``on_policy`` part of each epoch is sampled by the student itself
(stages/onpolicy.py).
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import replace_dir, write_manifest
from ..core.batching import batches, bucketed
from ..core.config import BakeConfig
from ..core.interfaces import Loss, Student
from ..core.progress import progress
from ..core.types import Targets, Trajectory
from ..run import checkpoint, files
from ..run.distributed import Ranks
from ..run.rundir import RunDir
from .onpolicy import OnPolicySampler


def steps_per_epoch(trajectories: int, config: BakeConfig) -> int:
    return math.ceil(math.ceil(trajectories / config.batch_size) / config.grad_accum)


def epoch_batches(trajectories: Sequence[Trajectory], config: BakeConfig) -> list[list[list[int]]]:
    """The micro-batches (lists of trajectory indices) of every epoch that :func:`train` runs.

    Shuffled from ``config.seed`` and bucketed by the off-policy lengths (so the plan never
    depends on on-policy samples): a resumed bake, a distributed trainer and a benchmark that
    compares against another loop all see the same batches.
    """
    rng = random.Random(config.seed)
    lengths = [len(t.unprompted_ids) for t in trajectories]
    return [bucketed(lengths, config.batch_size, rng) for _ in range(config.epochs)]


def save_adapter(student: Student, final: Path, metadata: dict[str, Any]) -> Path:
    """Write the student's adapter to ``final`` atomically (a temporary folder with a manifest,
    then swapped in)."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    student.save(str(tmp), metadata)
    write_manifest(tmp)
    replace_dir(tmp, final)
    return final


def restore(student: Student, config: BakeConfig, run: RunDir, data_key: str,
            write: bool = True) -> tuple[int, float | None]:
    """The step to continue after and the first loss, from the newest checkpoint (0, None: start).
    ``write``: this process keeps the run's records (rank 0 of a distributed launch)."""
    if not (config.resume and student.capabilities.checkpoints):
        return 0, None
    found = checkpoint.load(run.file(files.CHECKPOINT))
    if found is None or found[1].get("data_key") != data_key:
        step = 0
    else:
        student.load_state(str(found[0]))
        step = int(found[1]["step"])
    if write:
        # Steps logged after the checkpoint will be taken again: drop their records.
        run.keep_records(lambda r: r.get("stage") != "train" or r.get("step", 0) <= step)
        run.log({"stage": "train", "resumed_at": step})
    return step, (found[1].get("first_loss") if step else None)


def train(student: Student, loss: Loss, trajectories: list[Trajectory], targets: list[Targets],
          config: BakeConfig, run: RunDir, data_key: str, *, on_policy: OnPolicySampler | None = None,
          metadata: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The stage: train on ``targets`` and return ``{"steps", "first_loss", "last_loss"}``.

    ``data_key`` names the data (a checkpoint of other data is not restored); ``metadata()`` goes
    into each epoch's adapter (``RUN/epochs/epoch-N``, with ``save_epochs``).
    """
    import torch

    plan = epoch_batches(trajectories, config)
    per_epoch = steps_per_epoch(len(trajectories), config)
    total = config.epochs * per_epoch
    torch.manual_seed(config.seed)  # training's randomness (dropout) must not depend on what ran before it
    if student.capabilities.owns_loop:  # a distributed trainer runs the same plan itself
        return _fit(student, loss, trajectories, targets, plan, config, run, data_key)
    start, first = restore(student, config, run, data_key)
    bar = progress(range(start, total), "train", config.progress, total=total, unit="step", initial=start)
    bar_iter = iter(bar)
    step = 0
    last = None
    for epoch, micro in enumerate(plan):
        epoch_trajs, epoch_targets = trajectories, targets
        if on_policy is not None and step + per_epoch > start:
            epoch_trajs, epoch_targets, sampled = on_policy.for_epoch(epoch, trajectories, targets, data_key)
            run.log({"stage": "on_policy", "epoch": epoch, "sampled": sampled})
        for group in batches(micro, config.grad_accum):
            step += 1
            if step <= start:
                continue  # taken before the checkpoint; the shuffle above is replayed all the same
            batch = [[(epoch_trajs[i], epoch_targets[i]) for i in mb] for mb in group]
            m = student.step(batch, loss)
            first = m["loss"] if first is None else first
            last = m["loss"]
            run.log({"stage": "train", "step": step, "epoch": epoch, **m})
            if student.capabilities.checkpoints and config.checkpoint_due(step, total):
                checkpoint.save(run.file(files.CHECKPOINT), student, {"step": step, "data_key": data_key,
                                                                      "first_loss": first})
            next(bar_iter, None)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{m['loss']:.4f}")
        # Local adapters only (a hosted student's save is a remote export); at step == start the
        # weights are the checkpoint's, which is this epoch's end.
        if config.save_epochs and student.capabilities.adapters and step >= start:
            save_adapter(student, run.file(files.epoch_adapter(epoch + 1)), metadata() if metadata else {})
    for _ in bar_iter:
        pass
    if last is None:  # everything was done before the checkpoint
        last = next((r["loss"] for r in reversed(run.records()) if r.get("stage") == "train" and "loss" in r), None)
    return {"steps": step, "first_loss": first, "last_loss": last}


def _fit(student: Student, loss: Loss, trajectories: list[Trajectory], targets: list[Targets],
         plan: list[list[list[int]]], config: BakeConfig, run: RunDir, data_key: str) -> dict[str, Any]:
    """Train with a student that owns its loop (a distributed trainer) on the same plan: it
    continues from the restored checkpoint and calls back when a checkpoint may be due."""
    groups = [group for micro in plan for group in batches(micro, config.grad_accum)]
    if not student.capabilities.checkpoints:  # the plain interface, for students without checkpoints
        return student.fit(trajectories, targets, groups, loss, lambda record: run.log({"stage": "train", **record}))
    main = Ranks.from_env().main  # every process restores; only rank 0 writes
    start, first = restore(student, config, run, data_key, write=main)
    seen = {"first": first}

    def log(record: dict[str, Any]) -> None:
        if seen["first"] is None and "loss" in record:
            seen["first"] = record["loss"]
        run.log({"stage": "train", **record})

    def save(step: int) -> None:
        if config.checkpoint_due(step, len(groups)):
            checkpoint.save(run.file(files.CHECKPOINT), student, {"step": step, "data_key": data_key,
                                                                  "first_loss": seen["first"]})

    result = student.fit(trajectories, targets, groups, loss, log, start=start, checkpoint=save)
    return {**result, "steps": len(groups), "first_loss": seen["first"]}
