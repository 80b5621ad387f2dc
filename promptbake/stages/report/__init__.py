"""A self-contained HTML report of a run directory: ``promptbake report RUN_DIR``.

:func:`write_report` reads what a bake wrote (``config.json``, ``metrics.jsonl``,
``eval.json``, ``answers.jsonl``) and writes ``RUN/report.html`` plus its plots as
PNG files in ``RUN/report/``. Each plot is also embedded in the HTML as a base64
data URI, so ``report.html`` alone can be mailed or attached: it loads nothing
from the network and runs no JavaScript.

Everything but ``config.json`` is optional: a section whose data is missing
says so in one line instead of failing. Every file is written to a temporary
name and renamed into place, so a crash never leaves a half-written report.

No torch here; matplotlib is imported only when plots are drawn, and draws
on its Agg canvas without touching pyplot's global backend.
"""

from __future__ import annotations

from pathlib import Path

from ...core.atomic import atomic_write, write_text
from ...run import files
from .data import load_run
from .html import render_html
from .plots import draw_plots


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html`` (self-contained) and the plots as ``RUN/report/*.png``; return the HTML path.

    Raises :class:`ConfigError` only when ``run_dir`` is missing or has no ``config.json``.
    """
    run = Path(run_dir)
    data = load_run(run)
    plots, missing = draw_plots(data)
    plot_dir = run / files.REPORT_PLOTS
    for plot in plots:
        def write(tmp: str, png: bytes = plot.png) -> None:
            Path(tmp).write_bytes(png)

        atomic_write(plot_dir / f"{plot.name}.png", write)
    for name in missing:  # a plot from an earlier report whose data is gone now
        (plot_dir / f"{name}.png").unlink(missing_ok=True)
    path = run / files.REPORT
    write_text(path, render_html(data, run.resolve().name or str(run), plots, missing))
    return path
