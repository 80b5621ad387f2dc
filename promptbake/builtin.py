"""The built-in plugin: registers the hf teacher, the peft and prefix students and the three losses.

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
