"""The report's plots (matplotlib on its Agg canvas, never pyplot's global backend)."""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .data import SIDE_ORDER, _dict, _list, _loss_curve, _num, _probe_table, _series

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
