"""The three built-in losses, per response token.

Each returns a loss per token; the student sums them and divides by the number
of response tokens in the whole optimizer step.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..core.interfaces import BatchTargets, Loss, TargetKind
from ..core.targets import log1mexp


def _need(value: torch.Tensor | None, loss: str, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"loss '{loss}' needs {what} in its targets")
    return value


class CELoss(Loss):
    """Top-1 cross-entropy on the teacher's sampled tokens: -log q(y_t)."""

    name: ClassVar[str] = "ce"
    needs: ClassVar[TargetKind] = "tokens"
    same_tokenizer: ClassVar[bool] = False

    def per_token(self, logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.float(), targets.sampled_ids.to(logits.device), reduction="none")


class TopKKLLoss(Loss):
    """Forward KL over the teacher's top-K tokens.

    With ``tail=True`` (default) the mass outside the top-K forms one more
    bucket, (1-Σp) log((1-Σp)/(1-Σq)), so the value is a lower bound on the
    full KL and the optimum does not push all student mass into the top-K.
    With ``renormalize=True`` both distributions are renormalised over the
    top-K instead (no tail).
    """

    name: ClassVar[str] = "topk_kl"
    needs: ClassVar[TargetKind] = "topk"

    def __init__(self, tail: bool = True, renormalize: bool = False):
        if tail and renormalize:
            raise ValueError("topk_kl: choose tail or renormalize, not both")
        self.tail = tail
        self.renormalize = renormalize

    def per_token(self, logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
        ids = _need(targets.topk_ids, self.name, "top-K ids").to(logits.device)
        t_logp = _need(targets.topk_logprobs, self.name, "top-K logprobs").to(logits.device).float()
        s_logp_all = torch.log_softmax(logits.float(), dim=-1)
        s_logp = s_logp_all.gather(-1, ids.long())
        # Entries at -inf pad rows with fewer than K usable ids (hosted teachers).
        valid = torch.isfinite(t_logp)
        if self.renormalize:
            s_logp = s_logp.masked_fill(~valid, float("-inf"))
            t_logp = t_logp - torch.logsumexp(t_logp, dim=-1, keepdim=True)
            s_logp = s_logp - torch.logsumexp(s_logp, dim=-1, keepdim=True)
        p = t_logp.exp()
        zero = torch.zeros_like(p)
        kl = torch.where(valid, p * (torch.where(valid, t_logp, zero) - torch.where(valid, s_logp, zero)), zero).sum(-1)
        if self.tail:
            if targets.tail_logprob is not None:
                t_tail = targets.tail_logprob.to(logits.device).float()
            else:
                t_tail = log1mexp(torch.logsumexp(t_logp, dim=-1))
            if ids.shape[-1] < logits.shape[-1]:
                # Summed over the tokens outside the top-K: 1 - sum(q_k) loses all
                # precision when the top-K holds nearly all the student's mass.
                s_tail = torch.logsumexp(s_logp_all.scatter(-1, ids.long(), float("-inf")), dim=-1)
            else:  # K covers the vocabulary: no tail tokens (and no all -inf rows to differentiate)
                s_tail = log1mexp(torch.logsumexp(s_logp, dim=-1))
            p_tail = t_tail.exp()
            kl = kl + torch.where(p_tail > 0, p_tail * (t_tail - s_tail), torch.zeros_like(p_tail))
        return kl


class FullKLLoss(Loss):
    """Forward KL over the full vocabulary, computed in chunks of positions."""

    name: ClassVar[str] = "full_kl"
    needs: ClassVar[TargetKind] = "full"

    def __init__(self, chunk_size: int = 256):
        self.chunk_size = chunk_size

    def per_token(self, logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
        teacher = _need(targets.full_logprobs, self.name, "full-vocabulary logprobs")
        if teacher.shape[-1] != logits.shape[-1]:
            raise ValueError(
                f"full_kl: teacher vocabulary {teacher.shape[-1]} != student vocabulary {logits.shape[-1]}"
            )
        out = []
        for start in range(0, logits.shape[0], self.chunk_size):
            s = torch.log_softmax(logits[start:start + self.chunk_size].float(), dim=-1)
            t = teacher[start:start + self.chunk_size].to(logits.device).float()
            p = t.exp()
            # sum p (t - s) as two row dot products: no [rows, V] product tensor is kept
            # for the backward pass, only p and s (memory is what chunking is for).
            # Where p = 0 (t = -inf), 0 * log 0 counts as 0, not NaN. (Not in place: t may be
            # the caller's float32 targets themselves.)
            entropy = torch.bmm(p.unsqueeze(1), t.nan_to_num(neginf=0.0).unsqueeze(2)).view(-1)
            out.append(entropy - torch.bmm(p.unsqueeze(1), s.unsqueeze(2)).view(-1))
        return torch.cat(out) if out else logits.new_zeros(0)
