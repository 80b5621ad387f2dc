"""What the report reads from a run directory, each part optional but config.json."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from ...run import files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; unreadable lines (e.g. a torn last line) are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _num(value: Any) -> float | None:
    """A finite number, or None (null, NaN, strings and booleans are not measurements)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run directory's files as plain data; raises ConfigError only without config.json."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"Run directory {run} does not exist.")
    config_path = run / files.CONFIG
    if not config_path.is_file():
        raise ConfigError(f"{run} has no config.json, so it is not a promptbake run directory.")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path} is not a JSON object.")
    metrics = _read_jsonl(run / files.METRICS)
    return {
        "config": config,
        "train": [m for m in metrics if m.get("stage") == "train"],
        "done": next((m for m in reversed(metrics) if m.get("stage") == "done"), {}),
        "eval": _dict(_read_json(run / files.EVAL)),
        "answers": _read_jsonl(run / files.ANSWERS),
    }


def _loss_curve(train: Iterable[dict[str, Any]]) -> tuple[list[int], list[float], list[int | None]]:
    """Steps, losses and epochs of the training records that have a loss; a step logged
    twice (a resumed bake redoing it) keeps its last value."""
    by_step: dict[int, tuple[float, int | None]] = {}
    for i, record in enumerate(train):
        loss = _num(record.get("loss"))
        if loss is None:
            continue
        step = record.get("step")
        step = step if isinstance(step, int) and not isinstance(step, bool) else i + 1
        epoch = record.get("epoch")
        by_step[step] = (loss, epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None)
    steps = sorted(by_step)
    return steps, [by_step[s][0] for s in steps], [by_step[s][1] for s in steps]


def _probe_table(value: Any) -> dict[str, dict[str, float]]:
    """``{"probe": {"base": 0.1, ...}}`` with only numeric scores kept."""
    out: dict[str, dict[str, float]] = {}
    for name, scores in _dict(value).items():
        kept = {side: v for side, raw in _dict(scores).items() if (v := _num(raw)) is not None}
        if kept:
            out[str(name)] = kept
    return out


def _series(rows: Any, key: str) -> tuple[list[float], dict[str, list[tuple[float, float]]]]:
    """From ``[{key: x, "probes": {name: score}}]``: the x values and per-probe (x, score) points."""
    xs: list[float] = []
    lines: dict[str, list[tuple[float, float]]] = {}
    for row in _list(rows):
        x = _num(_dict(row).get(key))
        if x is None:
            continue
        xs.append(x)
        for name, raw in _dict(row.get("probes")).items():
            if (score := _num(raw)) is not None:
                lines.setdefault(str(name), []).append((x, score))
    return xs, {name: sorted(points) for name, points in lines.items()}


def _answer_sides(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Side columns present: base, prompted, baked first, then others in order of appearance."""
    seen: list[str] = []
    for row in rows:
        for key in row:
            if key not in ("query_id", "question") and key not in seen:
                seen.append(key)
    return [s for s in SIDE_ORDER if s in seen] + [s for s in seen if s not in SIDE_ORDER]


SIDE_ORDER = ("base", "prompted", "baked")
