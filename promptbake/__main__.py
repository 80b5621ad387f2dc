"""``python -m promptbake`` runs the CLI."""

from .cli import main

main()
