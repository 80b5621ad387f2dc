"""promptbake bake, eval, generate, report and plugins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..core.errors import ConfigError
from ..run import files
from .base import _parse_set, cli, read_prompt


@cli.command()
@click.option("--prompt", "-p", help="System prompt text, or a file holding it.")
@click.option("--teacher", help="Teacher backend (default: hf).")
@click.option("--student", help="Student backend (default: peft).")
@click.option("--loss", help="Loss: ce, topk_kl or full_kl (default: full_kl when the hf teacher and the peft "
                             "student share one model, else topk_kl).")
@click.option("--model", "-m", help="Model: smollm2-135m (default, embedded), an HF id or a local path.")
@click.option("--queries", "-q", type=click.Path(dir_okay=False), help="Queries file (JSONL, CSV, JSON, Parquet).")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML file with settings.")
@click.option("--out", "-o", help="Run directory (default: runs/bake-TIMESTAMP).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing run directory.")
@click.option("--resume", "resume_dir", type=click.Path(), metavar="RUN_DIR",
              help="Continue the bake saved in RUN_DIR with its settings, keeping all finished work.")
@click.option("--top-k", type=int, help="K for topk_kl (default: the teacher's; 256 for hf, 20 for hosted APIs).")
@click.option("--epochs", type=int, help="Training epochs (default 3).")
@click.option("--lr", type=float, help="Learning rate (default 1e-3).")
@click.option("--max-queries", type=int, help="Use at most this many training queries.")
@click.option("--include-prompt", is_flag=True, default=None, help="Store the prompt text in the run and adapter (default: only its sha256).")
@click.option("--no-eval", is_flag=True, help="Skip the held-out evaluation.")
@click.option("--probe", "probes", multiple=True, metavar="SPEC",
              help="Behaviour probe scored in the evaluation, e.g. language=fr (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="Any other setting, e.g. -s samples_per_query=2.")
def bake(prompt: str | None, config_file: str | None, sets: tuple[str, ...], no_eval: bool, quiet: bool,
         resume_dir: str | None, probes: tuple[str, ...], **options: Any) -> None:
    """Bake PROMPT into the model and evaluate on held-out queries.

    A bake that stopped (crash, kill, lost machine) continues with
    ``--resume RUN_DIR``: finished samples, targets and training steps are kept.
    """
    from ..baker import Baker
    from ..core.config import BakeConfig

    settings = {k: v for k, v in options.items() if v is not None}
    settings.update(_parse_set(sets))
    if no_eval:
        settings["evaluate"] = False
    if probes:
        settings["probes"] = list(probes)
    if quiet:
        settings["progress"] = False
    if resume_dir is not None:
        if config_file:
            raise ConfigError("--resume uses the settings saved in the run directory; drop --config.")
        if settings.get("out") not in (None, resume_dir):
            raise ConfigError("--resume continues RUN_DIR in place; drop --out.")
        settings.pop("out", None)
        baker = Baker.resume(resume_dir, read_prompt(prompt) if prompt is not None else None, **settings)
    else:
        if prompt is None:
            raise ConfigError("Pass the system prompt with --prompt (text or a file), or --resume RUN_DIR.")
        settings["prompt"] = read_prompt(prompt)
        config = BakeConfig.from_toml(config_file, **settings) if config_file else BakeConfig.from_dict(settings)
        baker = Baker(config=config)
    result = baker.run()
    if not result.main:
        return  # another process of a distributed launch; rank 0 reports
    click.echo(f"Adapter: {result.adapter_path}")
    if result.eval:
        _echo_eval(result.eval)
    click.echo(f"Time: {result.metrics['total_s']:.0f} s. Run directory: {result.run_dir}")


def _echo_eval(e: dict[str, Any]) -> None:
    """The evaluation's headline lines."""
    if "kl_prompted_base" in e:
        click.echo(
            f"Held-out KL(prompted||base) {e['kl_prompted_base']:.4f} -> KL(prompted||baked) "
            f"{e['kl_prompted_baked']:.4f}: {100 * e['gap_closed']:.1f}% of the gap closed; "
            f"top-1 agreement {e['top1_agreement_base']:.3f} -> {e['top1_agreement_baked']:.3f}"
        )
    gap = e.get("on_policy") or {}
    if "gap_closed" in gap:
        click.echo(f"On the models' own samples: KL(prompted||base) {gap['kl_prompted_base']:.4f} -> "
                   f"KL(prompted||baked) {gap['kl_prompted_baked']:.4f}: {100 * gap['gap_closed']:.1f}% closed")
    for label, scores in (e.get("probes") or {}).items():
        click.echo(f"Probe {label} (greedy answers): "
                   + ", ".join(f"{side} {100 * v:.0f}%" for side, v in scores.items()))
    for label, scores in (e.get("probes_sampled") or {}).items():
        click.echo(f"Probe {label} ({e.get('probe_samples', '?')} sampled answers per query): "
                   + ", ".join(f"{side} {100 * v:.0f}%" for side, v in scores.items()))
    for row in e.get("strengths") or []:
        click.echo(f"  strength {row['strength']:g}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["probes"].items()))


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.option("--prompt", "-p", help="The baked prompt (text or file), when the run kept only its sha256.")
@click.option("--probe", "probes", multiple=True, metavar="SPEC",
              help="Behaviour probe, e.g. language=fr, regex=..., max_length=40, multiple_choice (repeatable; "
                   "default: the probes the bake used).")
@click.option("--strengths", metavar="S,S,...", help="Adapter scales for the half-baking curve, e.g. 0,0.25,0.5,1.")
@click.option("--reprompt", is_flag=True, help="Also answer with the baked model plus the prompt (re-prompting).")
@click.option("--probe-samples", type=int, metavar="N",
              help="Sampled answers per held-out query and model for the sampled probe scores (0: none).")
@click.option("--max-heldout", type=int, help="Evaluate on at most this many held-out queries.")
@click.option("--no-report", is_flag=True, help="Do not rewrite report.html.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_(run_dir: str, prompt: str | None, probes: tuple[str, ...], strengths: str | None, reprompt: bool,
          probe_samples: int | None, max_heldout: int | None, no_report: bool, quiet: bool) -> None:
    """Evaluate the bake in RUN_DIR on held-out queries; rewrite eval.json, answers.jsonl and report.html."""
    from ..reevaluate import evaluate_run

    settings: dict[str, Any] = {"progress": not quiet}
    if probes:
        settings["probes"] = list(probes)
    if strengths:
        try:
            settings["strengths"] = [float(v) for v in strengths.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--strengths expects numbers separated by commas, got '{strengths}'.") from None
    if reprompt:
        settings["reprompt"] = True
    if max_heldout is not None:
        settings["max_heldout"] = max_heldout
    if probe_samples is not None:
        settings["probe_samples"] = probe_samples
    if not Path(run_dir, files.CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json).")
    metrics = evaluate_run(run_dir, read_prompt(prompt) if prompt is not None else None,
                           report=not no_report, **settings)
    _echo_eval(metrics)
    click.echo(f"Wrote {Path(run_dir) / 'eval.json'}" + ("" if no_report else f" and {Path(run_dir) / 'report.html'}"))


@cli.command()
@click.option("--adapter", "-a", required=True, type=click.Path(file_okay=False), help="A baked adapter directory.")
@click.option("--prompt", "-p", help="The baked prompt (text or file), to show the prompted answer too.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--strength", type=float, default=1.0, show_default=True,
              help="Scale the LoRA adapter: 0 = base, 1 = the full bake (half-baking in between).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("question")
def generate(adapter: str, prompt: str | None, max_new_tokens: int, strength: float, as_json: bool,
             question: str) -> None:
    """Answer QUESTION with the base, prompted and baked models."""
    from ..compare import compare

    answers = compare(adapter, question, read_prompt(prompt) if prompt else None, max_new_tokens=max_new_tokens,
                      strength=strength)
    if as_json:
        click.echo(json.dumps(answers, ensure_ascii=False, indent=2))
        return
    for name, text in answers.items():
        click.secho(f"--- {name} ---", bold=True)
        click.echo(text)
    if "prompted" not in answers:
        click.echo("(pass --prompt to see the prompted answer; the adapter does not store the prompt text)")


@cli.command()
def plugins() -> None:
    """List plugins (built-in included) and what each registers, as JSON."""
    from ..core.plugins import describe

    click.echo(json.dumps(describe(), indent=2))


@cli.command()
@click.argument("run_dir", type=click.Path())
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.html: summary, plots and answers of a bake, in one self-contained file."""
    from ..stages.report import write_report

    click.echo(str(write_report(run_dir)))
