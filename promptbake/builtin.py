"""The built-in plugin: the hf teacher, the peft and prefix students, the three losses and the probes.

Targets are "module:Class" strings, so importing this module imports no torch.
"""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_teachers(register):  # type: ignore[no-untyped-def]
    register("hf", "promptbake.teachers.hf:HFTeacher", aliases=("transformers",))


@hookimpl
def register_students(register):  # type: ignore[no-untyped-def]
    register("peft", "promptbake.students.peft:PeftStudent", aliases=("lora",))
    register("prefix", "promptbake.students.prefix:PrefixStudent", aliases=("prefix-tuning",))


@hookimpl
def register_losses(register):  # type: ignore[no-untyped-def]
    register("ce", "promptbake.losses:CELoss")
    register("topk_kl", "promptbake.losses:TopKKLLoss")
    register("full_kl", "promptbake.losses:FullKLLoss")


@hookimpl
def register_probes(register):  # type: ignore[no-untyped-def]
    for name, cls in (("language", "LanguageProbe"), ("regex", "RegexProbe"), ("keyword", "KeywordProbe"),
                      ("starts_with", "StartsWithProbe"), ("max_length", "MaxLengthProbe"),
                      ("multiple_choice", "MultipleChoiceProbe")):
        register(name, f"promptbake.probes:{cls}")
