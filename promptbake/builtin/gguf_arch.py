"""What llama.cpp expects of a model family: its GGUF architecture, hyperparameters and tensor layout.

Shared by the ``gguf`` and ``gguf-lora`` exporters. Tensor names come from gguf-py's own map
(``gguf.get_tensor_name_map``), and the one change of layout llama.cpp makes is followed as its
``convert_hf_to_gguf.py`` does: for the ``llama`` architecture the rows of the query and key
projections are reordered from the Hugging Face rotary layout (two halves of each head) to the
interleaved one llama.cpp's RoPE reads. A LoRA pair follows its weight: ``B`` holds the output
rows, so ``B``'s rows are reordered the same way and ``A`` is untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from ..core.errors import CapabilityError

# transformers model_type -> (gguf architecture, reorder q/k rows for llama.cpp's RoPE)
FAMILIES: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "mistral": (gguf.MODEL_ARCH.LLAMA, True),  # llama.cpp runs Mistral as llama, as its converter writes it
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
    "qwen3": (gguf.MODEL_ARCH.QWEN3, False),
}
CONVERTER = "llama.cpp's convert_hf_to_gguf.py on `promptbake export --to merged` output"


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def rope_parameters(config: Any) -> dict[str, Any]:
    """The RoPE settings (transformers 5's ``rope_parameters``, 4.x's ``rope_scaling`` + ``rope_theta``)."""
    params = dict(_get(config, "rope_parameters", "rope_scaling", default={}) or {})
    params.setdefault("rope_theta", _get(config, "rope_theta", default=10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


@dataclass
class Layout:
    """A model family as llama.cpp stores it, read off a transformers config."""

    config: Any
    arch: gguf.MODEL_ARCH
    reorder_qk: bool

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def n_head(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_head(self) -> int:
        return int(_get(self.config, "num_key_value_heads", default=self.n_head))

    @property
    def head_dim(self) -> int:
        return int(_get(self.config, "head_dim", default=self.config.hidden_size // self.n_head))

    @property
    def tied(self) -> bool:
        return bool(_get(self.config, "tie_word_embeddings", default=False))

    def tensor_name(self, hf_name: str) -> str | None:
        """The GGUF name of a transformers weight or bias (``model.layers.0.self_attn.q_proj.weight``
        -> ``blk.0.attn_q.weight``), or None where gguf-py's map for the architecture has none."""
        names = gguf.get_tensor_name_map(self.arch, self.n_layers)
        return names.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def reorder(self, hf_name: str, rows: np.ndarray) -> np.ndarray:
        """``rows`` (a weight, a bias, a LoRA ``B`` or their quantised rows) of ``hf_name`` in the
        order llama.cpp reads: q/k rows interleaved per head for the llama architecture."""
        if not self.reorder_qk:
            return rows
        module = hf_name.rsplit(".", 1)[0]
        if module.endswith("q_proj"):
            heads = self.n_head
        elif module.endswith("k_proj"):
            heads = self.n_kv_head
        else:
            return rows
        shape = rows.shape
        return np.ascontiguousarray(
            rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape))

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        """The architecture's hyperparameters, as llama.cpp reads them."""
        c = self.config
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(_get(c, "max_position_embeddings", default=4096)))
        writer.add_embedding_length(int(c.hidden_size))
        writer.add_feed_forward_length(int(c.intermediate_size))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_kv_head)
        writer.add_layer_norm_rms_eps(float(_get(c, "rms_norm_eps", default=1e-6)))
        writer.add_vocab_size(int(c.vocab_size))
        writer.add_rope_dimension_count(self.head_dim)
        if _get(c, "head_dim") is not None:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        rope = rope_parameters(c)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the model does not hold: Llama 3.1's RoPE frequency factors."""
        rope = rope_parameters(self.config)
        if rope["rope_type"] != "llama3":
            return {}
        return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": llama3_rope_factors(rope, self.head_dim)}


def llama3_rope_factors(rope: dict[str, Any], dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's RoPE scaling (``rope_type = "llama3"``): long wavelengths
    are stretched by ``factor``, short ones kept, and the band between blended smoothly."""
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    context = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * base ** (i / dim)
        if wavelength < context / high:
            out.append(1.0)
        elif wavelength > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def layout(config: Any, spec: str) -> Layout:
    """The layout of model ``spec`` (its transformers ``config``), or a refusal llama.cpp would make."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise CapabilityError(f"Model '{spec}' is a '{family}' model, which this exporter does not write "
                              f"(it writes {', '.join(sorted(FAMILIES))}); use {CONVERTER}.")
    arch, reorder = FAMILIES[family]
    act = _get(config, "hidden_act", "hidden_activation", default="silu")
    rope = rope_parameters(config)["rope_type"]
    if act != "silu" or rope not in ("default", "linear", "llama3"):
        what = f"activation '{act}'" if act != "silu" else f"RoPE scaling '{rope}'"
        raise CapabilityError(f"Model '{spec}' uses {what}, which this exporter does not write; use {CONVERTER}.")
    return Layout(config=config, arch=arch, reorder_qk=reorder)
