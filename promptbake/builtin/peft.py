"""The ``peft`` student: a LoRA adapter trained with AdamW on the unprompted renderings."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..core import state
from ..core.batching import batches
from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.interfaces import (
    BatchTargets,
    Loss,
    SamplingConfig,
    Student,
    StudentCapabilities,
)
from ..core.metadata import METADATA_FILE
from ..core.types import Prefix, Sample, Targets, Trajectory
from . import models
from .low_precision import linear_copies, low_linear, patched_forwards
from .prefix_cache import PrefixCache, supports_shared_prefix, unwrapped
from .sampling import sample_rows
from .scoring import response_logits, same_output_layer, score_targets, split_head


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class PeftStudent(Student):
    """LoRA on a transformers model (all linear layers by default)."""

    name = "peft"
    capabilities = StudentCapabilities(losses=None, can_score=True, checkpoints=True, can_generate=True,
                                       adapters=True, hidden_targets=True)

    def __init__(self, model: str | None = None, head_chunk: int | None = 256, lora_rank: int = 16,
                 lora_alpha: float | None = None, lora_dropout: float = 0.0,
                 target_modules: str | list[str] = "all-linear", bf16: bool = False, bf16_grads: bool = False,
                 bf16_forward: bool = False):
        """``lora_*`` and ``target_modules``: the LoRA adapter (``lora_alpha`` defaults to ``lora_rank``);
        also accepted as top-level settings, for 0.1's TOML files and commands.

        ``bf16``: training steps run the decoder's forward (and so its backward) under bfloat16
        autocast; weights, optimizer and loss stay as loaded (float32 on CPU), and so does the
        output layer where logits are made from hidden states in chunks (``full_kl``, and any loss
        above ``head_chunk`` response rows a micro-batch). It pays where bfloat16 matrix products
        are fast: CPUs with AVX-512 BF16 or AMX, GPUs with float32 weights; on the embedded model
        it trained 1.14-1.43x faster and closed 89.76% of the gap against 89.90% (docs/performance.md).

        ``bf16_grads``: every forward stays as loaded (float32 on CPU), and so do the loss and
        the adapter's own gradients; only the gradients that flow back through the frozen linear
        layers (the base model's weights under LoRA, and the output layer) are computed from
        bfloat16 copies of those weights, made once. It costs half the frozen weights' size in
        memory and pays on the same hardware as ``bf16`` (docs/performance.md has the figures).

        ``bf16_forward``: as ``bf16_grads``, and the decoder's frozen linear layers also compute
        their forward products from those copies (input in bfloat16, output back in float32);
        the output layer, the adapter's own layers, norms, attention and the loss stay float32."""
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
            raise ConfigError(f"lora_rank must be a positive integer, got {lora_rank!r}.")
        if lora_alpha is not None and not (isinstance(lora_alpha, int | float) and lora_alpha > 0):
            raise ConfigError(f"lora_alpha must be > 0, got {lora_alpha!r}.")
        if not (isinstance(lora_dropout, int | float) and 0 <= lora_dropout < 1):
            raise ConfigError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}.")
        for name, value in (("bf16", bf16), ("bf16_grads", bf16_grads), ("bf16_forward", bf16_forward)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}.")
        self.bf16 = bf16
        self.bf16_grads = bf16_grads or bf16_forward
        self.bf16_forward = bf16_forward
        self._low: dict[torch.nn.Linear, torch.Tensor] = {}  # bfloat16 copies of frozen weights (bf16_grads)
        self.lora = {"r": lora_rank, "lora_alpha": lora_alpha if lora_alpha is not None else lora_rank,
                     "lora_dropout": lora_dropout, "target_modules": target_modules}
        self.model_spec = model
        # Above this many response rows per micro-batch, logits are computed in chunks of
        # this size from hidden states, each chunk's gradient taken at once (Loss.from_hidden),
        # instead of all at once (full_kl uses its own chunk_size).
        self.head_chunk = head_chunk
        self.handle: models.ModelHandle | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.config: BakeConfig | None = None

    def adapter_config(self, config: BakeConfig) -> Any:
        """The PEFT config of the adapter to train (LoRA here; the prefix student overrides it)."""
        from peft import LoraConfig

        return LoraConfig(**self.lora, task_type="CAUSAL_LM")

    def setup(self, config: BakeConfig, total_steps: int) -> None:
        from peft import get_peft_model
        from transformers import get_linear_schedule_with_warmup

        self.config = config
        seed_everything(config.seed)
        handle = models.load(self.model_spec or config.model, config.dtype, config.device, config.progress)
        if handle.peft_model is not None:
            raise ConfigError("This model already carries a promptbake adapter in this process; "
                              "close the previous Baker first.")
        self.handle = handle
        with models.quiet_peft():
            handle.peft_model = get_peft_model(handle.model, self.adapter_config(config))
        params = [p for p in handle.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = math.ceil(config.warmup_ratio * total_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, max(total_steps, 1))

    @property
    def tokenizer(self) -> Any:
        return self._handle.tokenizer

    @property
    def context_length(self) -> int | None:
        return getattr(self._handle.model.config, "max_position_embeddings", None)

    @property
    def _handle(self) -> models.ModelHandle:
        if self.handle is None or self.handle.peft_model is None:
            raise RuntimeError("PeftStudent.setup() was not called")
        return self.handle

    def step(self, micro_batches: Sequence[Sequence[tuple[Trajectory, Targets]]], loss: Loss) -> dict[str, float]:
        h = self._handle
        assert self.optimizer is not None and self.config is not None
        model = h.peft_model
        model.train()
        # Normalise by the response tokens of the whole optimizer step, not per micro-batch.
        num_tokens = sum(tg.num_tokens for mb in micro_batches for _, tg in mb)
        total = 0.0
        with self.low_precision_grads():
            for mb in micro_batches:
                trajs = [t for t, _ in mb]
                targets = BatchTargets.concat([tg for _, tg in mb], device=h.device)
                rows = sum(t.response_len for t in trajs)
                # full_kl holds [rows, V] teacher targets (or makes them from the teacher's hidden
                # states through the output layer): it always goes in its own chunks.
                chunk = getattr(loss, "chunk_size", None) if loss.needs == "full" else self.head_chunk
                split = split_head(model, h.vocab) if chunk and (rows > chunk or targets.hidden is not None) else None
                if targets.hidden is not None and split is None:
                    raise RuntimeError("hidden-state targets need the output layer split off the decoder")
                if split is not None:  # large: logits chunk by chunk from hidden states
                    with self.autocast():
                        hidden, _ = response_logits(model, trajs, "unprompted", h.tokenizer.pad_token_id, h.device,
                                                    hidden=True, vocab=h.vocab)
                    value = loss.from_hidden(hidden.float(), split[1], targets, num_tokens, chunk)
                else:
                    with self.autocast():
                        logits, _ = response_logits(model, trajs, "unprompted", h.tokenizer.pad_token_id, h.device,
                                                    vocab=h.vocab)
                    value = loss(logits.float(), targets, num_tokens)
                value.backward()
                total += float(value.detach())
        params = [p for p in model.parameters() if p.requires_grad]
        if self.config.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": total, "lr": lr, "grad_norm": grad_norm, "tokens": float(num_tokens)}

    def autocast(self) -> Any:
        """The context of a training forward: bfloat16 autocast with ``bf16``, else nothing."""
        return torch.autocast(torch.device(self._handle.device).type, dtype=torch.bfloat16, enabled=self.bf16)

    @contextlib.contextmanager
    def low_precision_grads(self) -> Iterator[None]:
        """With ``bf16_grads``: inside the block, each frozen linear layer of the model computes
        its input's gradient from a bfloat16 copy of its weight (:class:`_BF16InputGrad`); its
        forward is unchanged, except with ``bf16_forward`` in the decoder's layers (not the
        output layer), whose forward products come from the copies too."""
        if not self.bf16_grads:
            yield
            return
        model = self._handle.peft_model
        if not self._low:  # the weights are frozen: copied once
            self._low = linear_copies(model, frozen_only=True)
        head = unwrapped(model).get_output_embeddings()
        with patched_forwards({layer: _linear_bf16_input_grad(low, self.bf16_forward and layer is not head)
                               for layer, low in self._low.items()}):
            yield

    def reads_hidden_targets(self, head: Any) -> bool:
        split = split_head(self._handle.peft_model, self._handle.vocab)
        return (split is not None and same_output_layer(split[1], head)
                and not any(p.requires_grad for p in head.parameters()))

    @property
    def vocab_size(self) -> int:
        return self._handle.vocab

    @property
    def generation_config(self) -> Any:
        return self._handle.model.generation_config

    @torch.no_grad()
    def score(self, trajectories: Sequence[Trajectory], *, full: bool, top_k: int | None = None,
              strength: float = 1.0) -> list[Targets]:
        h = self._handle
        out: list[Targets] = []
        with models.adapter_scale(h.peft_model, strength), models.eval_mode(h.peft_model):
            size = self.config.score_batch_size if self.config else 8
            start = self._shared_start()
            for part in batches(trajectories, size):
                out.extend(score_targets(h.peft_model, part, "unprompted", h.tokenizer.pad_token_id, h.device,
                                         top_k=top_k, full=full, prefix=start, vocab=h.vocab))
        return out

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig, *,
                 strength: float = 1.0) -> list[list[Sample]]:
        h = self._handle
        if not sampling.stop_ids:
            sampling = dataclasses.replace(sampling, stop_ids=[h.tokenizer.eos_token_id])
        config = self.config or BakeConfig  # the defaults before setup
        with models.adapter_scale(h.peft_model, strength), models.eval_mode(h.peft_model):
            return sample_rows(h.peft_model, [list(p.ids) for p in prefixes], sampling, h.tokenizer.pad_token_id,
                               h.device, config.generate_batch_size, prefix=self._shared_start(), vocab=h.vocab,
                               bf16=config.generate_bf16)

    def _shared_start(self) -> PrefixCache | None:
        """An empty cache for what the unprompted renderings of one call all start with (a chat
        template's default system message, as SmolLM2's): filled on first use, inside the call,
        so with the adapter as that call runs it; the rows attend to it in place instead of
        each running it again. None where the model has no shared-prefix attention."""
        return PrefixCache() if supports_shared_prefix(self._handle.peft_model) else None

    def load_adapter(self, path: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        file = os.path.join(path, "adapter_model.safetensors")
        if not os.path.isfile(file):
            raise ConfigError(f"{path} holds no adapter_model.safetensors; is it a promptbake adapter?")
        model = self._handle.peft_model
        try:
            result = set_peft_model_state_dict(model, load_file(file, device=str(self._handle.device)))
        except RuntimeError as exc:  # shapes differ: another rank or prefix length
            raise ConfigError(f"The adapter in {path} does not fit this student's settings: "
                              f"{str(exc).splitlines()[0]}") from None
        missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k or "prompt" in k]
        if missing:
            raise ConfigError(f"The adapter in {path} does not fit this student's settings "
                              f"(e.g. {missing[0]}); evaluate with the settings it was baked with.")

    def save(self, path: str, metadata: dict[str, Any]) -> None:
        h = self._handle
        peft_config = h.peft_model.active_peft_config
        named = peft_config.base_model_name_or_path
        peft_config.base_model_name_or_path = models.model_id(h.spec)  # not a path into the virtualenv
        try:
            # The base vocabulary is never trained, so no embedding copy belongs in the adapter.
            h.peft_model.save_pretrained(path, save_embedding_layers=False)
        finally:
            peft_config.base_model_name_or_path = named
        with open(os.path.join(path, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump({**metadata, **models.base_record(h.spec)}, f, indent=2)

    def save_state(self, path: str) -> None:
        assert self.optimizer is not None
        state.save_torch_state(path, self._handle.peft_model, self.optimizer, self.scheduler)

    def load_state(self, path: str) -> None:
        assert self.optimizer is not None
        state.load_torch_state(path, self._handle.peft_model, self.optimizer, self.scheduler)

    def close(self) -> None:
        self._low.clear()
        # Give the shared base model back without the adapter layers.
        if self.handle is not None and self.handle.peft_model is not None:
            self.handle.model = models.without_adapter(self.handle.peft_model)
            self.handle.peft_model = None


class _BF16InputGrad(torch.autograd.Function):
    """``linear(x, weight, bias)`` as usual (with ``low_forward``: from ``low``, input in
    bfloat16 and output back in ``x``'s dtype), with the gradient towards ``x`` computed from
    ``low``, a bfloat16 copy of the frozen ``weight`` (no gradient to the weight or bias)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                low: torch.Tensor, low_forward: bool = False) -> torch.Tensor:
        ctx.save_for_backward(low)
        return low_linear(x, low, bias) if low_forward else torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (low,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        return torch.matmul(grad.to(low.dtype), low).to(grad.dtype), None, None, None, None


def _linear_bf16_input_grad(low: torch.Tensor, low_forward: bool = False) -> Any:
    def forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _BF16InputGrad.apply(x, layer.weight, layer.bias, low, low_forward)
        if low_forward:
            return low_linear(x, low, layer.bias)
        return torch.nn.functional.linear(x, layer.weight, layer.bias)

    return forward
