"""Bakes started by ``accelerate launch`` or ``torchrun``: every process does its share of the teacher's work.

Every process runs the same Baker and sets up both the teacher and the student. The generate
and score stages cut their work into fixed chunks (``CHUNK_QUERIES`` queries, ``SHARD_SIZE``
trajectories), and rank ``c % world`` makes chunk ``c`` (:meth:`Ranks.mine`). A chunk's key
and seed do not depend on which process made it, so a resumed bake, or one on another number
of processes, finds the same chunks. Each process writes its chunks to the shared run
directory under the keys a one-process bake uses; :meth:`Ranks.gather` (an all-gather on
torch.distributed) waits for every process, and each then reads the others' chunks, so that
every rank holds the trajectories and targets of a one-process bake, in its order. All
processes train together (a student whose trainer owns the loop, such as ``trl``); rank 0
alone writes the run's records, saves and evaluates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ..core.errors import ConfigError

T = TypeVar("T")

# How long a process waits for the others at a gather: their share of the teacher's work, or
# rank 0 writing ``queries = "generate:N"`` alone. A process that fails ends the launch
# (torchrun stops the others), so this bounds only a hang.
WAIT = timedelta(hours=24)
# The default group's timeout where promptbake creates it: the Trainer's ``ddp_timeout`` default.
DDP_TIMEOUT = 1800.0

_group: dict[str, Any] = {}  # this process's gloo group for the teacher's work, once started


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch (rank 0 of 1 when not launched distributed)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Ranks:
        """Read the variables torchrun (and accelerate launch, which uses it) set."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(rank=int(os.environ.get("RANK", "0")), world=world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, chunk: int) -> bool:
        """Whether this process makes chunk ``chunk`` (rank ``chunk % world`` does)."""
        return chunk % self.world == self.rank

    def start(self, ddp_timeout: float = DDP_TIMEOUT) -> None:
        """Join the launch's process group: every process, before any model loads.

        Unless something initialised it already, the default group is initialised from
        torchrun's variables with torch's default backends (gloo for CPU tensors, and nccl for
        CUDA ones where CUDA is there, each process on its LOCAL_RANK's GPU), which accelerate
        then takes as it is. The teacher's work synchronises on a gloo group of its own, so its
        waits (up to ``WAIT``) hold CPU objects whatever the trainer's backend and timeout.
        """
        if self.world <= 1:
            return
        import torch
        import torch.distributed as dist

        if "group" in _group and dist.is_initialized():
            return
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            dist.init_process_group(rank=self.rank, world_size=self.world, timeout=timedelta(seconds=ddp_timeout))
        _group["group"] = dist.new_group(backend="gloo", timeout=WAIT)

    def written(self, found: T | None, chunk: int, what: str, folder: Any, shared: str = "--out") -> T:
        """``found``, what another process wrote of ``chunk`` and this one read back from ``folder``;
        where it is not there, the sentence that says the run directory is not shared."""
        if found is None:
            raise ConfigError(f"Rank {self.rank} found no {what} in {folder} after rank {chunk % self.world} "
                              f"wrote it; {shared} must be on a file system that every process shares.")
        return found

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, by rank, once every process has reached this call (a
        barrier that also says what each one did). One process: ``[value]``."""
        if self.world <= 1:
            return [value]
        import torch.distributed as dist

        self.start()
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=_group["group"])
        return out
