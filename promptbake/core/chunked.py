"""A loss through the output layer a few rows at a time, gradients taken as it goes (torch).

The [N, V] logits of a long batch are the largest tensors of a training step. Here
each chunk of rows goes through the output layer and the loss, its gradient towards
the chunk's hidden states (and the layer's trainable weights, if any) is taken
straight away, and the chunk is dropped. The backward pass then only hands those
gradients on: unlike activation checkpointing, the output layer and the loss are not
run a second time.

Full targets that arrive as the teacher's final hidden states (``Targets.hidden``)
become log-probabilities here too, a chunk at a time, through the same output layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .interfaces import BatchTargets, Loss


class _Precomputed(torch.autograd.Function):
    """A value whose gradients towards ``inputs`` were computed in the forward pass."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, grads: list[torch.Tensor | None], *inputs: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, *[None if g is None else g * grad_out for g in ctx.grads])


def chunked_loss(loss: Loss, hidden: torch.Tensor, head: Any, targets: BatchTargets, num_tokens: int,
                 chunk_size: int) -> torch.Tensor:
    """``loss`` over hidden states [N, H] through ``head``, ``chunk_size`` rows at a time,
    summed and divided by ``num_tokens``; differentiable towards ``hidden`` and the head's
    trainable parameters (see the module docstring)."""
    graph = torch.is_grad_enabled()  # under no_grad (evaluation): the value alone
    params = [p for p in head.parameters() if p.requires_grad] if graph else []
    flat = hidden.detach()
    wants_hidden = graph and hidden.requires_grad
    grads: list[torch.Tensor | None] = [torch.zeros_like(flat) if wants_hidden else None]
    grads += [torch.zeros_like(p) for p in params]
    total = torch.zeros((), dtype=torch.float32, device=flat.device)
    weight = next(iter(head.parameters()))  # rows go through the head in its own dtype (bfloat16 models)
    for start in range(0, flat.shape[0], chunk_size):
        part = targets.rows(slice(start, start + chunk_size))
        if part.hidden is not None and part.full_logprobs is None:
            with torch.no_grad():  # the teacher's logits: its hidden states through the shared, frozen head
                part.full_logprobs = torch.log_softmax(head(part.hidden.to(weight.device, weight.dtype)).float(), -1)
        rows = flat[start: start + chunk_size].requires_grad_(wants_hidden)
        wrt = ([rows] if wants_hidden else []) + params
        with torch.set_grad_enabled(bool(wrt)):
            value = part.weighted(loss.per_token(head(rows.to(weight.dtype)), part)).sum()
            found = torch.autograd.grad(value, wrt, allow_unused=True) if wrt and value.requires_grad else ()
        if found:
            if wants_hidden and found[0] is not None:
                grads[0][start: start + chunk_size] = found[0]  # type: ignore[index]
            for acc, g in zip(grads[1:], found[len(found) - len(params):]):
                if g is not None:
                    acc += g  # type: ignore[operator]
        total += value.detach().float()
    return _Precomputed.apply(total, grads, hidden, *params) / max(num_tokens, 1)
