"""A model's tokenizer in a GGUF file's metadata (``tokenizer.ggml.*``, ``tokenizer.chat_template``).

Either copied from a GGUF file the model came from (the embedded SmolLM2: read with
``gguf.GGUFReader``), or written from a transformers tokenizer, as llama.cpp's converter does for
byte-level BPE vocabularies (GPT-2 style: SmolLM2, Llama 3, Qwen, Mistral Nemo): tokens, token
types, merges, special ids, whether BOS/EOS are added, the chat template, and the name of the
pre-tokenizer llama.cpp should split text with. SentencePiece vocabularies (Llama 2, Mistral 7B,
Gemma) are refused: their scores and byte tokens are llama.cpp's converter's business.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gguf

from ..core.errors import CapabilityError
from .gguf_arch import CONVERTER

# The regular expressions of the pre-tokenizers llama.cpp implements, as tokenizer.json writes them
# (a Split before a ByteLevel that does not split itself), and the name each has in llama.cpp.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def copy_tokenizer(writer: gguf.GGUFWriter, source: str | Path) -> None:
    """Copy every ``tokenizer.*`` key of the GGUF file ``source`` (the vocabulary the model was
    shipped with, which llama.cpp already reads correctly)."""
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)


def pre_tokenizer(tokenizer_json: dict[str, Any], spec: str) -> str:
    """The llama.cpp name of a byte-level BPE's pre-tokenizer, read off its structure in tokenizer.json."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    last = parts[-1] if parts else {}
    if kinds == ["ByteLevel"] and last.get("use_regex", True) and not last.get("add_prefix_space", False):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and last.get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in SPLITS and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert"):
            return SPLITS[regex]
    raise CapabilityError(f"Model '{spec}''s tokenizer splits text in a way this exporter cannot name for "
                          f"llama.cpp (pre-tokenizer {kinds}); pass option pre=NAME with llama.cpp's name, "
                          f"or use {CONVERTER}.")


def byte_level_json(tokenizer: Any, spec: str) -> dict[str, Any]:
    """tokenizer.json of a byte-level BPE tokenizer, or a refusal."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else {}
    model = data.get("model") or {}
    pre = json.dumps(data.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or '"ByteLevel"' not in pre:
        raise CapabilityError(f"Model '{spec}' has a SentencePiece-style tokenizer (not a byte-level BPE), which "
                              f"this exporter does not write; use {CONVERTER}.")
    return data


def looks_special(token: str) -> bool:
    """Added tokens some models forget to mark special (``<|...|>``), as llama.cpp's converter treats them."""
    return token.startswith("<|") and token.endswith("|>")


def write_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, n_vocab: int, spec: str,
                    pre: str | None = None) -> None:
    """Write a transformers byte-level BPE tokenizer for llama.cpp; ``n_vocab`` rows (the model's
    embedding rows: ids past the tokenizer's are unused padding)."""
    data = byte_level_json(tokenizer, spec)
    pre = pre or pre_tokenizer(data, spec)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = dict(tokenizer.added_tokens_decoder)
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].special or looks_special(by_id[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as tmp:  # gguf-py reads merges and special ids from the saved files
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
    # Whether BOS/EOS are added is what the tokenizer does, not what its files say.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None and token_id < n_vocab:
            special.special_token_ids[kind] = int(token_id)
    if getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
