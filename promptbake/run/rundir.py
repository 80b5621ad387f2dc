"""The run directory (layout in run/files.py): what a bake writes, each file atomically, and
the records around it: the settings it was baked with, its metrics, the adapter's metadata.

Every file is written to a temporary name and renamed into place; folders carry a
``manifest.json`` of their files' sizes and sha256, checked before a resumed bake
trusts them (core/atomic.py). So a bake killed at any point leaves nothing half-written
that a later ``--resume`` would use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..core.atomic import check_free, verified_dir, write_text
from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.metadata import VERSION
from ..core.types import PromptMixture, Trajectory, prompt_sha256
from . import files

# Settings that may differ between a bake and its resumption: they change how it
# runs or reports, not what it computes.
RUNTIME_KEYS = frozenset({"progress", "overwrite", "resume", "out", "evaluate", "target_cache",
                          "max_heldout", "score_batch_size", "probes", "strengths", "reprompt",
                          "probe_samples", "export", "export_options"})


class RunDir:
    """A bake's output directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def saved_config(path: str | Path) -> dict[str, Any]:
        """The settings a run directory was created with (``config.json``)."""
        p = Path(path)
        try:
            data = json.loads((p / files.CONFIG).read_text(encoding="utf-8"))
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
        check_free(path, overwrite)

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
        with open(self.file(files.METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The metrics records written so far (a line cut short by a crash is skipped)."""
        out = []
        try:
            lines = self.file(files.METRICS).read_text(encoding="utf-8").splitlines()
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
        write_text(self.file(files.METRICS), "".join(json.dumps(r) + "\n" for r in records))

    def write_trajectories(self, trajectories: Iterable[Trajectory], name: str = files.TRAJECTORIES) -> None:
        """Write ``trajectories`` as ``name`` (none: no file)."""
        items = list(trajectories)
        if items:
            write_text(self.file(name), "".join(json.dumps(t.to_json()) + "\n" for t in items))

    def read_trajectories(self, name: str = files.TRAJECTORIES) -> list[Trajectory]:
        with open(self.file(name), encoding="utf-8") as f:
            return [Trajectory.from_json(json.loads(line)) for line in f if line.strip()]


def public_config(config: BakeConfig) -> dict[str, Any]:
    """What config.json holds: every setting, the prompt as its sha256 (its text too with
    ``include_prompt``; a mixture's as its prompts and weights)."""
    data = config.to_dict()
    prompt = data.pop("prompt")
    data["prompt_sha256"] = prompt_sha256(prompt)
    if config.include_prompt:
        data["prompt"] = json.loads(prompt.text) if isinstance(prompt, PromptMixture) else prompt
    return data


def resumed_config(run_dir: str | Path, prompt: str | PromptMixture | None = None, **settings: Any) -> BakeConfig:
    """The settings to continue the bake saved in ``run_dir`` with: the saved ones, ``prompt``
    where the run kept only its sha256, and ``settings`` that change how it runs (progress,
    evaluation), never what it computes."""
    saved = RunDir.saved_config(run_dir)
    digest = saved.pop("prompt_sha256", None)
    stored = saved.pop("prompt", None)
    if isinstance(stored, dict):  # a mixture's prompts and weights
        stored = PromptMixture.parse(json.dumps(stored))
    prompt = prompt if prompt is not None else stored
    if prompt is None:
        raise ConfigError(f"{run_dir} keeps only the prompt's sha256; pass the same --prompt to resume it.")
    if digest is not None and prompt_sha256(prompt) != digest:
        raise ConfigError(f"The prompt differs from the one baked in {run_dir} (sha256 {digest[:12]}...); "
                          f"pass the same prompt to resume.")
    for key, value in settings.items():
        if key not in RUNTIME_KEYS and key in saved and saved[key] != value:
            raise ConfigError(f"{run_dir} was baked with {key}={saved[key]!r}; a resumed bake keeps its "
                              f"settings, so {key}={value!r} needs a new --out.")
    return BakeConfig.from_dict({**saved, "overwrite": False, **settings, "prompt": prompt, "out": str(run_dir),
                                 "resume": True})


def adapter_metadata(config: BakeConfig, teacher: str, student: str, loss: str) -> dict[str, Any]:
    """What promptbake.json holds next to an adapter."""
    from datetime import datetime

    prompt = config.prompt
    meta: dict[str, Any] = {
        "promptbake_version": VERSION, "base_model": config.model, "prompt_sha256": prompt_sha256(prompt),
        "teacher": teacher, "student": student, "loss": loss,
        **({"chat_template_kwargs": config.chat_template_kwargs} if config.chat_template_kwargs else {}),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if isinstance(prompt, PromptMixture):
        meta["mixture"] = prompt.describe(config.include_prompt)
    elif config.include_prompt:
        meta["prompt"] = prompt
    return meta


def finished(run: RunDir) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """The metrics and evaluation of a run whose bake completed (a resumed one has nothing to do), or None."""
    done = next((r for r in reversed(run.records()) if r.get("stage") == "done"), None)
    adapter = run.file(files.ADAPTER)
    if done is None or verified_dir(adapter) != adapter:
        return None
    found = run.file(files.EVAL)
    return ({k: v for k, v in done.items() if k != "stage"},
            json.loads(found.read_text(encoding="utf-8")) if found.is_file() else None)


def default_out() -> str:
    """The run directory of a bake that names none: runs/bake-YYYYmmdd-HHMMSS."""
    from datetime import datetime

    return str(Path("runs") / datetime.now().strftime("bake-%Y%m%d-%H%M%S"))
