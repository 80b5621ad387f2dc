"""A transformers model written as one GGUF file, its weights stored as llama.cpp will read them.

Each tensor is mapped to its GGUF name, stored in the file's type (``gguf.quants``: float32,
float16 or Q8_0 blocks, norms and other vectors always float32, as llama.cpp's converter does),
and its rows reordered where llama.cpp's layout differs (``Layout.reorder``). Quantisation
works row by row, so a tensor is quantised in the transformers row order and its quantised rows
reordered after: the numbers a measurement dequantises back into the model are the numbers
the file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..core.errors import CapabilityError, ConfigError
from .gguf_arch import Layout
from .gguf_vocab import copy_tokenizer, write_tokenizer

Q = gguf.GGMLQuantizationType
# option -> (the type of the file's matrices, the file type llama.cpp records)
QUANTS: dict[str, tuple[Q, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}
WRITTEN = ("f32", "f16", "q8_0")  # what gguf-py writes as llama.cpp's converter does; 4/5-bit is llama-quantize's
BASE_TYPES = ("f32", "f16", "q8_0", "none")  # gguf-lora's base option


def quant_type(quant: str, allowed: tuple[str, ...] = tuple(QUANTS)) -> tuple[Q, gguf.LlamaFileType]:
    if quant not in allowed:
        raise ConfigError(f"Unknown GGUF type '{quant}'; use one of {', '.join(allowed)}.")
    return QUANTS[quant]


@dataclass
class Stored:
    """One tensor of the file: its transformers name (None for tensors the model does not hold),
    its GGUF name, its type, and its data as stored, rows in transformers order."""

    hf_name: str | None
    name: str
    qtype: Q
    data: np.ndarray
    shape: tuple[int, ...]  # the float tensor's shape (transformers order)


def storage_type(name: str, array: np.ndarray, quant: str) -> Q:
    """The type llama.cpp's converter (and, for 4/5-bit, llama-quantize) gives tensor ``name``."""
    qtype = QUANTS[quant][0]
    if array.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1) and name.split(".")[0] in ("output", "token_embd"):
        qtype = Q.Q8_0  # llama-quantize keeps the output layer at 6 bits or more; Q8_0 stands in for it
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return Q.F16  # rows that do not fill whole blocks (the converter's fallback too)
    return qtype


def model_tensors(model: Any, lay: Layout, quant: str, spec: str) -> list[Stored]:
    """Every tensor of ``model`` as the GGUF file will store it."""
    out: list[Stored] = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and lay.tied:
            continue  # llama.cpp reads the output layer from token_embd when the file has none
        name = lay.tensor_name(hf_name)
        if name is None:
            raise CapabilityError(f"Model '{spec}' holds '{hf_name}', which gguf-py's map for the "
                                  f"'{lay.arch_name}' architecture has no name for.")
        array = tensor.detach().to("cpu").float().numpy()
        qtype = storage_type(name, array, quant)
        out.append(Stored(hf_name, name, qtype, gguf.quants.quantize(array, qtype), tuple(array.shape)))
    for name, array in lay.extra_tensors().items():
        out.append(Stored(None, name, Q.F32, array, tuple(array.shape)))
    return out


def dequantize_into(model: Any, tensors: list[Stored]) -> None:
    """Replace ``model``'s weights by the values the file stores (the model llama.cpp will run)."""
    import torch

    for t in tensors:
        if t.hf_name is None or t.qtype == Q.F32:
            continue
        param = model.get_parameter(t.hf_name)
        values = gguf.quants.dequantize(t.data, t.qtype).reshape(t.shape)
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(values)).to(param.dtype))


def write_model(path: Path, lay: Layout, tensors: list[Stored], quant: str, *, name: str, tokenizer: Any,
                spec: str, tokenizer_gguf: str | None = None, pre: str | None = None) -> None:
    """Write the model GGUF: type, name, hyperparameters, tokenizer (copied from ``tokenizer_gguf``
    when the model came from one, else written from ``tokenizer``) and tensors."""
    writer = gguf.GGUFWriter(str(path), lay.arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    lay.write_hparams(writer)
    writer.add_file_type(QUANTS[quant][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer_gguf is not None:
        copy_tokenizer(writer, tokenizer_gguf)
    else:
        write_tokenizer(writer, tokenizer, int(lay.config.vocab_size), spec, pre=pre)
    for t in tensors:
        data = lay.reorder(t.hf_name, t.data) if t.hf_name is not None else t.data
        writer.add_tensor(t.name, data, raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in transformers order (rows, columns) of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
