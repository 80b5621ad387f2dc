"""Shared fixtures: tiny local models (no hub), registered under unique names."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tests"))  # helpers.py, for plugin tests too
# Keep third-party plugins installed in the environment out of the suite.
os.environ.setdefault("PROMPTBAKE_LOAD_PLUGINS", "")
# A deprecation that promptbake's own call into transformers, peft or trl raises fails the test.
pytest_plugins = ["deprecations"]

_counter = itertools.count()


@pytest.fixture
def tiny_model():
    """A function style -> registered model spec; the tiny model is shared by teacher and student."""
    from helpers import make_tiny_llama, make_tokenizer

    from promptbake.builtin import models

    made = []

    def build(style: str = "smollm2", seed: int = 0) -> str:
        tokenizer = make_tokenizer(style)
        model = make_tiny_llama(tokenizer, seed=seed)
        spec = f"tiny-{style}-{next(_counter)}"
        handle = models.ModelHandle(spec=spec, model=model, tokenizer=tokenizer, device="cpu")
        models.register_handle(handle)
        made.append(handle)
        return spec

    yield build
    for handle in made:
        models.release(handle)


@pytest.fixture
def bake_settings(tmp_path):
    """Small, fast settings for bakes on tiny models."""
    return {
        "max_queries": 6, "max_heldout": 3, "samples_per_query": 2, "max_new_tokens": 10, "epochs": 2,
        "batch_size": 4, "out": str(tmp_path / "run"), "progress": False, "device": "cpu",
    }
