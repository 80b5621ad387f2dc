"""Checks on a tokenizer, shared by the render stage and the backends that load models."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError


def require_chat_template(tokenizer: Any) -> None:
    """Refuse a tokenizer without a chat template (checked before any weights load)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "The model's tokenizer has no chat template, so promptbake cannot render the "
            "system prompt the way the model expects; use an instruct/chat model or set "
            "tokenizer.chat_template."
        )
