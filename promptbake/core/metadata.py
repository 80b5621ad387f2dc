"""The metadata file a student saves next to its adapter (``promptbake.json``): base model,
prompt sha256, teacher, student, loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError

VERSION = "0.2.0"  # promptbake's version (promptbake.__version__), recorded in what a bake writes

METADATA_FILE = "promptbake.json"  # next to every adapter a student saves


def read_metadata(adapter: str | Path) -> dict[str, Any]:
    """The promptbake metadata saved next to an adapter."""
    path = Path(adapter) / METADATA_FILE
    if not path.is_file():
        raise ConfigError(f"{adapter} is not a promptbake adapter directory (no {METADATA_FILE}).")
    return json.loads(path.read_text(encoding="utf-8"))
