"""Held-out evaluation: how close the baked model is to the prompted one.

On trajectories sampled from the prompted teacher for queries never used in
training, per response token: KL(prompted || baked), KL(prompted || base), the
fraction of that gap the bake closed, and top-1 agreement with the prompted model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .batching import batches
from .interfaces import BatchTargets, Student, Teacher
from .progress import progress
from .types import Trajectory


def heldout_metrics(teacher: Teacher, student: Student, trajectories: Sequence[Trajectory],
                    top_k: int, batch_size: int = 8, show_progress: bool = True) -> dict[str, Any]:
    """Mean per-token KL and agreement over ``trajectories`` (teacher-sampled, held out)."""
    from .losses import FullKLLoss, TopKKLLoss

    full = teacher.capabilities.full_logits
    kl = FullKLLoss() if full else TopKKLLoss(tail=True)
    sums = {"baked": 0.0, "base": 0.0}
    agree = {"baked": 0, "base": 0}
    tokens = 0
    for part in progress(batches(trajectories, batch_size), "evaluate", show_progress):
        prompted = BatchTargets.concat(teacher.score(part, top_k=top_k, full=full, side="prompted"))
        others = {
            "baked": BatchTargets.concat(student.score(part, full=True)),
            "base": BatchTargets.concat(teacher.score(part, top_k=None, full=True, side="unprompted")),
        }
        if full:
            best = prompted.full_logprobs.argmax(-1)  # type: ignore[union-attr]
        else:
            best = prompted.topk_ids[:, 0]  # type: ignore[index]
        for name, other in others.items():
            logprobs = other.full_logprobs
            sums[name] += float(kl.per_token(logprobs, prompted).sum())  # log_softmax(logprobs) == logprobs
            agree[name] += int((logprobs.argmax(-1) == best).sum())
        tokens += int(prompted.sampled_ids.shape[0])
        del prompted, others
    base, baked = sums["base"] / max(tokens, 1), sums["baked"] / max(tokens, 1)
    return {
        "kl_prompted_base": base,
        "kl_prompted_baked": baked,
        "gap_closed": (1.0 - baked / base) if base > 0 else float("nan"),
        "top1_agreement_baked": agree["baked"] / max(tokens, 1),
        "top1_agreement_base": agree["base"] / max(tokens, 1),
        "kl": "full" if full else f"top-{top_k} with tail (a lower bound)",
        "tokens": tokens,
        "trajectories": len(trajectories),
    }
