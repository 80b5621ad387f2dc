"""Bakes started by ``accelerate launch`` or ``torchrun``: one process does the teacher's work.

Every process runs the same Baker. The main process (rank 0) samples, scores,
evaluates and writes the run directory; the others load only the student,
wait for rank 0's hand-over file, and read the trajectories and targets from
the run directory. All processes then train together (a student whose
trainer owns the loop, such as ``trl``), and rank 0 saves. A hand-over file
carries the launch's id, so a stale one from an earlier run is never trusted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.atomic import write_json
from . import files


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch (rank 0 of 1 when not launched distributed)."""

    rank: int = 0
    world: int = 1
    launch_id: str = ""

    @classmethod
    def from_env(cls) -> Ranks:
        """Read the variables torchrun (and accelerate launch, which uses it) set."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        launch = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.environ.get('MASTER_ADDR', '')}:" \
                 f"{os.environ.get('MASTER_PORT', '')}"
        return cls(rank=int(os.environ.get("RANK", "0")), world=world, launch_id=launch)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def hand_over(self, run_path: Path, info: dict[str, Any]) -> None:
        """Rank 0: the run directory now holds what the other processes need."""
        if self.world > 1:
            write_json(run_path / files.HANDOVER, {"launch": self.launch_id, **info})

    def wait(self, run_path: Path, poll_s: float = 1.0) -> dict[str, Any]:
        """Other ranks: block until rank 0 has handed over in this launch (a crash of rank 0 ends
        the launch, so no timeout is needed)."""
        path = run_path / files.HANDOVER
        while True:
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
                if info.get("launch") == self.launch_id:
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(poll_s)
