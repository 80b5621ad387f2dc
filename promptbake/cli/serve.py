"""promptbake queries, export and merge: what goes in and out of a bake."""

from __future__ import annotations

import click

from ..core.errors import ConfigError
from .base import _parse_set, cli, read_prompt


@cli.command()
@click.option("--prompt", "-p", required=True, help="The system prompt whose users' messages to write (text or file).")
@click.option("-n", "count", type=int, required=True, help="Training queries to write.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The JSONL file to write.")
@click.option("--heldout", type=int, default=48, show_default=True, help="Held-out queries to write besides.")
@click.option("--examples", type=click.Path(dir_okay=False), help="A queries file whose messages seed the writer.")
@click.option("--followups", type=int, default=0, show_default=True, help="More user turns to write per query.")
@click.option("--writer", default="hf", show_default=True, help="The teacher that writes them (hf, openai, ...).")
@click.option("--model", "-m", help="The writer's model (default: smollm2-135m, embedded).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE",
              help="A setting, e.g. -s teacher_options.base_url=http://127.0.0.1:8000/v1 for a served writer.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def queries(prompt: str, count: int, out: str, heldout: int, examples: str | None, followups: int, writer: str,
            model: str | None, seed: int, sets: tuple[str, ...], quiet: bool) -> None:
    """Write the queries this prompt's users would send (a held-out split besides), for --queries."""
    from ..builtin.models import load_tokenizer
    from ..core import registry
    from ..core.config import BakeConfig
    from ..stages import domain_queries
    from ..stages.queries import load_queries
    from ..stages.render import Renderer

    settings = {**_parse_set(sets), "prompt": read_prompt(prompt), "teacher": writer, "progress": not quiet}
    if model:
        settings["model"] = model
    config = BakeConfig.from_dict(settings)
    if count < 1 or heldout < 0 or followups < 0:
        raise ConfigError("-n must be a positive number and --heldout and --followups whole numbers.")
    seeds = [q.text for q in load_queries(examples)] if examples else []
    teacher = registry.create("teacher", writer, **config.teacher_options)
    teacher.check(config)
    teacher.setup(config)
    try:
        # A served writer (openai) has no tokenizer of its own: it reads the model's, as in a bake.
        tokenizer = teacher.tokenizer
        if tokenizer is None:
            tokenizer = load_tokenizer(config.model)
            teacher.use_student_tokenizer(tokenizer)
        renderer = Renderer(tokenizer, "", 10**6)
        rows, measured = domain_queries.write_queries(
            teacher, renderer, config.prompt, count, heldout=heldout, examples=seeds, followups=followups, seed=seed,
            model=config.teacher_model or config.model, show_progress=not quiet)
    finally:
        teacher.close()
    domain_queries.save(rows, out)
    click.echo(f"Wrote {len(rows)} queries ({count} train, {heldout} held out) to {out}: "
               f"{measured['near_duplicates']} near-duplicates and {measured['unusable']} unusable of "
               f"{measured['candidates']} written; distinct-1 {measured['distinct_1']:.2f}, "
               f"distinct-2 {measured['distinct_2']:.2f}.")


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
    from ..stages import export

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
    from ..builtin.merge import merge_adapter

    click.echo(f"Merged model: {merge_adapter(adapter, out, model=model, dtype=dtype, overwrite=overwrite)}")
