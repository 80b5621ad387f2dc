"""A tiny bake's adapter, pinned bit for bit: refactoring must not change what a bake computes.

The hashes were taken from the code before the stage refactor (issue 20) and must stay as they are.
A change that is meant to alter the result (a correctness fix) says so in its commit and
updates them with the reason; anything else that moves them is a regression.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from promptbake import Baker

PROMPT = "Always answer like a pirate, matey."

# sha256 over the adapter's tensors (name, dtype, shape, bytes), in name order.
PINNED = {
    "full_kl": "90fbaae9ba3cd98abb40a8ca6af70cbf7ca0df1d16971914a0f7bffb32770948",
    "topk_kl": "2ecf98a4dc6f58fb30b0cff806eb6441e8dee551c7a9cec4c2b85a611a7e620a",
}


def tensors_sha256(path) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(load_file(path).items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("loss", sorted(PINNED))
def test_tiny_bake_adapter_is_pinned(tiny_model, bake_settings, loss):
    spec = tiny_model()
    result = Baker(PROMPT, loss=loss, model=spec, **{**bake_settings, "evaluate": False}).run()
    assert tensors_sha256(result.adapter_path / "adapter_model.safetensors") == PINNED[loss]
