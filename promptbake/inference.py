"""Answer a question with the base, prompted and baked models (``promptbake generate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import models
from .errors import ConfigError
from .render import Renderer
from .types import Query

METADATA_FILE = "promptbake.json"


def read_metadata(adapter: str | Path) -> dict[str, Any]:
    """The promptbake metadata saved next to an adapter."""
    path = Path(adapter) / METADATA_FILE
    if not path.is_file():
        raise ConfigError(f"{adapter} is not a promptbake adapter directory (no {METADATA_FILE}).")
    return json.loads(path.read_text(encoding="utf-8"))


def compare(adapter: str | Path, question: str, prompt: str | None = None, *,
            max_new_tokens: int = 128, model: str | None = None, device: str = "auto",
            strength: float = 1.0) -> dict[str, str]:
    """Greedy answers from base, prompted base (if the prompt is known) and baked model.

    ``strength`` scales a LoRA adapter at load time (the paper's half-baking): 0 is the
    base model, 1 the bake as trained, values between give a partial bake.
    """
    import torch
    from peft import PeftModel

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
    renderer = Renderer(handle.tokenizer, prompt or "", max_length=10**9)
    query = Query(id="q", messages=({"role": "user", "content": question},))

    def answer(module: Any, prompted: bool) -> str:
        ids = torch.tensor([renderer.prefix(query, prompted)], device=handle.device)
        with torch.no_grad():
            out = module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=max_new_tokens, eos_token_id=renderer.stop_ids,
                                  pad_token_id=handle.tokenizer.pad_token_id)
        return handle.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    answers: dict[str, str] = {}
    with baked.disable_adapter():
        answers["base"] = answer(baked, False)
        if prompt:
            answers["prompted"] = answer(baked, True)
    with scaled:
        answers["baked"] = answer(baked, False)
    handle.model = models.without_adapter(baked)
    return answers
