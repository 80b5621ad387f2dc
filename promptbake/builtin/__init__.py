"""The built-in plugin: the hf teacher, the peft and prefix students, the three losses and the probes.

Targets are "module:Class" strings, so importing this module imports no torch.
"""

from __future__ import annotations

from ..core.hookspecs import hookimpl


@hookimpl
def register_teachers(register):  # type: ignore[no-untyped-def]
    register("hf", "promptbake.builtin.hf:HFTeacher", aliases=("transformers",))


@hookimpl
def register_students(register):  # type: ignore[no-untyped-def]
    register("peft", "promptbake.builtin.peft:PeftStudent", aliases=("lora",))
    register("prefix", "promptbake.builtin.prefix:PrefixStudent", aliases=("prefix-tuning",))


@hookimpl
def register_losses(register):  # type: ignore[no-untyped-def]
    register("ce", "promptbake.builtin.losses:CELoss")
    register("topk_kl", "promptbake.builtin.losses:TopKKLLoss")
    register("full_kl", "promptbake.builtin.losses:FullKLLoss")


@hookimpl
def register_probes(register):  # type: ignore[no-untyped-def]
    for name, cls in (("language", "LanguageProbe"), ("regex", "RegexProbe"), ("keyword", "KeywordProbe"),
                      ("starts_with", "StartsWithProbe"), ("max_length", "MaxLengthProbe"),
                      ("multiple_choice", "MultipleChoiceProbe")):
        register(name, f"promptbake.builtin.probes:{cls}")


@hookimpl
def register_exporters(register):  # type: ignore[no-untyped-def]
    register("merged", "promptbake.builtin.merged:MergedExporter")
    register("gguf", "promptbake.builtin.gguf:GGUFExporter")
    register("gguf-lora", "promptbake.builtin.gguf:GGUFLoraExporter", aliases=("ollama", "llama.cpp"))
