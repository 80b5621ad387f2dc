"""Merge a baked LoRA adapter into its base model: a plain transformers model folder.

The merged folder (safetensors weights, config, tokenizer files, generation
config) loads with ``transformers.AutoModelForCausalLM.from_pretrained``, with
:func:`promptbake.models.load`, and as the ``model`` of a later bake, which is
how Prompt Pursuit and sequential baking chain bakes (see techniques.py).

The base model of a loaded handle is shared (``models.cached``): a teacher and
a student of a later bake may reuse it. Merging writes the adapter into the
weights it is given, so a cached base is deep-copied first; a base that was
not cached is loaded, taken out of the cache and merged in place (no copy).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from ..core.atomic import check_free, replace_dir, write_json, write_manifest
from ..core.errors import ConfigError
from ..core.metadata import METADATA_FILE
from . import hf_internals, models

MERGE_INFO = "promptbake-merge.json"  # provenance of a merged folder (not promptbake.json: that marks adapters)


def merge_adapter(adapter: str | Path, out: str | Path, *, model: str | None = None, dtype: str = "auto",
                  device: str = "auto", overwrite: bool = False) -> Path:
    """Merge the LoRA ``adapter`` into its base model and save the result to ``out``; return ``out``.

    The base is ``model`` when given, else the ``base_model`` recorded in the
    adapter's promptbake.json. The folder is written to a temporary name and
    renamed into place, with a manifest of its files. Soft-prefix adapters
    (prompt learning) add no weights to merge and are refused.
    """
    from peft import PeftConfig, PeftModel

    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not an adapter directory (no adapter_config.json).")
    meta_path = adapter / METADATA_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    spec = model or meta.get("base_model")
    if not spec:
        raise ConfigError(f"{adapter} does not record its base model (no {METADATA_FILE}); pass --model.")
    if PeftConfig.from_pretrained(str(adapter)).is_prompt_learning:
        raise ConfigError(f"{adapter} is a soft-prefix adapter, which adds no weights that could be merged "
                          f"into the model; only LoRA adapters merge.")
    check_free(out, overwrite)

    base, tokenizer = private_base(spec, dtype, device)
    with models.quiet_peft():
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.eval()
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        portable(tmp, merged)
        write_json(tmp / MERGE_INFO, {
            "base_model": spec, "adapter": str(adapter.resolve()),
            **{k: meta[k] for k in ("prompt_sha256", "prompt", "promptbake_version", "loss") if k in meta},
        })
        write_manifest(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        del merged, base
    return out


# tokenizer_config.json's tokenizer_class as transformers 5 writes it, which 4.x (and the llama.cpp
# converters pinned to it) do not know, and the class both read for a tokenizer.json tokenizer.
PORTABLE_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable(folder: str | Path, model: Any) -> None:
    """Make a saved model folder load in any transformers from 4.5x on and in llama.cpp's converter:
    config.json names its architecture (a config made from a GGUF file has none), and
    tokenizer_config.json a tokenizer class older versions know."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not config.get("architectures"):
        config["architectures"] = [type(model).__name__]
        write_json(config_path, config)
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        tok = json.loads(tok_path.read_text(encoding="utf-8"))
        if tok.get("tokenizer_class") in PORTABLE_TOKENIZER_CLASS:
            tok["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS[tok["tokenizer_class"]]
            write_json(tok_path, tok)


def private_base(spec: str, dtype: str, device: str) -> tuple[Any, Any]:
    """A copy of the base model that nothing else uses, ready to take an adapter's weights, and
    its tokenizer (a GGUF-loaded model is marked an ordinary one: see :func:`_drop_quantizer`)."""
    base, tokenizer = _unshared_base(spec, dtype, device)
    _drop_quantizer(base, spec)
    return base, tokenizer


def _unshared_base(spec: str, dtype: str, device: str) -> tuple[Any, Any]:
    """A copy of the base model that nothing else uses, and its tokenizer.

    A cached handle (shared with teachers and students of this process) is
    deep-copied; otherwise the model is loaded and dropped from the cache, so
    the merge can change its weights without a second copy.
    """
    cached = models.cached(spec, dtype, device)
    if cached is not None:
        if cached.peft_model is not None:
            raise ConfigError(f"Model '{spec}' carries a training adapter in this process; merge after the bake "
                              f"that uses it has finished.")
        return copy.deepcopy(cached.model), cached.tokenizer
    handle = models.load(spec, dtype, device)
    models.release(handle)
    return handle.model, handle.tokenizer


def _drop_quantizer(model: Any, spec: str) -> None:
    """Make a model loaded from a GGUF file, dequantized to plain tensors, saveable as an ordinary one;
    weights still packed are refused."""
    if hf_internals.weights_still_packed(model):
        raise ConfigError(f"Model '{spec}' is loaded with quantized weights, which a LoRA adapter cannot be merged "
                          f"into and saved; merge into the unquantized model (--model).")
    hf_internals.drop_gguf_quantizer(model)
