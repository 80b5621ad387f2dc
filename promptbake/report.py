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

import base64
import html
import importlib.util
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .rundir import atomic_write, write_text

REPORT_FILE = "report.html"
PLOT_DIR = "report"
MAX_ANSWERS = 20
SIDE_ORDER = ("base", "prompted", "baked")
# One colour per side, used by every plot (matplotlib's default cycle, fixed here).
COLORS = {"base": "#7f7f7f", "prompted": "#1f77b4", "baked": "#d62728", "reprompted": "#9467bd"}
DPI = 100


@dataclass
class Plot:
    """One drawn figure: its file name, the PNG bytes, and a caption."""

    name: str
    title: str
    png: bytes
    caption: str

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


# --------------------------------------------------------------------------- reading


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
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run} has no config.json, so it is not a promptbake run directory.")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path} is not a JSON object.")
    metrics = _read_jsonl(run / "metrics.jsonl")
    return {
        "config": config,
        "train": [m for m in metrics if m.get("stage") == "train"],
        "done": next((m for m in reversed(metrics) if m.get("stage") == "done"), {}),
        "eval": _dict(_read_json(run / "eval.json")),
        "answers": _read_jsonl(run / "answers.jsonl"),
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


# --------------------------------------------------------------------------- plots


def _figure(width: float = 8.0, height: float = 4.5, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Any) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _pct_axis(ax: Any) -> None:
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0f}%")


def plot_loss(data: dict[str, Any]) -> Any:
    steps, losses, epochs = _loss_curve(data["train"])
    if not steps:
        return None
    fig, ax = _figure()
    ax.plot(steps, losses, color=COLORS["baked"], alpha=0.35 if len(steps) > 20 else 1.0, lw=1,
            marker="o" if len(steps) <= 20 else None, ms=4, label="loss per step")
    if len(steps) > 20:  # a moving average makes the trend readable through the noise of small batches
        window = max(3, len(steps) // 20)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color=COLORS["baked"], lw=2, label=f"moving average ({window} steps)")
    for i in range(1, len(steps)):
        if epochs[i] is not None and epochs[i - 1] is not None and epochs[i] != epochs[i - 1]:
            ax.axvline(steps[i], color="#999999", ls=":", lw=1)
            ax.text(steps[i], 1.0, f" epoch {epochs[i] + 1}", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=9, color="#555555")
    if min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
        ax.set_ylabel("loss, nats per token (log scale)")
    else:
        ax.set_ylabel("loss, nats per token")
    ax.set_xlabel("optimizer step")
    loss = data["config"].get("loss")
    ax.set_title(f"Training loss ({loss})" if isinstance(loss, str) else "Training loss")
    ax.legend(loc="lower left", frameon=False)
    _style(ax)
    return fig


def plot_kl(data: dict[str, Any]) -> Any:
    ev = data["eval"]
    groups = []
    for label, scores in (("teacher's trajectories\n(held-out queries)", ev),
                          ("on-policy\n(each model's own answers)", _dict(ev.get("on_policy")))):
        base, baked = _num(scores.get("kl_prompted_base")), _num(scores.get("kl_prompted_baked"))
        if base is not None or baked is not None:
            groups.append((label, base, baked, _num(scores.get("gap_closed"))))
    if not groups:
        return None
    fig, ax = _figure(7.0, 4.5)
    width = 0.38
    top = max(v for _, b, k, _ in groups for v in (b, k) if v is not None)
    labelled: set[str] = set()
    for i, (_label, base, baked, gap) in enumerate(groups):
        for offset, side, value in ((-width / 2, "base", base), (width / 2, "baked", baked)):
            if value is None:
                continue
            bar = ax.bar(i + offset, value, width, color=COLORS[side], label=None if side in labelled else side)
            labelled.add(side)
            ax.bar_label(bar, fmt="%.3f", padding=2, fontsize=9)
        if gap is not None:
            ax.text(i, top * 1.1, f"{100 * gap:.0f}% of the gap closed", ha="center", fontsize=10,
                    fontweight="bold")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylim(0, top * 1.35 if top > 0 else 1)
    ax.set_ylabel("KL(prompted ‖ model), nats per token")
    ax.set_title("Held-out KL to the prompted model: base vs baked (lower is better)")
    ax.legend(frameon=False, loc="upper center", ncols=2)
    _style(ax)
    ax.grid(False, axis="x")
    return fig


def plot_positions(data: dict[str, Any]) -> Any:
    curves = _dict(data["eval"].get("kl_by_position"))
    lines = {}
    for side in ("base", "baked"):
        points = [(i + 1, v) for i, raw in enumerate(_list(curves.get(side))) if (v := _num(raw)) is not None]
        if points:
            lines[side] = points
    if not lines:
        return None
    fig, ax = _figure()
    counts = [(i + 1, c) for i, raw in enumerate(_list(curves.get("tokens"))) if (c := _num(raw)) is not None]
    if counts:  # how many responses reach each position: the right end rests on few tokens
        twin = ax.twinx()
        twin.fill_between([p for p, _ in counts], [c for _, c in counts], step="mid", color="#bbbbbb",
                          alpha=0.3, lw=0)
        twin.set_ylabel("tokens measured at the position (grey)", color="#777777")
        twin.tick_params(axis="y", colors="#777777")
        twin.set_ylim(0, max(c for _, c in counts) * 1.1 or 1)
        twin.spines[["top"]].set_visible(False)
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    for side, points in lines.items():
        ax.plot([p for p, _ in points], [v for _, v in points], color=COLORS[side], lw=1.8,
                marker="o" if len(points) <= 30 else None, ms=3, label=side)
    ax.set_xlabel("response position (tokens, 1 = first response token)")
    ax.set_ylabel("mean KL(prompted ‖ model), nats")
    ax.set_ylim(bottom=0)
    ax.set_title("Held-out KL along the response")
    ax.legend(frameon=False, loc="upper right")
    _style(ax)
    return fig


def _probe_bars(ev: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Greedy and, when measured, sampled probe scores, one bar group each."""
    greedy, sampled = _probe_table(ev.get("probes")), _probe_table(ev.get("probes_sampled"))
    if not sampled:
        return greedy
    n = ev.get("probe_samples")
    out = {f"{name}\ngreedy": scores for name, scores in greedy.items()}
    out.update({f"{name}\nsampled" + (f" (x{n})" if isinstance(n, int) else ""): scores
                for name, scores in sampled.items()})
    return dict(sorted(out.items(), key=lambda kv: kv[0].split("\n")[0]))  # a probe's groups side by side


def plot_probes(data: dict[str, Any]) -> Any:
    probes = _probe_bars(data["eval"])
    if not probes:
        return None
    names = list(probes)
    sides = [s for s in SIDE_ORDER if any(s in p for p in probes.values())]
    sides += sorted({s for p in probes.values() for s in p} - set(sides))
    fig, ax = _figure(min(14.0, max(8.0, 1.6 + 0.45 * len(names) * len(sides))), 4.5)
    width = 0.8 / max(len(sides), 1)
    for j, side in enumerate(sides):
        xs = [i + (j - (len(sides) - 1) / 2) * width for i, n in enumerate(names) if side in probes[n]]
        ys = [100 * probes[n][side] for n in names if side in probes[n]]
        bars = ax.bar(xs, ys, width, color=COLORS.get(side), label=side)
        ax.bar_label(bars, fmt="%.0f%%", padding=2, fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=0 if len(names) <= 4 else 30,
                  ha="center" if len(names) <= 4 else "right")
    _pct_axis(ax)
    ax.set_ylabel("probe score (% of answers that pass)")
    ax.set_title("Behaviour probes (higher = more like the prompt)")
    ax.legend(frameon=False, loc="upper left", ncols=len(sides))
    ax.set_ylim(0, 118)
    _style(ax)
    ax.grid(False, axis="x")
    return fig


def _score_lines(ax: Any, lines: dict[str, list[tuple[float, float]]], prompted: dict[str, float]) -> None:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for k, (name, points) in enumerate(lines.items()):
        color = cmap(k % 10)
        ax.plot([x for x, _ in points], [100 * y for _, y in points], marker="o", lw=2, color=color, label=name)
        if name in prompted:  # the target: what the prompted model scores
            ax.axhline(100 * prompted[name], color=color, ls="--", lw=1, alpha=0.7)
    _pct_axis(ax)
    ax.set_ylabel("probe score (% of answers that pass)")
    ax.legend(frameon=False, loc="lower right", fontsize=9)
    _style(ax)


def _probe_curve(data: dict[str, Any], key: str, xlabel: str, title: str) -> Any:
    """Probe scores along ``eval[key]`` (strengths or epochs), with the prompted scores dashed."""
    xs, lines = _series(data["eval"].get(key), key.rstrip("s"))
    if not lines:
        return None
    prompted = {n: s["prompted"] for n, s in _probe_table(data["eval"].get("probes")).items() if "prompted" in s}
    fig, ax = _figure()
    _score_lines(ax, lines, prompted)
    if key == "epochs" and all(x.is_integer() for x in xs):
        ax.set_xticks(sorted(set(xs)))
    ax.set_xlabel(xlabel)
    ax.set_title(title + (" (dashed: prompted)" if prompted else ""))
    return fig


def plot_strength(data: dict[str, Any]) -> Any:
    return _probe_curve(data, "strengths", "adapter strength (0 = base model, 1 = the full bake)",
                        "Half-baking: probe score vs adapter strength")


def plot_epochs(data: dict[str, Any]) -> Any:
    return _probe_curve(data, "epochs", "training epoch (adapter saved at the end of the epoch)",
                        "Probe score after each epoch")


# name, title, drawing function, caption, line shown when the data is missing
PLOTS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("loss", "Training loss", plot_loss,
     "The training loss at each optimizer step (dotted lines: epoch starts). It should fall and level off.",
     "Training loss: not measured (no training steps with a loss in metrics.jsonl)."),
    ("kl", "Held-out KL", plot_kl,
     ("Per-token KL from the prompted model to the base (grey) and baked (red) model without the prompt, "
      "on held-out queries: on the prompted teacher's trajectories and, when measured, on-policy (each model "
      "scored on answers it sampled itself). The bake closes the gap between the two bars."),
     "Held-out KL: not measured (no eval.json, or the bake ran with evaluation off)."),
    ("positions", "KL along the response", plot_positions,
     ("Mean KL at each response position: where along an answer the baked model still departs from the "
      "prompted one. Grey: how many held-out tokens each position averages over."),
     "KL by response position: not measured."),
    ("probes", "Behaviour probes", plot_probes,
     ("The share of answers that pass each behaviour probe (for example, answered in French) for the "
      "base, prompted and baked models: their greedy answers (each model's single most likely reply) and, "
      "when measured, answers sampled at the bake's temperature (the distribution the bake matches)."),
     "Behaviour probes: not measured."),
    ("strength", "Half-baking", plot_strength,
     ("Probe scores with the LoRA adapter scaled between 0 (the base model) and 1 (the full bake); "
      "dashed lines: the prompted model."),
     "Half-baking (probe score vs adapter strength): not measured."),
    ("epochs", "Probe score by epoch", plot_epochs,
     "Probe scores of the adapter saved after each training epoch; dashed lines: the prompted model.",
     "Probe score by epoch: not measured."),
]


def draw_plots(data: dict[str, Any]) -> tuple[list[Plot], dict[str, str]]:
    """The plots the data allows, and for the others the line saying why they are missing."""
    plots: list[Plot] = []
    missing: dict[str, str] = {}
    if importlib.util.find_spec("matplotlib") is None:
        return [], {name: f"{title}: not drawn (matplotlib is not installed)." for name, title, *_ in PLOTS}
    for name, title, draw, caption, absent in PLOTS:
        try:
            fig = draw(data)
            if fig is None:
                missing[name] = absent
                continue
            plots.append(Plot(name, title, _png(fig), caption))
        except Exception as exc:  # noqa: BLE001  odd values in a hand-edited file must not cost the whole report
            missing[name] = f"{title}: could not be drawn ({type(exc).__name__}: {exc})."
    return plots, missing


# --------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 24px; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h1 code { font-size: 0.9em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 5px 9px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
table.summary th { width: 15em; }
table.stats td.n { text-align: right; font-variant-numeric: tabular-nums; }
.headline { font-weight: 600; }
.good { color: #1a7f37; }
.missing { color: #777; font-style: italic; margin: 0.4em 0; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; max-width: 800px; }
table.answers { table-layout: fixed; width: 100%; font-size: 0.9em; }
table.answers td { white-space: pre-wrap; overflow-wrap: anywhere; }
table.answers th.q { width: 18%; }
pre.prompt { white-space: pre-wrap; overflow-wrap: anywhere; background: #f7f7f7; padding: 8px;
             border: 1px solid #e5e5e5; max-height: 16em; overflow: auto; margin: 0; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
footer { margin-top: 2.5em; color: #888; font-size: 0.85em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {s} s"


def _summary_rows(data: dict[str, Any], run_name: str) -> list[tuple[str, str]]:
    """(label, HTML) rows of the summary table; values are escaped here."""
    cfg, done, ev = data["config"], data["done"], data["eval"]
    rows: list[tuple[str, str]] = [("Run directory", f"<code>{_e(run_name)}</code>")]

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append((label, _e(value)))

    model = cfg.get("model")
    if cfg.get("teacher_model"):
        model = f"{model} (teacher model: {cfg['teacher_model']})"
    add("Model", model)
    parts = [str(cfg[k]) for k in ("teacher", "student", "loss") if cfg.get(k)]
    if parts:
        loss = str(cfg.get("loss", ""))
        top_k = cfg.get("top_k")
        suffix = f" (K = {top_k})" if loss.startswith("topk") and top_k is not None else ""
        add("Teacher / student / loss", " / ".join(parts) + suffix)
    settings = [f"{k} {cfg[k]}" for k in ("epochs", "lr", "samples_per_query", "max_new_tokens", "lora_rank")
                if cfg.get(k) is not None]
    add("Settings", ", ".join(settings))
    if (trajectories := done.get("trajectories")) is not None:
        tokens = done.get("response_tokens")
        add("Training trajectories", f"{trajectories}" + (f" ({tokens} response tokens)" if tokens else ""))
    steps, losses, _ = _loss_curve(data["train"])
    first, last = _num(done.get("first_loss")), _num(done.get("last_loss"))
    if first is None and losses:
        first, last = losses[0], losses[-1]
    if first is not None and last is not None:
        add("Training steps, loss", f"{done.get('steps', len(steps))} steps, loss {first:.4f} → {last:.4f}")
    if (total := _duration(_num(done.get("total_s")))) is not None:
        parts = [f"{k[:-2]} {d}" for k in ("generate_s", "score_s", "train_s", "eval_s")
                 if (d := _duration(_num(done.get(k)))) is not None]
        add("Time", total + (f" ({', '.join(parts)})" if parts else ""))
    if cfg.get("prompt_sha256"):
        rows.append(("Prompt sha256", f"<code>{_e(cfg['prompt_sha256'])}</code>"))
    if isinstance(cfg.get("prompt"), str):
        rows.append(("Prompt", f'<pre class="prompt">{_e(cfg["prompt"])}</pre>'))

    base, baked = _num(ev.get("kl_prompted_base")), _num(ev.get("kl_prompted_baked"))
    if base is not None and baked is not None:
        detail = []
        if ev.get("kl"):
            detail.append(f"KL: {ev['kl']}")
        if ev.get("trajectories") is not None:
            detail.append(f"{ev['trajectories']} held-out trajectories")
        if ev.get("tokens") is not None:
            detail.append(f"{ev['tokens']} tokens")
        kl = f"{base:.4f} → {baked:.4f} nats per token"
        rows.append(("Held-out KL base → baked", f'<span class="headline">{_e(kl)}</span>'
                     + (f" ({_e('; '.join(detail))})" if detail else "")))
    else:
        rows.append(("Held-out KL base → baked", '<span class="missing">not measured</span>'))
    gap = _pct(_num(ev.get("gap_closed")))
    rows.append(("Gap closed", f'<span class="headline good">{_e(gap)}</span>' if gap
                 else '<span class="missing">not measured</span>'))
    t_base, t_baked = _num(ev.get("top1_agreement_base")), _num(ev.get("top1_agreement_baked"))
    if t_base is not None and t_baked is not None:
        rows.append(("Top-1 agreement before → after",
                     f'<span class="headline">{_e(_pct(t_base))} → {_e(_pct(t_baked))}</span>'))
    on = _dict(ev.get("on_policy"))
    on_gap = _pct(_num(on.get("gap_closed")))
    on_base, on_baked = _num(on.get("kl_prompted_base")), _num(on.get("kl_prompted_baked"))
    if on_gap:
        kl = f" (KL {on_base:.4f} → {on_baked:.4f})" if on_base is not None and on_baked is not None else ""
        rows.append(("On-policy gap closed", f'<span class="headline good">{_e(on_gap)}</span>{_e(kl)}'))
    elif on_baked is not None:  # a teacher without full logits: the base side cannot be measured
        rows.append(("On-policy gap closed", '<span class="missing">not measured</span>'
                     + _e(f" (KL(prompted ‖ baked) on its own answers: {on_baked:.4f})")))
    else:
        rows.append(("On-policy gap closed", '<span class="missing">not measured</span>'))
    return rows


def _answer_stats_html(ev: dict[str, Any]) -> str:
    stats = {str(side): _dict(v) for side, v in _dict(ev.get("answers")).items() if _dict(v)}
    if not stats:
        return ""
    sides = [s for s in SIDE_ORDER if s in stats] + [s for s in stats if s not in SIDE_ORDER]
    columns = [("answers", "answers", "{:.0f}"), ("mean_tokens", "mean tokens", "{:.1f}"),
               ("finished", "finished", "{:.0%}"), ("distinct_1", "distinct-1", "{:.3f}"),
               ("distinct_2", "distinct-2", "{:.3f}")]
    columns = [c for c in columns if any(_num(v.get(c[0])) is not None for v in stats.values())]
    if not columns:
        return ""
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in columns)
    body = []
    for side in sides:
        cells = []
        for key, _, fmt in columns:
            value = _num(stats[side].get(key))
            cells.append(f'<td class="n">{_e(fmt.format(value)) if value is not None else "–"}</td>')
        body.append(f"<tr><th>{_e(side)}</th>{''.join(cells)}</tr>")
    return ('<p>Greedy answers to the held-out questions. Finished: the share that ended before the token '
            'limit. Distinct-n: distinct token n-grams over all n-grams (lower = more repetitive).</p>'
            f'<table class="stats"><tr><th>model</th>{head}</tr>{"".join(body)}</table>')


def _answers_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="missing">Answers: not recorded (no answers.jsonl).</p>'
    sides = _answer_sides(rows)
    shown = rows[:MAX_ANSWERS]
    note = (f"The first {len(shown)} of {len(rows)} held-out questions."
            if len(rows) > len(shown) else f"All {len(rows)} held-out questions.")
    head = '<th class="q">question</th>' + "".join(f"<th>{_e(s)}</th>" for s in sides)
    body = []
    for row in shown:
        question = row.get("question", row.get("query_id", ""))
        cells = "".join(f"<td>{_e(_text(row.get(s)))}</td>" for s in sides)
        body.append(f"<tr><td>{_e(_text(question))}</td>{cells}</tr>")
    return f'<p>{_e(note)}</p><table class="answers"><tr>{head}</tr>{"".join(body)}</table>'


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_html(data: dict[str, Any], run_name: str, plots: Sequence[Plot], missing: dict[str, str]) -> str:
    by_name = {p.name: p for p in plots}

    def section(names: Sequence[str]) -> str:
        out = []
        for name in names:
            if name in by_name:
                p = by_name[name]
                out.append(f'<figure id="plot-{_e(p.name)}"><img src="{p.data_uri()}" alt="{_e(p.title)}">'
                           f"<figcaption>{_e(p.caption)}</figcaption></figure>")
            elif name in missing:
                out.append(f'<p class="missing">{_e(missing[name])}</p>')
        return "\n".join(out)

    summary = "\n".join(f"<tr><th>{_e(label)}</th><td>{value}</td></tr>"
                        for label, value in _summary_rows(data, run_name))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    stats = _answer_stats_html(data["eval"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>promptbake report: {_e(run_name)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>promptbake report: <code>{_e(run_name)}</code></h1>
<p class="sub">A system prompt baked into the model's weights: how close the baked model, without the prompt,
comes to the base model with the prompt.</p>
<h2>Summary</h2>
<table class="summary">
{summary}
</table>
<h2>Training</h2>
{section(["loss"])}
<h2>Held-out evaluation</h2>
{section(["kl", "positions"])}
<h2>Behaviour</h2>
{section(["probes", "strength", "epochs"])}
<h2>Answers</h2>
{stats}
{_answers_html(data["answers"])}
<footer>Written by <code>promptbake report</code> on {_e(stamp)}. The plots are also saved as PNG files in
<code>{_e(PLOT_DIR)}/</code> next to this file.</footer>
</body>
</html>
"""


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html`` (self-contained) and the plots as ``RUN/report/*.png``; return the HTML path.

    Raises :class:`ConfigError` only when ``run_dir`` is missing or has no ``config.json``.
    """
    run = Path(run_dir)
    data = load_run(run)
    plots, missing = draw_plots(data)
    plot_dir = run / PLOT_DIR
    for plot in plots:
        def write(tmp: str, png: bytes = plot.png) -> None:
            Path(tmp).write_bytes(png)

        atomic_write(plot_dir / f"{plot.name}.png", write)
    for name in missing:  # a plot from an earlier report whose data is gone now
        (plot_dir / f"{name}.png").unlink(missing_ok=True)
    path = run / REPORT_FILE
    write_text(path, render_html(data, run.resolve().name or str(run), plots, missing))
    return path
