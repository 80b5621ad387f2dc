"""The ``promptbake`` command line. Errors are one sentence; ``--debug`` shows tracebacks."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from .core.errors import ConfigError, PromptbakeError
from .run import files


def read_prompt(value: str) -> str:
    """A prompt given as a file path or as the text itself."""
    path = Path(value)
    if value.endswith((".txt", ".md", ".prompt")) and not path.is_file():
        raise ConfigError(f"Prompt file {value} does not exist.")
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"Prompt file {value} is not valid UTF-8.") from None
        if not text.strip():
            raise ConfigError(f"Prompt file {value} is empty.")
        return text.strip()
    return value


def _parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are TOML (numbers, true/false, [..]) or plain strings.

    A dotted key sets one entry of a table: ``teacher_options.base_url=http://...``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith(".") or key.endswith("."):
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        table, _, sub = key.partition(".")
        if not sub:
            out[key] = value
        elif not isinstance(out.setdefault(table, {}), dict):
            raise ConfigError(f"--set {table}.{sub}: {table} was already set to a plain value.")
        else:
            out[table][sub] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="promptbake")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Bake a system prompt into a model's weights."""


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
    from .baker import Baker
    from .core.config import BakeConfig

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
    from .reevaluate import evaluate_run

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
    from .compare import compare

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
    from .core.plugins import describe

    click.echo(json.dumps(describe(), indent=2))


@cli.command()
@click.argument("run_dir", type=click.Path())
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.html: summary, plots and answers of a bake, in one self-contained file."""
    from .stages.report import write_report

    click.echo(str(write_report(run_dir)))


# -- composition techniques (techniques.py, merge.py) -------------------------------------------


def _technique_settings(sets: tuple[str, ...], quiet: bool, model: str | None) -> dict[str, Any]:
    settings = _parse_set(sets)
    if model is not None:
        settings["model"] = model
    if quiet:
        settings["progress"] = False
    return settings


def _echo_chain(results: list[Any], label: str, summary: Path) -> None:
    """One line per bake of a chain, then where its summary is."""
    for i, result in enumerate(results, 1):
        _echo_step(f"{label} {i}", result)
    click.echo(f"Summary: {summary}")


def _echo_step(label: str, result: Any) -> None:
    """One line per bake of a technique: held-out KL and gap closed when evaluated."""
    e = result.eval or {}
    line = f"{label}: adapter {result.adapter_path}"
    if "kl_prompted_base" in e:
        line += (f"; held-out KL(prompted||base) {e['kl_prompted_base']:.4f} -> KL(prompted||baked) "
                 f"{e['kl_prompted_baked']:.4f}, {100 * e['gap_closed']:.1f}% of the gap closed")
    merged = result.run_dir / files.MERGED
    if merged.is_dir():
        line += f"; merged model {merged}"
    click.echo(line)


_technique_options = [
    click.option("--out", "-o", required=True, type=click.Path(), help="Folder for the run directories."),
    click.option("--model", "-m", help="The model to start from (default: smollm2-135m, embedded)."),
    click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Any bake setting, e.g. -s epochs=2 (applies to every bake)."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
]


def _with_technique_options(f: Any) -> Any:
    for option in reversed(_technique_options):
        f = option(f)
    return f


@cli.command()
@click.option("--prompt", "-p", required=True, help="System prompt text, or a file holding it.")
@click.option("--rounds", "-n", type=int, required=True, help="Rounds of baking (2 or more to pursue).")
@_with_technique_options
def pursue(prompt: str, rounds: int, out: str, model: str | None, sets: tuple[str, ...], quiet: bool) -> None:
    """Prompt Pursuit: bake PROMPT, merge, re-prompt the baked model and bake again, ROUNDS times.

    Rounds go to OUT/round-N (each with a full merged model in OUT/round-N/merged);
    OUT/pursuit.json sums them up.
    """
    from .techniques import pursue as run_pursuit

    results = run_pursuit(read_prompt(prompt), rounds, out, **_technique_settings(sets, quiet, model))
    _echo_chain(results, "Round", Path(out) / "pursuit.json")


@cli.command()
@click.option("--prompt", "-p", "prompts", multiple=True, required=True,
              help="A system prompt (text or file); repeat it, in baking order.")
@_with_technique_options
def sequence(prompts: tuple[str, ...], out: str, model: str | None, sets: tuple[str, ...], quiet: bool) -> None:
    """Sequential baking: bake each --prompt in turn into the model the previous bakes made.

    Steps go to OUT/step-N; OUT/sequence.json sums them up.
    """
    from .techniques import sequential

    results = sequential([read_prompt(p) for p in prompts], out, **_technique_settings(sets, quiet, model))
    _echo_chain(results, "Step", Path(out) / "sequence.json")


@cli.command()
@click.option("--prompt", "-p", "prompts", multiple=True, required=True,
              help="A system prompt of the mixture (text or file); repeat it.")
@click.option("--weight", "-w", "weights", multiple=True, type=float,
              help="The weight of the --prompt at the same position (default: equal weights).")
@_with_technique_options
def mix(prompts: tuple[str, ...], weights: tuple[float, ...], out: str, model: str | None, sets: tuple[str, ...],
        quiet: bool) -> None:
    """Bake a weighted mixture of prompts in one bake: each query is answered under one of them."""
    from .techniques import mix as run_mix

    result = run_mix([read_prompt(p) for p in prompts], list(weights) if weights else [1.0] * len(prompts), out,
                     **_technique_settings(sets, quiet, model))
    if result.main:
        _echo_step("Mixture", result)
        click.echo(f"Run directory: {result.run_dir}")


@cli.command(name="export")
@click.argument("run_dir", type=click.Path())
@click.option("--to", "formats", multiple=True, required=True, metavar="FORMAT",
              help="merged, gguf, gguf-lora, vllm (repeatable; `promptbake plugins` lists what is installed).")
@click.option("--out", "-o", type=click.Path(), help="Folder to write (default RUN_DIR/export/FORMAT; one format only).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="An option of the format, e.g. --option quant=q8_0 (gguf) or --option max_lora_rank=32 (vllm).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export.")
def export_(run_dir: str, formats: tuple[str, ...], out: str | None, options: tuple[str, ...], overwrite: bool) -> None:
    """Write the bake in RUN_DIR for a server: llama.cpp / Ollama (gguf-lora, gguf), vLLM, transformers (merged)."""
    from .stages import export

    if out is not None and len(formats) > 1:
        raise ConfigError("--out names one folder; export one format at a time with it, or drop --out.")
    given = _parse_set(options)
    for exporter in export.exporters(list(formats), {f: given for f in formats}):
        result = export.export(run_dir, exporter, out, overwrite=overwrite)
        click.echo(f"{result.format}: {result.path}")
        for note in result.notes:
            click.echo(f"  {note}")
        for command in result.serve:
            click.echo(f"  serve: {command}")


@cli.command()
@click.option("--adapter", "-a", required=True, type=click.Path(file_okay=False),
              help="A baked LoRA adapter directory.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Folder for the merged model.")
@click.option("--model", "-m", help="The base model (default: the one the adapter records).")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16 or float16.")
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
def merge(adapter: str, out: str, model: str | None, dtype: str, overwrite: bool) -> None:
    """Merge a LoRA adapter into its base model and save a plain transformers model folder."""
    from .builtin.merge import merge_adapter

    click.echo(f"Merged model: {merge_adapter(adapter, out, model=model, dtype=dtype, overwrite=overwrite)}")


def _one_line_warnings() -> None:
    """promptbake's own warnings as one line each on stderr (others as Python prints them)."""
    import warnings

    from .core.errors import PromptbakeWarning

    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PromptbakeWarning):
            click.echo(f"Warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 1."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("PROMPTBAKE_DEBUG"))
    _one_line_warnings()
    try:
        cli.main(args=args, prog_name="promptbake", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PromptbakeError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
