"""The ``openrouter`` teacher: OpenRouter's OpenAI-compatible API.

Differences from ``openai``: its base URL and key variable, the optional
attribution headers, and ``provider.require_parameters`` so that routing only
picks providers that honour every parameter sent (many silently drop
``logprobs``). A teacher model must be named: OpenRouter has no default.
"""

from __future__ import annotations

from typing import Any

from promptbake import BakeConfig, ConfigError, SamplingConfig

from .openai import OpenAITeacher

BASE_URL = "https://openrouter.ai/api/v1"


class OpenRouterTeacher(OpenAITeacher):
    """A prompted model on OpenRouter, restricted to providers that return log-probs.

    Options: those of ``openai`` (base_url defaults to OpenRouter's, api_key_env
    to ``OPENROUTER_API_KEY``), plus ``app_url`` and ``app_name`` for the
    ``HTTP-Referer`` / ``X-Title`` attribution headers, and ``provider``: more
    provider-routing preferences (``require_parameters`` is always on).
    """

    name = "openrouter"
    default_base_url = BASE_URL
    default_key_env = "OPENROUTER_API_KEY"

    def __init__(self, *args: Any, app_url: str | None = "https://github.com/promptbake/promptbake",
                 app_name: str | None = "promptbake", provider: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.app_url = app_url
        self.app_name = app_name
        self.provider = dict(provider or {})

    def _default_model(self, config: BakeConfig) -> str:
        if not config.teacher_model:
            raise ConfigError("Teacher 'openrouter' needs a model name: set teacher_model, e.g. "
                              "--set teacher_model=meta-llama/llama-3.1-8b-instruct.")
        return config.teacher_model

    def headers(self) -> dict[str, str]:
        out = {}
        if self.app_url:
            out["HTTP-Referer"] = self.app_url
        if self.app_name:
            out["X-Title"] = self.app_name
            out["X-OpenRouter-Title"] = self.app_name
        return out

    def request_extra(self, sampling: SamplingConfig) -> dict[str, Any]:
        extra = super().request_extra(sampling)
        extra["provider"] = {**self.provider, **extra.get("provider", {}), "require_parameters": True}
        return extra
