"""The ``prefix`` student: the prompt baked into a learned soft prefix (PEFT prefix tuning).

Instead of LoRA weights, it trains key/value vectors for ``num_virtual_tokens``
positions in every layer, which every sequence attends to: a trained stand-in
for the system prompt's KV cache, as in prefix tuning and Cartridges. Same
losses, data and normalisation as the ``peft`` student; the adapter it saves
loads with ``peft.PeftModel.from_pretrained``.

By default the prefix starts as the base model's own KV cache of the prompt's
tokens (``init="prompt"``), so training starts from the prompt read as plain
text rather than from random vectors, which disrupt the model badly (on the
embedded model a random 16-token prefix raised held-out KL from 0.56 to 4.7).

Sampling does not go through PEFT's ``generate``: with transformers 5.24 and
peft 0.21 it passes the prefix as ``past_key_values`` beside the ``cache`` that
``generate`` made, and transformers keeps the empty cache, so the prefix is
silently ignored and the "baked" answers are the base model's. The student
decodes after the prefix's KV itself, as the teacher decodes after the prompt's
(:class:`SoftPrefix`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.interfaces import SamplingConfig
from ..core.types import Prefix, PromptMixture, Sample
from . import hf_internals, models
from .peft import PeftStudent
from .prefix_cache import PrefixCache
from .sampling import sample_rows

INITS = ("prompt", "random")


class PrefixStudent(PeftStudent):
    """PEFT prefix tuning on a transformers model."""

    name = "prefix"
    # A soft prefix has no scale to turn, so no half-baking sweep over strengths; and it enters in
    # the PEFT wrapper's forward, so the output layer cannot be split off to read hidden-state targets.
    capabilities = dataclasses.replace(PeftStudent.capabilities, adapters=False, hidden_targets=False,
                                       merges=False)

    def __init__(self, model: str | None = None, num_virtual_tokens: int | None = None, init: str = "prompt",
                 prefix_projection: bool = False, encoder_hidden_size: int | None = None):
        """``num_virtual_tokens``: the prefix length (default: the prompt's token count with
        ``init="prompt"``, else 16). ``prefix_projection`` trains the prefix through a two-layer MLP
        (the prefix-tuning paper's reparameterisation, ``encoder_hidden_size`` wide; random init only)."""
        super().__init__(model, head_chunk=None)  # the prefix enters in the PEFT wrapper's forward
        if num_virtual_tokens is not None and (not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1):
            raise ConfigError(f"student option num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}.")
        if init not in INITS:
            raise ConfigError(f"student option init must be one of {', '.join(INITS)}, got {init!r}.")
        if init == "prompt" and prefix_projection:
            raise ConfigError("student option prefix_projection trains the prefix through an MLP, which cannot start "
                              "from the prompt's KV cache; set init='random' with it.")
        self.num_virtual_tokens = num_virtual_tokens
        self.init = init
        self.prefix_projection = prefix_projection
        self.encoder_hidden_size = encoder_hidden_size
        self.init_ids: list[int] = []

    def check(self, config: BakeConfig) -> None:
        if self.init == "prompt" and isinstance(config.prompt, PromptMixture):
            raise ConfigError("A soft prefix that starts from the prompt's KV cache needs a single prompt; use "
                              "student option init='random' with a mixture.")

    def adapter_config(self, config: BakeConfig) -> Any:
        from peft import PrefixTuningConfig

        n = self.num_virtual_tokens or 16
        if self.init == "prompt":
            ids = self._handle_tokenizer()(config.prompt, add_special_tokens=False)["input_ids"]
            if self.num_virtual_tokens is not None and self.num_virtual_tokens > len(ids):
                raise ConfigError(f"num_virtual_tokens={self.num_virtual_tokens} is more than the prompt's "
                                  f"{len(ids)} tokens, which init='prompt' starts from; use fewer or init='random'.")
            self.init_ids = ids[: self.num_virtual_tokens] if self.num_virtual_tokens else ids
            n = len(self.init_ids)
        extra = {"encoder_hidden_size": self.encoder_hidden_size} if self.encoder_hidden_size else {}
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n,
                                  prefix_projection=self.prefix_projection, **extra)

    def setup(self, config: BakeConfig, total_steps: int) -> None:
        super().setup(config, total_steps)
        if self.init == "prompt":
            self._start_from_prompt_kv()

    @torch.no_grad()
    def _start_from_prompt_kv(self) -> None:
        """Set the prefix to the base model's KV cache of the prompt's tokens (at positions 0..n-1)."""
        h = self._handle
        ids = torch.tensor([self.init_ids], device=h.device)
        cache = hf_internals.output_cache(h.model(input_ids=ids, use_cache=True))
        # PEFT reads row v as [layer][key|value][kv head][head dim], flattened.
        rows = torch.cat([torch.cat([keys[0], values[0]], 0) for keys, values in hf_internals.cache_layers(cache)], 0)
        flat = rows.permute(1, 0, 2).reshape(len(self.init_ids), -1)
        peft_model = h.peft_model
        embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
        if embedding.shape != flat.shape:
            raise ConfigError(f"This model's KV cache ({tuple(flat.shape)}) does not fit PEFT's prefix layout "
                              f"({tuple(embedding.shape)}); use student option init='random'.")
        embedding.copy_(flat.to(embedding.dtype))

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig, *,
                 strength: float = 1.0) -> list[list[Sample]]:
        if strength == 0:  # the base model: the PEFT wrapper with its prefix switched off
            return super().generate(prefixes, sampling, strength=strength)
        models.adapter_scale(self._handle.peft_model, strength)  # refuses strengths a prefix has not
        h = self._handle
        config = self.config or BakeConfig  # the defaults before setup
        return sample_after_prefix(h.peft_model, [list(p.ids) for p in prefixes], sampling, h.tokenizer.pad_token_id,
                                   h.device, config.generate_batch_size, h.vocab, config.generate_bf16)

    def _handle_tokenizer(self) -> Any:
        assert self.handle is not None
        return self.handle.tokenizer


class SoftPrefix(PrefixCache):
    """A trained soft prefix as the KV cache of ``length`` leading positions that every row shares,
    so sampling decodes after it exactly as the PEFT model's forward attends to it."""

    def __init__(self, peft_model: Any):
        super().__init__()
        with torch.no_grad():
            self.cache = peft_model.get_prompt(batch_size=1)
        self.length = int(peft_model.active_peft_config.num_virtual_tokens)

    def usable(self, model: Any, seqs: Sequence[list[int]], limit: int, device: Any, min_len: int = 8) -> int:
        return self.length  # rows hold placeholders for the virtual positions


def sample_after_prefix(peft_model: Any, prefixes: Sequence[list[int]], sampling: SamplingConfig, pad_id: int,
                        device: Any, batch_size: int, vocab: int | None = None,
                        bf16: bool = False) -> list[list[Sample]]:
    """``sampling.n`` samples per token prefix from a prefix-tuned PEFT model: its base model
    decoding after the soft prefix's KV (see the module docstring for why not PEFT's generate);
    ``bf16`` as in :func:`sample_rows`."""
    soft = SoftPrefix(peft_model)
    # Each row starts with one placeholder per virtual token: the prefix's KV takes their place.
    rows = [[pad_id] * soft.length + list(p) for p in prefixes]
    with models.eval_mode(peft_model):
        return sample_rows(peft_model.get_base_model(), rows, sampling, pad_id, device, batch_size, prefix=soft,
                           vocab=vocab, bf16=bf16)
