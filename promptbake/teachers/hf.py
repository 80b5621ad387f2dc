"""The ``hf`` teacher: a local transformers model, prompted, that samples and scores.

When the student bakes the same base model, both share one copy of the
weights and the teacher runs with the student's adapter disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import models
from ..batching import batches
from ..config import BakeConfig
from ..interfaces import SamplingConfig, Side, Teacher, TeacherCapabilities
from ..progress import progress
from ..scoring import PrefixCache, logits_to_targets, response_logits
from ..types import Prefix, Sample, Targets, Trajectory


class HFTeacher(Teacher):
    """A transformers causal LM as teacher: batched sampling and teacher-forced scoring."""

    name = "hf"
    capabilities = TeacherCapabilities(
        can_generate=True, can_score=True, max_top_k=None, full_logits=True, token_ids=True,
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

    def setup(self, config: BakeConfig) -> None:
        spec = self.model_spec or config.teacher_model or config.model
        self.handle = models.load(spec, config.dtype, config.device)
        # The system prompt's KV is computed once per side and reused by every batch
        # (new caches per setup: a cache belongs to one model's weights).
        self.prefixes = {"prompted": PrefixCache(), "unprompted": PrefixCache()} if self.prefix_cache else None
        self.generate_batch_size = self.generate_batch_size or config.generate_batch_size
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

    @torch.no_grad()
    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        h = self._handle
        pad = h.tokenizer.pad_token_id
        stop = list(sampling.stop_ids) or [h.tokenizer.eos_token_id]
        out: list[list[Sample]] = []
        chunk = max(1, (self.generate_batch_size or 16) // sampling.n)
        prefix = self.prefixes["prompted"] if self.prefixes else None
        with h.adapter_disabled(), models.eval_mode(h.trainable):
            for i, part in enumerate(progress(batches(prefixes, chunk), "generate", self.show_progress, leave=False)):
                rows = [list(p.ids) for p in part for _ in range(sampling.n)]
                # The system prompt's KV comes from the cache shared with scoring; the
                # row-specific rest is left-padded after it so all rows end together.
                shared = prefix.usable(h.model, rows, min(len(r) for r in rows) - 1, h.device) if prefix else 0
                width = max(len(r) for r in rows) - shared
                ids = torch.full((len(rows), shared + width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
                for row, p in enumerate(rows):
                    start = shared + width - (len(p) - shared)
                    ids[row, :shared] = torch.tensor(p[:shared])
                    ids[row, start:] = torch.tensor(p[shared:])
                    mask[row, :shared] = 1
                    mask[row, start:] = 1
                extra = {"past_key_values": prefix.expand(len(rows))} if shared else {}
                torch.manual_seed(sampling.seed * 100003 + i)
                gen = h.model.generate(
                    input_ids=ids.to(h.device), attention_mask=mask.to(h.device),
                    do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                    top_k=0, max_new_tokens=sampling.max_new_tokens,
                    min_new_tokens=sampling.min_new_tokens, eos_token_id=stop, pad_token_id=pad, **extra,
                )
                new = gen[:, shared + width:].tolist()
                for row in range(len(part)):
                    samples = []
                    for seq in new[row * sampling.n: (row + 1) * sampling.n]:
                        tokens, finished = _cut(seq, stop)
                        samples.append(Sample(token_ids=tokens, finished=finished))
                    out.append(samples)
        return out

    @torch.no_grad()
    def score(self, trajectories: Sequence[Trajectory], *, top_k: int | None, full: bool,
              side: Side = "prompted") -> list[Targets]:
        h = self._handle
        out: list[Targets] = []
        with h.adapter_disabled(), models.eval_mode(h.trainable):
            for part in batches(trajectories, self.score_batch_size or 8):
                prefix = self.prefixes[side] if self.prefixes else None
                logits, lengths = response_logits(h.model, part, side, h.tokenizer.pad_token_id, h.device, prefix)
                out.extend(logits_to_targets(logits, lengths, part, top_k=top_k, full=full))
        return out


def _cut(seq: list[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token; whether one was found."""
    for i, tok in enumerate(seq):
        if tok in stop:
            return seq[: i + 1], True
    return seq, False
