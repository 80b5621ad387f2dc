"""Every use promptbake makes of transformers beyond its stable, documented API, in one place.

transformers moves fast (a fresh install resolves the newest release), so what is
private, renamed or version-dependent is kept here, each piece with a test in
``tests/test_hf_internals.py`` that fails loudly when transformers changes it:

- the name of the KV-cache argument and output (``cache`` from 5.24, where
  ``past_key_values`` became a deprecated alias to be removed in 5.40);
- the attention implementation a model runs (``config._attn_implementation``,
  read only: switching goes through the public ``set_attn_implementation``);
- the progress bar of the GGUF loader, and the GGUF "quantizer" a dequantised
  model keeps (see :func:`drop_gguf_quantizer`).

Everything else promptbake calls (``from_pretrained``, ``generate``, logits
processors, ``DynamicCache`` methods, ``AttentionInterface.register``) is public.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

NEW_CACHE_NAME = "cache"  # transformers >= 5.24
OLD_CACHE_NAME = "past_key_values"


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.lru_cache(maxsize=64)
def _cache_name_of(forward_type: type) -> str:
    try:
        params = inspect.signature(forward_type.forward).parameters
    except (TypeError, ValueError):
        return OLD_CACHE_NAME
    return NEW_CACHE_NAME if NEW_CACHE_NAME in params else OLD_CACHE_NAME


def cache_kwarg(model: Any) -> str:
    """The keyword under which ``model``'s forward (and ``generate``) takes a KV cache."""
    return _cache_name_of(type(_base(model)))


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass a KV cache to ``model(...)`` or ``model.generate(...)``."""
    return {cache_kwarg(model): cache}


def output_cache(outputs: Any) -> Any:
    """The KV cache a forward returned (``outputs.cache``; ``past_key_values`` before 5.24)."""
    if NEW_CACHE_NAME in outputs:  # ModelOutput is a mapping of the fields that are set
        return outputs[NEW_CACHE_NAME]
    return outputs[OLD_CACHE_NAME]


def new_cache(model: Any) -> Any:
    """An empty dynamic KV cache for ``model``."""
    from transformers import DynamicCache

    return DynamicCache(config=_base(model).config)


def cache_layer(cache: Any, idx: int) -> tuple[Any, Any]:
    """Keys and values of decoder layer ``idx`` of a dynamic cache ([batch, kv heads, tokens, head dim])."""
    entry = cache.layers[idx]
    return entry.keys, entry.values


def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """Keys and values of every decoder layer of a dynamic cache."""
    return [cache_layer(cache, i) for i in range(len(cache.layers))]


def attn_implementation(model: Any) -> str | None:
    """The attention implementation ``model`` runs ("sdpa", "eager", ...)."""
    return getattr(getattr(_base(model), "config", None), "_attn_implementation", None)


def register_attention(name: str, forward: Callable[..., Any]) -> None:
    """Make ``forward`` an attention implementation that models can switch to by ``name``."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, forward)


@contextlib.contextmanager
def attention(model: Any, name: str) -> Iterator[None]:
    """Run ``model`` with the registered attention implementation ``name`` inside the block."""
    base = _base(model)
    before = attn_implementation(base)
    base.set_attn_implementation(name)
    try:
        yield
    finally:
        base.set_attn_implementation(before)


def hide_gguf_loader_bar() -> None:
    """Switch off the plain tqdm bar transformers' GGUF loader shows (tqdm reads TQDM_DISABLE
    only when first imported, so the loader's own reference is patched)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_loader
    except ImportError:  # no gguf support installed: no GGUF bar either
        return
    if not isinstance(gguf_loader.tqdm, functools.partial):
        gguf_loader.tqdm = functools.partial(gguf_loader.tqdm, disable=True)


def gguf_quantizer(model: Any) -> Any | None:
    """The quantizer transformers keeps on a model loaded from a GGUF file, or None."""
    return getattr(model, "hf_quantizer", None)


def weights_still_packed(model: Any) -> bool:
    """Whether a quantised model's weights are still packed (not plain dequantised tensors)."""
    quantizer = gguf_quantizer(model)
    if quantizer is None:
        return False
    method = getattr(quantizer.quantization_config, "quant_method", None)
    packed = getattr(quantizer, "packed_modules", None) or any(
        type(m).__name__.lower().startswith("gguf") for m in model.modules())
    return getattr(method, "value", method) != "gguf" or bool(packed)


def drop_gguf_quantizer(model: Any) -> None:
    """Mark a model loaded from GGUF and dequantised to plain float tensors as an ordinary model,
    so the Trainer trains it and ``save_pretrained`` saves it (transformers keeps a
    ``GgufHfQuantizer`` on it although its weights are plain tensors)."""
    if gguf_quantizer(model) is None:
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
