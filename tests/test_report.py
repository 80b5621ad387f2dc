"""promptbake report: a self-contained HTML page of a run directory, checked as text and in Chromium."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from promptbake.cli import cli, main
from promptbake.core.errors import ConfigError
from promptbake.stages.report import write_report
from promptbake.stages.report.plots import PLOTS

ALL_PLOTS = [name for name, *_ in PLOTS]
CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script> Tom & Jerry"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_run(root: Path, name: str = "french", full: bool = True) -> Path:
    """A run directory as a bake writes it, with plausible numbers (no model involved)."""
    run = root / name
    run.mkdir(parents=True)
    config = {"model": "smollm2-135m", "teacher": "hf", "student": "peft", "loss": "topk_kl", "epochs": 3,
              "lr": 0.001, "top_k": 20, "samples_per_query": 2, "max_new_tokens": 48, "lora_rank": 16,
              "teacher_model": None, "include_prompt": True, "prompt": "Always answer in French. <b>&</b>",
              "prompt_sha256": "9f8b08a4b71828a5befeadfc341ef81052be25ba554843790149cdc93ed4e4dd"}
    (run / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if not full:
        return run
    metrics: list[dict] = [{"stage": "generate", "samples": 304}, {"stage": "score", "cache": "miss"}]
    for step in range(1, 115):
        if step == 40:
            metrics.append({"stage": "train", "resumed_at": 39})  # no loss: skipped
        metrics.append({"stage": "train", "step": step, "epoch": (step - 1) // 38,
                        "loss": 0.26 * math.exp(-step / 30) + 0.008 + 0.01 * math.sin(step), "lr": 1e-3})
    metrics.append({"stage": "done", "steps": 114, "first_loss": 0.258, "last_loss": 0.0087, "generate_s": 135.5,
                    "score_s": 37.9, "train_s": 346.7, "eval_s": 19.8, "total_s": 556.8, "trajectories": 304,
                    "response_tokens": 14198})
    _write_jsonl(run / "metrics.jsonl", metrics)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "train", "step": 115, "lo')  # a torn last line
    positions = 48
    evaluation = {
        "kl_prompted_base": 0.38, "kl_prompted_baked": 0.044, "gap_closed": 0.884,
        "top1_agreement_baked": 0.868, "top1_agreement_base": 0.727, "kl": "full", "tokens": 2269,
        "trajectories": 48,
        "kl_by_position": {
            "base": [0.9 * math.exp(-i / 8) + 0.2 if i != 5 else None for i in range(positions)],
            "baked": [0.1 * math.exp(-i / 10) + 0.03 if i != 5 else None for i in range(positions)],
            "tokens": [48 - i // 2 for i in range(positions)]},
        "on_policy": {"kl": "full", "kl_prompted_base": 0.41, "kl_prompted_baked": 0.06, "gap_closed": 0.85,
                      "top1_agreement_base": 0.7, "top1_agreement_baked": 0.85, "tokens_base": 2100,
                      "tokens_baked": 2050},
        "answers": {side: {"answers": 48, "mean_tokens": 40.1 + k, "finished": 0.9, "distinct_1": 0.41,
                           "distinct_2": 0.78} for k, side in enumerate(["base", "prompted", "baked", "reprompted"])},
        "probes": {"language=fr": {"base": 0.02, "prompted": 0.92, "baked": 0.90, "reprompted": 0.95},
                   "no_emoji": {"base": 0.5, "prompted": 0.97, "baked": None}},
        "probes_sampled": {"language=fr": {"base": 0.03, "prompted": 0.85, "baked": 0.84}},
        "probe_samples": 4,
        "strengths": [{"strength": s, "probes": {"language=fr": 0.02 + 0.88 * s * s, "no_emoji": 0.5 + 0.4 * s}}
                      for s in (0.0, 0.25, 0.5, 0.75, 1.0)],
        "epochs": [{"epoch": e, "probes": {"language=fr": p}} for e, p in ((1, 0.6), (2, 0.85), (3, 0.9))],
    }
    (run / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    answers = [{"query_id": f"q{i}", "question": f"Question {i}: what is {i} + {i}?",
                "base": f"{2 * i}.", "prompted": f"C'est {2 * i}.", "baked": f"Ça fait {2 * i}.",
                "reprompted": f"Réponse : {2 * i}."} for i in range(25)]
    answers[0]["baked"] = EVIL
    answers[1]["question"] = "Write HTML: <img src=x onerror=alert(2)>"
    _write_jsonl(run / "answers.jsonl", answers)
    return run


def data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_full_report(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    images = data_uris(page)
    assert len(images) == len(ALL_PLOTS)
    for name in ALL_PLOTS:
        png = (run / "report" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
        assert png in images  # the embedded copy is the file's
        assert f'id="plot-{name}"' in page
    assert "not measured" not in page
    # Model output is text, never markup.
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Tom &amp; Jerry" in page
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in page  # the stored prompt too
    # Self-contained: nothing loaded from anywhere else.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<link" not in page
    assert "@import" not in page and "url(" not in page
    # Summary headline and answer columns, in order; 20 of 25 questions.
    assert "0.3800 → 0.0440" in page and "88.4%" in page and "72.7% → 86.8%" in page and "85.0%" in page
    header = re.search(r'<table class="answers"><tr>(.*?)</tr>', page).group(1)
    assert re.findall(r"<th[^>]*>(.*?)</th>", header) == ["question", "base", "prompted", "baked", "reprompted"]
    assert "The first 20 of 25" in page and "Question 19:" in page and "Question 20:" not in page
    assert not list((run / "report").glob(".*tmp")) and not list(run.glob(".*tmp"))


def test_config_only_still_reports(tmp_path):
    run = make_run(tmp_path, full=False)
    page = write_report(run).read_text(encoding="utf-8")
    assert "smollm2-135m" in page and data_uris(page) == []
    assert page.count("not measured") >= len(ALL_PLOTS)
    assert not any((run / "report").glob("*.png"))


def test_partial_and_odd_data(tmp_path):
    """Nulls, NaN, strings where numbers belong and missing sections cost only their own plot."""
    run = make_run(tmp_path)
    write_report(run)
    ev = json.loads((run / "eval.json").read_text())
    for key in ("strengths", "epochs", "probes", "probes_sampled"):
        del ev[key]
    ev["on_policy"] = {"kl": "top-20 with tail (a lower bound)", "kl_prompted_baked": 0.07}  # no base side
    ev["gap_closed"] = float("nan")
    ev["kl_by_position"] = {"base": [None, None], "baked": "oops"}
    ev["answers"] = {"base": {"answers": None, "mean_tokens": "x"}}
    (run / "eval.json").write_text(json.dumps(ev))
    (run / "metrics.jsonl").write_text('{"stage": "train", "resumed_at": 3}\nnot json\n')
    page = write_report(run).read_text(encoding="utf-8")
    assert len(data_uris(page)) == 1 and "plot-kl" in page  # only the held-out KL is left
    assert sorted(p.stem for p in (run / "report").glob("*.png")) == ["kl"]  # stale plots removed
    assert "could not be drawn" not in page
    assert "0.0700" in page and '<table class="stats">' not in page


def test_without_matplotlib(tmp_path, monkeypatch):
    from promptbake.stages.report import plots

    monkeypatch.setattr(plots.importlib.util, "find_spec", lambda name: None)
    page = write_report(make_run(tmp_path)).read_text(encoding="utf-8")
    assert data_uris(page) == [] and page.count("matplotlib is not installed") == len(ALL_PLOTS)
    assert "88.4%" in page  # the tables do not need it


def test_crash_keeps_the_previous_report(tmp_path, monkeypatch):
    from promptbake.stages import report

    run = make_run(tmp_path)
    before = write_report(run).read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(report, "render_html", crash)
    with pytest.raises(RuntimeError):
        write_report(run)
    assert (run / "report.html").read_bytes() == before
    assert not [p for p in (*run.iterdir(), *(run / "report").iterdir()) if p.name.endswith(".tmp")]


def test_cli_report(tmp_path):
    run = make_run(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(run / "report.html")
    assert (run / "report.html").is_file()


@pytest.mark.parametrize("kind", ["missing", "no-config"])
def test_cli_report_errors(tmp_path, capsys, kind):
    target = tmp_path / "nope"
    if kind == "no-config":
        target.mkdir()
    result = CliRunner().invoke(cli, ["report", str(target)])
    assert isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert message.count(". ") == 0 and message.endswith(".") and str(target) in message
    with pytest.raises(SystemExit) as exit_info:  # the real entry point: one line, exit 1
        main(["report", str(target)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == f"Error: {message}" and "Traceback" not in err


def test_no_torch_import():
    code = "import sys, promptbake.report; assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- Chromium

PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  var wide = document.documentElement.scrollWidth > window.innerWidth;
  document.title = "PROBE images=" + imgs.length + " loaded=" + ok + " overflow=" + wide;
});
</script>
"""


def chromium_or_skip() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("PROMPTBAKE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{CHROMIUM} is missing and PROMPTBAKE_REQUIRE_CHROMIUM=1 (apt-get install chromium).")
    pytest.skip(f"{CHROMIUM} is not installed")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_chromium(tmp_path):
    chromium_or_skip()
    run = make_run(tmp_path)
    page = write_report(run).read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"  # a copy outside the run: only the data URIs can supply the images
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = run_chromium(tmp_path, "--window-size=1280,2400", "--dump-dom", "--virtual-time-budget=5000",
                          probe.as_uri())
    found = re.search(r"<title>PROBE images=(\d+) loaded=(\d+) overflow=(\w+)</title>", result.stdout)
    assert found, f"rc {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    images, loaded, overflow = int(found.group(1)), int(found.group(2)), found.group(3)
    assert images == loaded == len(ALL_PLOTS)
    assert overflow == "false"  # nothing wider than a 1280-pixel window
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in result.stdout
    assert result.stdout.count("<script") == 1  # the probe's own; no answer became markup

    shot = tmp_path / "report.png"
    result = run_chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", (run / "report.html").as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 50_000


def test_probe_bars_put_greedy_and_sampled_scores_of_a_probe_side_by_side():
    from promptbake.stages.report.plots import _probe_bars

    greedy = {"language=fr": {"prompted": 0.7, "baked": 0.8}, "max_length=20": {"prompted": 0.25, "baked": 0.38}}
    assert _probe_bars({"probes": greedy}) == greedy
    bars = _probe_bars({"probes": greedy, "probes_sampled": {"max_length=20": {"prompted": 0.23, "baked": 0.24}},
                        "probe_samples": 4})
    assert list(bars) == ["language=fr\ngreedy", "max_length=20\ngreedy", "max_length=20\nsampled (x4)"]
    assert bars["max_length=20\nsampled (x4)"] == {"prompted": 0.23, "baked": 0.24}
