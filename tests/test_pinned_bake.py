"""A tiny bake's adapter, pinned bit for bit: refactoring must not change what a bake computes.

The hashes were taken from the code before the stage refactor (issue 20) and must stay as they are.
A change that is meant to alter the result (a correctness fix) says so in its commit and
updates them with the reason; anything else that moves them is a regression.

Updated once, in issue 23: shared-prefix decoding samples by inverting the cumulative
distribution (``sampling.draw``) instead of ``torch.multinomial``. Both draw from the same
distribution, but not the same tokens for a seed, so the teacher's trajectories changed.
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
    "full_kl": "c8b27dc9fd4dd03d3776e086bbd719b1563bf8978e29afb39a43a0358273547e",
    "topk_kl": "8dee9341eefcc15da3d36fe11a2fcce1d36267af1e1f885f309d27a3d9b004f0",
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
