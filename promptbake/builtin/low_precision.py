"""bfloat16 copies of a model's linear weights, for products where bfloat16 is fast.

On CPUs with AVX-512 BF16 or AMX (and GPUs holding float32 weights) a bfloat16 matrix
product runs about 2.5-3x faster than a float32 one. Two users:

- decoding (:func:`bf16_products`, the ``generate_bf16`` setting): inside the block every
  float32 linear layer takes its input in bfloat16 through a copy of its weight made for the
  call, and hands its output back in the input's dtype; everything between the layers
  (norms, attention, the sampler) stays as loaded;
- training (the peft student's ``bf16_grads`` and ``bf16_forward``): the gradients that flow
  back through the frozen layers (none of their parameters requires a gradient: the base
  weights under LoRA, the output layer), and with ``bf16_forward`` the decoder's forward
  products, come from copies made once, since those weights never change
  (``promptbake/builtin/peft.py``, through :func:`low_linear`).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch


def linear_copies(model: Any, frozen_only: bool = False) -> dict[torch.nn.Linear, torch.Tensor]:
    """A bfloat16 copy of the weight of every float32 ``nn.Linear`` in ``model`` (with
    ``frozen_only``, of those none of whose parameters requires a gradient)."""
    return {m: m.weight.detach().to(torch.bfloat16) for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32
            and not (frozen_only and any(p.requires_grad for p in m.parameters()))}


@contextlib.contextmanager
def patched_forwards(forwards: dict[torch.nn.Linear, Callable[..., torch.Tensor]]) -> Iterator[None]:
    """Inside the block each layer runs its ``forwards`` entry (``forward(layer, x)``) instead of
    its class's forward; after it, the class's forward again."""
    for layer, forward in forwards.items():
        layer.forward = types.MethodType(forward, layer)
    try:
        yield
    finally:
        for layer in forwards:
            vars(layer).pop("forward", None)


def bf16_products(copies: dict[torch.nn.Linear, torch.Tensor]) -> contextlib.AbstractContextManager[None]:
    """Inside the block each layer of ``copies`` (from :func:`linear_copies`) computes
    its forward from its bfloat16 copy: ``linear(x.bfloat16(), copy)`` back in ``x``'s dtype,
    plus its float32 bias. For forwards without gradients (decoding)."""
    return patched_forwards({layer: _forward_through(low) for layer, low in copies.items()})


def low_linear(x: torch.Tensor, low: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(x, weight, bias)`` with the product from ``low``, the weight's bfloat16 copy:
    ``x`` goes in as bfloat16 and the output comes back in ``x``'s dtype, before the bias."""
    out = torch.nn.functional.linear(x.to(low.dtype), low).to(x.dtype)
    return out if bias is None else out + bias


def _forward_through(low: torch.Tensor) -> Any:
    def forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return low_linear(x, low, layer.bias)

    return forward
