"""Completed API responses kept on disk, so an interrupted bake never pays twice.

One JSON line per request, keyed by a sha256 of the endpoint and the request
body (which never holds the API key). Lines are appended and flushed as each
response arrives; a line cut short by a crash is ignored on the next read.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """``$PROMPTBAKE_CACHE_DIR/responses``, else ``~/.cache/promptbake/responses``."""
    root = os.environ.get("PROMPTBAKE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "promptbake")
    return Path(root) / "responses"


def request_key(base_url: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([base_url, body], sort_keys=True).encode("utf-8")).hexdigest()


class ResponseCache:
    """An append-only JSONL file of ``{"key": ..., "response": ...}`` records."""

    def __init__(self, folder: str | Path, name: str = "responses.jsonl"):
        self.path = Path(folder) / name
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        self._items[record["key"]] = record["response"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line cut short by a crash

    def get(self, key: str) -> Any | None:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, response: Any) -> None:
        line = json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                # Start on a fresh line if a crash left the last one unterminated.
                if f.tell() > 0 and not self._ends_with_newline():
                    f.write("\n")
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._items[key] = response

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
