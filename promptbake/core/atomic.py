"""Files and folders written whole.

A file is written to a temporary name and renamed into place, so a reader never sees half
of it. A folder carries a ``manifest.json`` of its files' sizes and sha256, is written under
a temporary name and swapped in (:func:`replace_dir`); :func:`verified_dir` finds the newest
whole copy. Used by the run directory, checkpoints, adapters and merged models alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_mode() -> int:
    """The mode new files get from the process umask (0644 with the usual 022): what ``open`` gives,
    and what ``tempfile`` (always 0600) does not, so a server running as another user can read them."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def readable(folder: str | Path) -> None:
    """Give every file under ``folder`` the umask's mode (libraries that write through temporary
    files, safetensors among them, leave 0600)."""
    mode = file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename into place, so readers never see half a file; the file
    gets the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
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


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> None:
    """Record every file's size and sha256 in ``folder/manifest.json``."""
    folder = Path(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
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
        if not path.is_file() or path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
            return False
    return True


def check_free(path: str | Path, overwrite: bool = False) -> None:
    """Refuse a non-empty output folder unless ``overwrite`` (call before slow work)."""
    from .errors import ConfigError

    p = Path(path)
    if not overwrite and p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise ConfigError(f"Output directory {p} already exists; choose another --out or pass --overwrite.")


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, keeping the old one until the new is in place;
    its files get the umask's mode."""
    tmp, final = Path(tmp), Path(final)
    readable(tmp)
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
