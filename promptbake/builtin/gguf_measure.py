"""Whether storing a merged model in a GGUF type erases the bake, measured before the file is written.

A bake moves the model a little; rounding every weight to a coarser grid moves it too, and where the
second is as large as the first the stored model answers like the base model (the embedded French
bake merged and re-quantised to Q4_1 does). On the bake's held-out trajectories, teacher-forced on
the unprompted side (how the baked model is used), two numbers are compared: KL(merged float ||
merged as stored), what storing costs, and KL(merged float || base), what the bake did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.batching import batches
from ..core.types import Trajectory
from . import models
from .scoring import score_targets

BATCH = 4  # trajectories per forward pass
ERASE_SHARE = 0.5  # refuse a type that moves the model by more than this share of what the bake moved it


@dataclass
class Erasure:
    trajectories: int
    tokens: int
    kl_quant: float  # KL(merged float || merged as stored), nats per token
    kl_bake: float  # KL(merged float || base)

    @property
    def share(self) -> float:
        return self.kl_quant / self.kl_bake if self.kl_bake > 0 else float("inf")

    @property
    def erases(self) -> bool:
        return self.kl_quant > ERASE_SHARE * self.kl_bake

    def measured(self, quant: str) -> dict[str, Any]:
        return {"quant": quant, "heldout_trajectories": self.trajectories, "heldout_tokens": self.tokens,
                "kl_merged_vs_quantized": self.kl_quant, "kl_merged_vs_base": self.kl_bake,
                "quantization_share_of_bake": self.share}

    def sentence(self, quant: str) -> str:
        return (f"Stored as {quant}, the merged model moves by KL {self.kl_quant:.3g} nats/token from the merged "
                f"float model on {self.trajectories} held-out trajectories ({self.tokens} tokens, teacher-forced, "
                f"without the prompt), against KL {self.kl_bake:.3g} that the bake itself moved the base "
                f"({self.share:.1%} of it)")


def _logprobs(model: Any, trajectories: Sequence[Trajectory], pad_id: int, device: Any, vocab: int) -> list[Any]:
    import torch

    with torch.no_grad():
        targets = score_targets(model, trajectories, "unprompted", pad_id, device, top_k=None, full=True, vocab=vocab)
    return [t.full_logprobs for t in targets]


def _kl(reference: list[Any], other: list[Any]) -> tuple[float, int]:
    """Summed KL(reference || other) over all rows, and the row count. Both sides are renormalised
    in float64 first: a float32 log-softmax is normalised to ~1e-7, which would be noise of that size
    in the KL of two nearly equal models (negative KLs); the logits' own rounding is far smaller."""
    import torch

    total, rows = 0.0, 0
    for p, q in zip(reference, other):
        p, q = torch.log_softmax(p.double(), dim=-1), torch.log_softmax(q.double(), dim=-1)
        total += float((p.exp() * (p - q)).sum())
        rows += p.shape[0]
    return total, rows


def measure(peft_model: Any, tokenizer: Any, heldout: Sequence[Trajectory], store: Callable[[Any], None],
            device: Any = "cpu") -> tuple[Any, Erasure]:
    """Merge ``peft_model`` (a PEFT LoRA model) and measure what ``store(merged)`` costs.

    ``store`` replaces the merged model's weights by the values the file will hold. Returns the
    merged model (its weights as stored) and the measurement. The held-out log-probs are kept one
    set at a time: the base's, replaced batch by batch by the merged float model's.
    """
    groups = batches(list(heldout), BATCH)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    vocab = models.vocab_size(peft_model.get_base_model(), tokenizer)
    peft_model.eval()
    with peft_model.disable_adapter():
        kept = [_logprobs(peft_model, g, pad_id, device, vocab) for g in groups]
    with models.quiet_peft():
        merged = peft_model.merge_and_unload()
    merged.eval()
    bake_total, tokens = 0.0, 0
    for i, g in enumerate(groups):
        float_lp = _logprobs(merged, g, pad_id, device, vocab)
        total, rows = _kl(float_lp, kept[i])
        bake_total, tokens, kept[i] = bake_total + total, tokens + rows, float_lp
    store(merged)
    quant_total = 0.0
    for i, g in enumerate(groups):
        quant_total += _kl(kept[i], _logprobs(merged, g, pad_id, device, vocab))[0]
    n = max(tokens, 1)
    return merged, Erasure(trajectories=len(heldout), tokens=tokens, kl_quant=quant_total / n, kl_bake=bake_total / n)
