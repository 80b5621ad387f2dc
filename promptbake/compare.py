"""Answer a question with the base, prompted and baked models (``promptbake generate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .builtin import models
from .core import decoding
from .core.errors import ConfigError
from .core.interfaces import SamplingConfig
from .core.metadata import read_metadata
from .core.types import Query
from .stages.render import Renderer


def compare(adapter: str | Path, question: str, prompt: str | None = None, *,
            max_new_tokens: int = 128, model: str | None = None, device: str = "auto",
            strength: float = 1.0) -> dict[str, str]:
    """Greedy answers from base, prompted base (if the prompt is known) and baked model.

    ``strength`` scales a LoRA adapter at load time (the paper's half-baking): 0 is the
    base model, 1 the bake as trained, values between give a partial bake.
    """
    from peft import PeftModel

    from .builtin.prefix import sample_after_prefix
    from .builtin.sampling import sample_rows

    if not 0 <= strength <= 1:
        raise ConfigError(f"strength must be between 0 and 1, got {strength!r}.")

    meta = read_metadata(adapter)
    prompt = prompt if prompt is not None else meta.get("prompt")
    handle = models.load(model or meta["base_model"], "auto", device)
    with models.quiet_peft():
        baked = PeftModel.from_pretrained(handle.model, str(adapter))
    try:
        scaled = models.adapter_scale(baked, strength)
    except ConfigError:
        handle.model = models.without_adapter(baked)
        raise
    renderer = Renderer(handle.tokenizer, prompt or "", max_length=10**9,
                        eos_ids=decoding.eos_ids(handle.model.generation_config),
                        chat_template_kwargs=meta.get("chat_template_kwargs"))
    query = Query(id="q", messages=({"role": "user", "content": question},))
    # Greedy, through the same decoding as the bake's evaluation (no generation_config extras).
    sampling = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, min_new_tokens=1,
                              stop_ids=list(renderer.stop_ids))

    def answer(module: Any, prompted: bool, soft_prefix: bool = False) -> str:
        rows, pad = [renderer.prefix(query, prompted)], handle.tokenizer.pad_token_id
        if soft_prefix:  # decode after the trained prefix (students/prefix.py says why not PEFT's generate)
            sample = sample_after_prefix(module, rows, sampling, pad, handle.device, 1, handle.vocab)[0][0]
        else:
            sample = sample_rows(module, rows, sampling, pad, handle.device, vocab=handle.vocab)[0][0]
        ids = [t for t in sample.token_ids if t not in renderer.stop_ids]
        return handle.tokenizer.decode(ids, skip_special_tokens=True).strip()

    answers: dict[str, str] = {}
    with baked.disable_adapter():
        answers["base"] = answer(baked, False)
        if prompt:
            answers["prompted"] = answer(baked, True)
    with scaled:
        answers["baked"] = answer(baked, False, soft_prefix=baked.active_peft_config.is_prompt_learning)
    handle.model = models.without_adapter(baked)
    return answers
