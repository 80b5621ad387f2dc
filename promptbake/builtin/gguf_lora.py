"""A PEFT LoRA adapter as a llama.cpp LoRA GGUF (``general.type = adapter``, ``adapter.type = lora``).

Each pair is named after the base tensor it changes plus ``.lora_a`` / ``.lora_b``; ``A`` keeps
PEFT's (rank, in) layout and ``B`` its (out, rank) one, which GGUF stores reversed (ggml's
``ne = [in, rank]`` and ``[rank, out]``), as llama.cpp checks. llama.cpp scales a pair by
``adapter.lora.alpha / rank``; where PEFT's scale differs (rsLoRA's ``alpha / sqrt(rank)``, an
``alpha_pattern``), the difference is folded into ``B``, so the runtime computes what PEFT does.

What llama.cpp cannot load is refused in one sentence: ``modules_to_save`` (whole copies of
modules), DoRA, trained biases, LoRA on the embeddings, on a tied output layer, or on a module
gguf-py's map has no tensor for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..core.errors import CapabilityError, ConfigError
from .gguf_arch import Layout

PEFT_PREFIX = "base_model.model."


@dataclass
class LoraPair:
    module: str  # the transformers module, e.g. model.layers.0.self_attn.q_proj
    name: str  # the base GGUF tensor, e.g. blk.0.attn_q.weight
    a: np.ndarray  # [rank, in]
    b: np.ndarray  # [out, rank], PEFT's scale relative to llama.cpp's folded in, rows in llama.cpp's order


def adapter_config(adapter: Path) -> dict[str, Any]:
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{adapter} is not an adapter directory (no adapter_config.json).")
    return json.loads(path.read_text(encoding="utf-8"))


def check_config(config: dict[str, Any], adapter: Path) -> None:
    """Refuse what llama.cpp's LoRA loader cannot apply, before reading any tensor."""
    kind = config.get("peft_type", "LORA")
    reason = None
    if kind != "LORA":
        reason = f"is a {kind} adapter, and llama.cpp applies only LoRA adapters"
    elif config.get("modules_to_save"):
        reason = (f"saves whole modules ({', '.join(config['modules_to_save'])}, modules_to_save), which a "
                  f"llama.cpp LoRA cannot carry")
    elif config.get("use_dora"):
        reason = "is a DoRA adapter, whose magnitude vectors llama.cpp does not apply"
    elif config.get("bias", "none") != "none" or config.get("lora_bias"):
        reason = "trains biases, which a llama.cpp LoRA cannot carry"
    elif config.get("layer_replication") or config.get("target_parameters"):
        reason = "changes the model's structure (layer_replication or target_parameters), which llama.cpp cannot follow"
    elif config.get("fan_in_fan_out"):
        reason = "targets fan-in-fan-out (Conv1D) layers, which this exporter does not write"
    if reason:
        raise CapabilityError(f"The adapter in {adapter} {reason}; export it with --to merged instead.")


def _peft_scale(config: dict[str, Any], module: str, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    if config.get("alpha_pattern"):
        from peft.utils.other import get_pattern_key

        key = get_pattern_key(list(config["alpha_pattern"]), module)
        alpha = float(config["alpha_pattern"].get(key, alpha))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def lora_pairs(adapter: Path, config: dict[str, Any], lay: Layout, spec: str,
               base_shapes: dict[str, tuple[int, ...]] | None = None) -> list[LoraPair]:
    """The adapter's pairs, named and laid out for llama.cpp; ``base_shapes`` (GGUF name -> shape
    of the base file's tensors) checks that every pair fits a tensor of the base."""
    from safetensors.torch import load_file

    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        raise ConfigError(f"{adapter} has no adapter_model.safetensors.")
    weights = load_file(str(path))
    if any(".lora_embedding_" in key for key in weights):
        raise CapabilityError(f"The adapter in {adapter} puts a LoRA on the token embeddings, which this "
                              f"exporter does not write for llama.cpp; bake without it or export --to merged.")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in weights.items():
        name = key.removeprefix(PEFT_PREFIX)
        for side in ("A", "B"):
            if name.endswith(f".lora_{side}.weight"):
                parts.setdefault(name.removesuffix(f".lora_{side}.weight"), {})[side] = tensor.float().numpy()
                break
        else:
            raise CapabilityError(f"The adapter in {adapter} holds '{key}', which is not a LoRA A/B matrix and "
                                  f"cannot go into a llama.cpp LoRA; export it with --to merged instead.")
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    pairs = []
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"The adapter in {adapter} has half a LoRA pair for '{module}'.")
        hf_name = module + ".weight"
        name = lay.tensor_name(hf_name)
        if name is None:
            raise CapabilityError(f"The adapter in {adapter} changes '{module}', which gguf-py's map for the "
                                  f"'{lay.arch_name}' architecture has no tensor for.")
        if name.startswith("token_embd."):
            raise CapabilityError(f"The adapter in {adapter} changes the token embeddings ('{module}'), which "
                                  f"this exporter does not write for llama.cpp; export it with --to merged.")
        if name.startswith("output.") and lay.tied:
            raise CapabilityError(f"The adapter in {adapter} changes the output layer of '{spec}', whose output "
                                  f"layer is its embeddings (tied), which a llama.cpp LoRA cannot change alone.")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            raise ConfigError(f"The adapter in {adapter} has LoRA matrices for '{module}' that do not pair "
                              f"({a.shape} and {b.shape}).")
        if base_shapes is not None and base_shapes.get(name) != (b.shape[0], a.shape[1]):
            raise ConfigError(f"The adapter in {adapter} does not fit its base '{spec}': '{module}' is "
                              f"{b.shape[0]}x{a.shape[1]}, the base's {name} is {base_shapes.get(name)}.")
        fold = _peft_scale(config, module, rank) / (alpha / rank)
        b = lay.reorder(hf_name, b * np.float32(fold) if fold != 1 else b)
        pairs.append(LoraPair(module=module, name=name, a=np.ascontiguousarray(a), b=np.ascontiguousarray(b)))
    if not pairs:
        raise ConfigError(f"The adapter in {adapter} holds no LoRA matrices.")
    return pairs


def write_lora(path: Path, lay: Layout, pairs: list[LoraPair], alpha: float, name: str) -> None:
    """Write the LoRA GGUF (float32 matrices: an adapter is small, and llama.cpp adds it unrounded)."""
    writer = gguf.GGUFWriter(str(path), lay.arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for pair in pairs:
        writer.add_tensor(pair.name + ".lora_a", pair.a.astype(np.float32), raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.add_tensor(pair.name + ".lora_b", pair.b.astype(np.float32), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
