"""promptbake-openai: hosted teachers behind OpenAI-compatible APIs (``openai``, ``openrouter``).

Registered through the ``promptbake`` entry-point group; the classes are named
as "module:Class" strings so loading the plugin imports neither openai nor torch.
"""

from __future__ import annotations

from promptbake import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_teachers(register):  # type: ignore[no-untyped-def]
    register("openai", "promptbake_openai.openai:OpenAITeacher", aliases=("openai-compatible",))
    register("openrouter", "promptbake_openai.openrouter:OpenRouterTeacher")
