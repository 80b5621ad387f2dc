"""The ``hf`` teacher: a local transformers model, prompted, that samples and scores.

When the student bakes the same base model, both share one copy of the
weights and the teacher runs with the student's adapter disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..core.batching import batches
from ..core.config import BakeConfig
from ..core.decoding import EXTRAS
from ..core.interfaces import SamplingConfig, Side, Teacher, TeacherCapabilities
from ..core.types import Prefix, Sample, Targets, Trajectory
from . import models
from .prefix_cache import PrefixCache
from .sampling import sample_rows
from .scoring import score_targets, split_head


class HFTeacher(Teacher):
    """A transformers causal LM as teacher: batched sampling and teacher-forced scoring."""

    name = "hf"
    capabilities = TeacherCapabilities(
        can_generate=True, can_score=True, max_top_k=None, full_logits=True, token_ids=True, default_top_k=256,
        hidden_states=True, sampling_extras=frozenset(EXTRAS),
    )

    def __init__(self, model: str | None = None, generate_batch_size: int | None = None,
                 score_batch_size: int | None = None, prefix_cache: bool = True):
        self.model_spec = model
        self.prefix_cache = prefix_cache
        self.prefixes: dict[str, PrefixCache] | None = None
        self.generate_batch_size = generate_batch_size
        self.score_batch_size = score_batch_size
        self.handle: models.ModelHandle | None = None
        self.show_progress = True
        self.generate_bf16 = False

    def setup(self, config: BakeConfig) -> None:
        spec = self.model_spec or config.teacher_model or config.model
        self.handle = models.load(spec, config.dtype, config.device, config.progress)
        # The system prompt's KV is computed once per side and reused by every batch
        # (new caches per setup: a cache belongs to one model's weights).
        self.prefixes = {"prompted": PrefixCache(), "unprompted": PrefixCache()} if self.prefix_cache else None
        self.generate_batch_size = self.generate_batch_size or config.generate_batch_size
        self.generate_bf16 = config.generate_bf16
        self.score_batch_size = self.score_batch_size or config.score_batch_size
        self.show_progress = config.progress

    @property
    def tokenizer(self) -> Any:
        return self._handle.tokenizer

    @property
    def _handle(self) -> models.ModelHandle:
        if self.handle is None:
            raise RuntimeError("HFTeacher.setup() was not called")
        return self.handle

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        h = self._handle
        if not sampling.stop_ids:
            sampling = replace(sampling, stop_ids=[h.tokenizer.eos_token_id])
        prefix = self.prefixes["prompted"] if self.prefixes else None
        with h.adapter_disabled(), models.eval_mode(h.trainable):
            return sample_rows(h.model, [list(p.ids) for p in prefixes], sampling, h.tokenizer.pad_token_id,
                               h.device, self.generate_batch_size or BakeConfig.generate_batch_size, prefix,
                               self.show_progress, vocab=h.vocab, bf16=self.generate_bf16)

    @torch.no_grad()
    def score(self, trajectories: Sequence[Trajectory], *, top_k: int | None, full: bool,
              side: Side = "prompted", hidden: bool = False) -> list[Targets]:
        h = self._handle
        out: list[Targets] = []
        with h.adapter_disabled(), models.eval_mode(h.trainable):
            for part in batches(trajectories, self.score_batch_size or 8):
                prefix = self.prefixes[side] if self.prefixes else None
                out.extend(score_targets(h.model, part, side, h.tokenizer.pad_token_id, h.device,
                                         top_k=top_k, full=full, prefix=prefix, hidden=hidden, vocab=h.vocab))
        return out

    def score_hidden(self, trajectories: Sequence[Trajectory]) -> list[Targets]:
        return self.score(trajectories, top_k=None, full=False, hidden=True)

    def output_layer(self) -> Any | None:
        split = split_head(self._handle.model, self._handle.vocab)
        return split[1] if split is not None else None

    @property
    def vocab_size(self) -> int:
        return self._handle.vocab

