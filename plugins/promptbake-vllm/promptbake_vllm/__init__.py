"""promptbake plugin: the ``vllm`` (in-process engine) and ``vllm-server`` (OpenAI-compatible API) teachers,
and the ``vllm`` exporter (a bake's adapter checked against vLLM's LoRA loader rules, with its serve command).

Targets are "module:Class" strings, so importing this plugin imports neither
torch, vllm nor openai; they load when a teacher is first used.
"""

from __future__ import annotations

from promptbake import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_teachers(register):  # type: ignore[no-untyped-def]
    register("vllm", "promptbake_vllm.vllm:VLLMTeacher")
    register("vllm-server", "promptbake_vllm.vllm_server:VLLMServerTeacher")


@hookimpl
def register_exporters(register):  # type: ignore[no-untyped-def]
    register("vllm", "promptbake_vllm.export:VLLMExporter")
