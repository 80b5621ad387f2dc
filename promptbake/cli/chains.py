"""promptbake pursue, sequence and mix: the paper's techniques (techniques.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..run import files
from .base import _parse_set, cli, read_prompt

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
    from ..techniques import pursue as run_pursuit

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
    from ..techniques import sequential

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
    from ..techniques import mix as run_mix

    result = run_mix([read_prompt(p) for p in prompts], list(weights) if weights else [1.0] * len(prompts), out,
                     **_technique_settings(sets, quiet, model))
    if result.main:
        _echo_step("Mixture", result)
        click.echo(f"Run directory: {result.run_dir}")
