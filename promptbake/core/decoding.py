"""How every side samples: one SamplingConfig recipe for the bake, and what a model's
generation_config may add to it (torch-free).

A model's ``generation_config.json`` often ships sampling extras (Qwen2.5-Instruct:
a repetition penalty of 1.05, top-k 20). ``model.generate`` would apply them while
promptbake's own decoding would not, so the prompted teacher and the students would
sample different distributions. So no side applies them by default: every side samples
the model's plain distribution at the bake's ``temperature`` and ``top_p``. With the
setting ``generation_config = true`` the extras below, read from the student's model,
are applied on every side alike (the teacher's samples, base, baked, re-prompted and
on-policy answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .interfaces import SamplingConfig

# generation_config fields honoured with generation_config=true, and the value at which each does nothing.
EXTRAS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "top_k": 0, "min_p": None, "typical_p": 1.0}


def eos_ids(generation_config: Any) -> list[int]:
    """The end ids a model's generation_config names (an int or a list: Llama-3.1 lists
    <|eom_id|> and <|eot_id|>, Qwen2.5 <|im_end|> and <|endoftext|>)."""
    value = getattr(generation_config, "eos_token_id", None)
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


def extras(generation_config: Any) -> dict[str, Any]:
    """The sampling extras of a generation_config that change the distribution (see :data:`EXTRAS`)."""
    out: dict[str, Any] = {}
    for name, neutral in EXTRAS.items():
        value = getattr(generation_config, name, None)
        if value is not None and value != neutral:
            out[name] = value
    return out


def bake_extras(config: Any, student: Any) -> dict[str, Any]:
    """The extras every side samples with: the student model's, with ``config.generation_config``."""
    return extras(student.generation_config) if config.generation_config else {}


def bake_sampling(config: Any, stop_ids: Sequence[int], extra: dict[str, Any] | None = None,
                  **overrides: Any) -> SamplingConfig:
    """The bake's sampling (``config``: a BakeConfig) with ``overrides`` (n, seed, temperature...)."""
    sampling = SamplingConfig(n=1, temperature=config.temperature, top_p=config.top_p,
                              max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens,
                              seed=config.seed, stop_ids=list(stop_ids), extras=dict(extra or {}))
    return replace(sampling, **overrides)
