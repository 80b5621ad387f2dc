"""The run directory: everything a bake writes, each file written atomically.

Layout::

    RUN/config.json        settings (the prompt's sha256; its text only if asked)
    RUN/trajectories.jsonl rendered trajectories
    RUN/targets/           teacher targets (see cache.py)
    RUN/metrics.jsonl      one line per training step and per stage
    RUN/adapter/           the trained adapter (plus promptbake.json)
    RUN/eval.json          held-out evaluation
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .types import Trajectory


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename into place, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class RunDir:
    """A bake's output directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def check_free(path: str | Path, overwrite: bool = False) -> None:
        """Refuse a non-empty output directory unless ``overwrite`` (call before slow work)."""
        p = Path(path)
        if not overwrite and p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise ConfigError(f"Output directory {p} already exists; choose another --out or pass --overwrite.")

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        """Make a fresh run directory; refuse to reuse a non-empty one unless ``overwrite``."""
        p = Path(path)
        cls.check_free(p, overwrite)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    def file(self, name: str) -> Path:
        return self.path / name

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record (a line is small; appends are whole lines)."""
        with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_trajectories(self, trajectories: Iterable[Trajectory], name: str = "trajectories.jsonl") -> None:
        write_text(self.file(name), "".join(json.dumps(t.to_json()) + "\n" for t in trajectories))

    def read_trajectories(self, name: str = "trajectories.jsonl") -> list[Trajectory]:
        with open(self.file(name), encoding="utf-8") as f:
            return [Trajectory.from_json(json.loads(line)) for line in f if line.strip()]
