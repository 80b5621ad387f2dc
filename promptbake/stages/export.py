"""The export stage: a finished bake written in a format a server loads (``promptbake export``,
or the ``export`` setting at the end of a bake).

Formats are plugins (``register_exporters``): the built-in ``merged``, ``gguf`` and ``gguf-lora``,
``vllm`` from promptbake-vllm. Each export is written under a temporary name with a manifest and
renamed into place, so a stopped export leaves nothing a server or a later run would trust, and
it is recorded in ``RUN/export.json`` with what it wrote, how to serve it and what was measured.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..core import registry
from ..core.atomic import (
    check_free,
    replace_dir,
    verified_dir,
    write_json,
    write_manifest,
)
from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.interfaces import Exporter, ExportResult
from ..core.metadata import read_metadata
from ..core.types import BakedRun
from ..run import files
from ..run.rundir import RunDir


def exporters(formats: list[str], options: dict[str, dict[str, Any]] | None = None) -> list[Exporter]:
    """The registered exporters of ``formats``, each with its options."""
    return [registry.create("exporter", name, **(options or {}).get(name, {})) for name in formats]


def check(config: BakeConfig) -> list[str]:
    """Before a bake with ``export`` set: refuse what a format could not serve; its warnings."""
    return [w for e in exporters(config.export, config.export_options) for w in e.check(config)]


def baked_run(run_dir: str | Path) -> BakedRun:
    """What an exporter reads of the finished bake in ``run_dir``."""
    run = RunDir(run_dir)
    adapter = verified_dir(run.file(files.ADAPTER))
    if adapter is None:
        raise ConfigError(f"{run_dir} has no finished adapter to export; finish the bake first "
                          f"(promptbake bake --resume {run_dir}).")
    held = run.read_trajectories(files.HELDOUT) if run.file(files.HELDOUT).is_file() else []
    return BakedRun(path=run.path, adapter=adapter, metadata=read_metadata(adapter),
                    settings=RunDir.saved_config(run_dir), heldout=held)


def export(run_dir: str | Path, exporter: Exporter, out: str | Path | None = None,
           overwrite: bool = False) -> ExportResult:
    """Write the bake in ``run_dir`` with ``exporter`` to ``out`` (default ``RUN/export/NAME``)."""
    bake = baked_run(run_dir)
    final = Path(out) if out is not None else bake.path / files.EXPORT / exporter.name
    check_free(final, overwrite)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = exporter.export(bake, tmp)
        write_manifest(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = _moved(result, tmp, final)
    record = RunDir(run_dir).file(files.EXPORTS)
    done = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    done[exporter.name] = {"path": str(result.path), "files": result.files, "serve": result.serve,
                           "notes": result.notes, "measured": result.measured}
    write_json(record, done)
    return result


def _moved(result: ExportResult, tmp: Path, final: Path) -> ExportResult:
    """The result with the temporary folder's name replaced by the final one."""
    def fix(text: str) -> str:
        return text.replace(str(tmp), str(final))

    return ExportResult(format=result.format, path=final, files=result.files, serve=[fix(s) for s in result.serve],
                        notes=[fix(n) for n in result.notes], measured=result.measured)
