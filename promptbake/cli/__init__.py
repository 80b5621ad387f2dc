"""The ``promptbake`` command line: one click group (cli/base.py), its commands in the modules
beside it, and :func:`main`, which turns user errors into one sentence and a non-zero exit."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..core.errors import PromptbakeError
from . import bake, chains, serve  # noqa: F401 - the commands register themselves on the group
from .base import cli, read_prompt

__all__ = ["cli", "main", "read_prompt"]


def _one_line_warnings() -> None:
    """promptbake's own warnings as one line each on stderr (others as Python prints them)."""
    import warnings

    from ..core.errors import PromptbakeWarning

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
