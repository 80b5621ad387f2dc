"""The run directory: everything a bake writes, each file written atomically.

Layout::

    RUN/config.json        settings (the prompt's sha256; its text only if asked)
    RUN/generate/          teacher samples, one file per chunk of queries (see generation.py)
    RUN/trajectories.jsonl rendered trajectories
    RUN/targets/           teacher targets (see cache.py)
    RUN/checkpoint/        the latest training state (see checkpoint.py)
    RUN/metrics.jsonl      one line per training step and per stage
    RUN/adapter/           the trained adapter (plus promptbake.json)
    RUN/eval.json          held-out evaluation

Every file is written to a temporary name and renamed into place; folders carry a
``manifest.json`` of their files' sizes and sha256, checked before a resumed bake
trusts them. So a bake killed at any point leaves nothing half-written that a
later ``--resume`` would use.
"""

from __future__ import annotations

import hashlib
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


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> None:
    """Record every file's size and sha256 in ``folder/manifest.json``."""
    folder = Path(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(folder / MANIFEST, {"files": files})


def verify_manifest(folder: str | Path) -> bool:
    """Whether ``folder`` holds exactly the files its manifest lists, whole."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for name, info in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
            return False
    return True


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, keeping the old one until the new is in place."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def verified_dir(final: str | Path) -> Path | None:
    """``final`` if its manifest checks out, else the previous copy kept by :func:`replace_dir`."""
    final = Path(final)
    for candidate in (final, final.with_name(f".{final.name}.old")):
        if candidate.is_dir() and verify_manifest(candidate):
            return candidate
    return None


# Settings that may differ between a bake and its resumption: they change how it
# runs or reports, not what it computes.
RUNTIME_KEYS = frozenset({"progress", "overwrite", "resume", "out", "evaluate", "target_cache",
                          "max_heldout", "score_batch_size", "probes", "strengths", "reprompt",
                          "probe_samples"})


class RunDir:
    """A bake's output directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def saved_config(path: str | Path) -> dict[str, Any]:
        """The settings a run directory was created with (``config.json``)."""
        p = Path(path)
        try:
            data = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p} is not a promptbake run directory (no config.json); "
                              f"--resume takes the --out of an earlier bake.") from None
        except (OSError, ValueError):
            raise ConfigError(f"{p}/config.json is unreadable; start a new bake instead of resuming.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}/config.json is not a settings object; start a new bake instead of resuming.")
        return data

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

    def records(self) -> list[dict[str, Any]]:
        """The metrics records written so far (a line cut short by a crash is skipped)."""
        out = []
        try:
            lines = self.file("metrics.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def keep_records(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite metrics.jsonl with only the records ``keep`` accepts (training steps past a checkpoint)."""
        records = [r for r in self.records() if keep(r)]
        write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records))

    def write_trajectories(self, trajectories: Iterable[Trajectory], name: str = "trajectories.jsonl") -> None:
        write_text(self.file(name), "".join(json.dumps(t.to_json()) + "\n" for t in trajectories))

    def read_trajectories(self, name: str = "trajectories.jsonl") -> list[Trajectory]:
        with open(self.file(name), encoding="utf-8") as f:
            return [Trajectory.from_json(json.loads(line)) for line in f if line.strip()]
