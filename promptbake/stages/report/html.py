"""The report's HTML: one self-contained page, plots embedded as data URIs, no JavaScript."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ...run import files
from .data import SIDE_ORDER, _answer_sides, _dict, _loss_curve, _num
from .plots import Plot

MAX_ANSWERS = 20


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
<code>{_e(files.REPORT_PLOTS)}/</code> next to this file.</footer>
</body>
</html>
"""
