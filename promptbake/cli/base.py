"""The command group and what every command shares: reading a prompt, --set KEY=VALUE."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from ..core.errors import ConfigError


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
