"""Training checkpoints without pickle: tensors in safetensors, the rest in JSON.

A checkpoint folder holds the student's trainable weights, its optimizer and
scheduler state and the RNG state (written by the student, see
:func:`save_torch_state`), plus ``state.json`` (the step reached and the data it
was trained on) and a manifest. The Baker writes it to a temporary folder and
swaps it in whole, so the latest complete checkpoint always survives a crash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomic import replace_dir, verified_dir, write_json, write_manifest

if TYPE_CHECKING:

    from ..core.interfaces import Student

STATE_FILE = "state.json"


def save(folder: str | Path, student: Student, state: dict[str, Any]) -> None:
    """Write the student's training state and ``state`` as ``folder``, replacing any older one."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    student.save_state(str(tmp))
    write_json(tmp / STATE_FILE, state)
    write_manifest(tmp)
    replace_dir(tmp, folder)


def load(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest whole checkpoint (its folder and ``state.json``), or None."""
    found = verified_dir(folder)
    if found is None:
        return None
    return found, json.loads((found / STATE_FILE).read_text(encoding="utf-8"))


