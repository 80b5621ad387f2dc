"""The ``gguf`` and ``gguf-lora`` exports: a bake for llama.cpp, llama-cpp-python and Ollama.

``gguf-lora`` writes the adapter as a llama.cpp LoRA GGUF (``adapter.gguf``) next to its base:
the embedded model's shipped GGUF file (referenced, not copied: the very weights the bake was
trained on) or, for another model, ``base.gguf`` written here (option ``base``: f16, q8_0, f32 or
none). ``gguf`` merges the adapter into its base and writes one GGUF (option ``quant``: f16, q8_0
or f32), after measuring on the held-out trajectories whether the type's rounding erases the bake
(``gguf_measure``); 4- and 5-bit types are only measured, never written.

Both use gguf-py's writer, tensor-name map and quantisers (``gguf_arch``, ``gguf_model``,
``gguf_lora``, ``gguf_vocab``) and write an Ollama ``Modelfile`` (``gguf_ollama``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core import registry
from ..core.atomic import file_sha256, write_text
from ..core.config import BakeConfig
from ..core.errors import CapabilityError, ConfigError
from ..core.interfaces import Exporter, ExportResult
from ..core.types import BakedRun
from . import models
from .gguf_arch import layout
from .gguf_lora import adapter_config, check_config, lora_pairs, write_lora
from .gguf_model import (
    BASE_TYPES,
    QUANTS,
    WRITTEN,
    dequantize_into,
    model_tensors,
    quant_type,
    write_model,
)
from .gguf_ollama import modelfile


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"Option {name} must be true or false, got {value!r}.")


def _check_student(config: BakeConfig, fmt: str) -> None:
    student = registry.create("student", config.student, **config.student_options)
    if not student.capabilities.merges:
        raise CapabilityError(f"Export '{fmt}' needs a LoRA adapter, and student '{student.name}' trains a soft "
                              f"prefix, which llama.cpp cannot load; use the peft student.")


def base_gguf(spec: str) -> Path | None:
    """The GGUF file a base model is itself (the embedded model, or a .gguf path), else None."""
    if spec in models.EMBEDDED:
        folder, filename = models.embedded_gguf(spec)
        return (Path(folder) / filename).resolve()
    path = Path(spec).expanduser()
    return path.resolve() if path.suffix == ".gguf" and path.is_file() else None


def base_config(spec: str) -> Any:
    """The transformers config of the base model ``spec``, without loading its weights."""
    from transformers import AutoConfig

    gguf_file = base_gguf(spec)
    try:
        if gguf_file is not None:
            return AutoConfig.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Could not read the config of base model '{spec}': {str(exc).splitlines()[0]}") from exc


def _spec(bake: BakedRun) -> str:
    spec = bake.metadata.get("base_model")
    if not spec:
        raise ConfigError(f"{bake.adapter} does not record its base model (base_model in promptbake.json).")
    return str(spec)


def _ollama_name(bake: BakedRun, name: str | None) -> str:
    if name:
        return name
    slug = re.sub(r"[^a-z0-9._-]+", "-", Path(bake.path).name.lower()).strip("-.") or "bake"
    return f"promptbake-{slug}"


def _write_modelfile(out: Path, base: str, adapter: str | None, tokenizer: Any) -> list[str]:
    text, notes = modelfile(base, adapter, tokenizer)
    write_text(out / "Modelfile", text)
    return notes


class GGUFLoraExporter(Exporter):
    """``promptbake export RUN --to gguf-lora``: the adapter as a llama.cpp LoRA GGUF, beside its base.

    Options: ``base`` (f16, q8_0, f32 or none: how ``base.gguf`` stores a base that is not a GGUF
    file already), ``name`` (the Ollama model name in the serve command), ``pre`` (llama.cpp's
    pre-tokenizer name, where it cannot be read off the tokenizer).
    """

    name = "gguf-lora"

    def __init__(self, base: str = "f16", name: str | None = None, pre: str | None = None):
        super().__init__(base=base, name=name, pre=pre)
        if base not in BASE_TYPES:
            raise ConfigError(f"Option base must be one of {', '.join(BASE_TYPES)}, got {base!r}.")
        self.base, self.model_name, self.pre = base, name, pre

    def check(self, config: BakeConfig) -> list[str]:
        _check_student(config, self.name)
        return []

    def export(self, bake: BakedRun, out: Path) -> ExportResult:
        adapter = Path(bake.adapter)
        lora = adapter_config(adapter)
        check_config(lora, adapter)
        spec = _spec(bake)
        shipped = base_gguf(spec)
        notes: list[str] = []
        measured: dict[str, Any] = {}
        files = ["adapter.gguf"]
        title = f"{Path(bake.path).name} (promptbake LoRA)"
        if shipped is not None:
            from .gguf_model import gguf_shapes

            lay = layout(base_config(spec), spec)
            pairs = lora_pairs(adapter, lora, lay, spec, base_shapes=gguf_shapes(shipped))
            write_lora(out / "adapter.gguf", lay, pairs, float(lora.get("lora_alpha", lora.get("r", 8))), title)
            base_path: str | None = str(shipped)
            measured.update(base_gguf=base_path, base_gguf_sha256=file_sha256(shipped))
            notes.append(f"The base is the GGUF file {shipped} (sha256 {measured['base_gguf_sha256'][:16]}...), "
                         f"the very weights the bake was trained on; it is referenced, not copied, so keep it there.")
            tokenizer = models.load_tokenizer(spec)
        else:
            tokenizer = None
            if self.base == "none":
                lay = layout(base_config(spec), spec)
                pairs = lora_pairs(adapter, lora, lay, spec)
                base_path = None
                notes.append(f"No base GGUF was written (base=none): convert '{spec}' with llama.cpp's "
                             f"convert_hf_to_gguf.py and pass it where the serve commands say BASE.gguf.")
            else:
                loaded = models.is_loaded(spec, "float32", "cpu")
                handle = models.load(spec, dtype="float32", device="cpu", progress=False)
                tokenizer = handle.tokenizer
                lay = layout(handle.model.config, spec)
                shapes = {lay.tensor_name(k): tuple(v.shape) for k, v in handle.model.state_dict().items()}
                pairs = lora_pairs(adapter, lora, lay, spec, base_shapes=shapes)
                tensors = model_tensors(handle.model, lay, self.base, spec)
                write_model(out / "base.gguf", lay, tensors, self.base, name=f"{spec} ({self.base})",
                            tokenizer=tokenizer, spec=spec, pre=self.pre)
                if not loaded:
                    models.release(handle)  # loaded for this export only
                base_path = str(out / "base.gguf")
                files.append("base.gguf")
                notes.append(f"base.gguf is the base model '{spec}' stored as {self.base}; the adapter is applied "
                             f"on top of it unrounded.")
            write_lora(out / "adapter.gguf", lay, pairs, float(lora.get("lora_alpha", lora.get("r", 8))), title)
        ranks = sorted({int(p.a.shape[0]) for p in pairs})
        measured.update(lora_pairs=len(pairs), lora_ranks=ranks, lora_alpha=lora.get("lora_alpha"),
                        architecture=lay.arch_name, base_type=None if shipped is not None else self.base)
        notes.insert(0, f"adapter.gguf holds {len(pairs)} LoRA pairs (rank {', '.join(map(str, ranks))}, float32) "
                        f"for the {lay.arch_name} base '{spec}'.")
        model = base_path or "BASE.gguf"
        serve = [f"python -m llama_cpp.server --model {model} --lora_path {out / 'adapter.gguf'}",
                 f"llama-server -m {model} --lora {out / 'adapter.gguf'}"]
        if base_path is not None:
            from_line = base_path if shipped is not None else "./base.gguf"
            notes += _write_modelfile(out, from_line, "./adapter.gguf", tokenizer)
            files.append("Modelfile")
            serve.append(f"ollama create {_ollama_name(bake, self.model_name)} -f {out / 'Modelfile'}")
        return ExportResult(format=self.name, path=out, files=files, serve=serve, notes=notes, measured=measured)


class GGUFExporter(Exporter):
    """``promptbake export RUN --to gguf``: the adapter merged into its base, one GGUF file.

    Options: ``quant`` (f16, q8_0 or f32 are written; q4_0, q4_1, q5_0, q5_1 are measured and
    refused), ``force`` (write a type that erases the bake anyway, with a warning), ``name`` (the
    Ollama model name), ``pre`` (llama.cpp's pre-tokenizer name), ``device`` (where the measurement runs).
    """

    name = "gguf"

    def __init__(self, quant: str = "f16", force: Any = False, name: str | None = None, pre: str | None = None,
                 device: str = "cpu"):
        super().__init__(quant=quant, force=force, name=name, pre=pre, device=device)
        quant_type(quant)
        self.quant, self.force, self.model_name, self.pre, self.device = quant, _flag(force, "force"), name, pre, device

    def check(self, config: BakeConfig) -> list[str]:
        _check_student(config, self.name)
        if self.quant not in WRITTEN:
            raise ConfigError(f"Export 'gguf' writes {', '.join(WRITTEN)}; {self.quant} is only measured "
                              f"(promptbake export RUN --to gguf --option quant={self.quant} says whether it keeps the "
                              f"bake), then made from the f16 file with llama.cpp's llama-quantize.")
        return []

    def export(self, bake: BakedRun, out: Path) -> ExportResult:
        from peft import PeftModel

        from .gguf_measure import measure
        from .gguf_vocab import byte_level_json, pre_tokenizer
        from .merge import private_base

        spec = _spec(bake)
        shipped = base_gguf(spec)
        if self.quant not in WRITTEN and not bake.heldout:
            raise ConfigError(f"Export 'gguf' does not write {self.quant}, and this bake has no held-out "
                              f"trajectories to measure what it would cost; use quant=f16.")
        if self.quant == "q8_0" and not bake.heldout and not self.force:
            raise ConfigError("This bake has no held-out trajectories to measure whether q8_0 erases it; use "
                              "quant=f16, or force=true to write q8_0 unmeasured.")
        base, tokenizer = private_base(spec, "float32", self.device)
        lay = layout(base.config, spec)
        if shipped is None and self.pre is None:
            pre_tokenizer(byte_level_json(tokenizer, spec), spec)  # refuse an unwritable tokenizer before the work
        with models.quiet_peft():
            peft_model = PeftModel.from_pretrained(base, str(bake.adapter))
        tensors: list[Any] = []

        def store(model: Any) -> None:
            tensors[:] = model_tensors(model, lay, self.quant, spec)
            dequantize_into(model, tensors)

        notes: list[str] = []
        measured: dict[str, Any] = {"quant": self.quant, "architecture": lay.arch_name}
        if self.quant == "f32" or not bake.heldout:
            with models.quiet_peft():
                merged = peft_model.merge_and_unload()
            tensors = model_tensors(merged, lay, self.quant, spec)
            notes.append("f32 stores the merged weights exactly." if self.quant == "f32" else
                         f"Not measured: the bake has no held-out trajectories to compare {self.quant} with.")
        else:
            merged, erasure = measure(peft_model, tokenizer, bake.heldout, store, self.device)
            measured.update(erasure.measured(self.quant))
            said = erasure.sentence(self.quant)
            if self.quant not in WRITTEN:
                then = ("more than half: it would erase the bake" if erasure.erases else
                        f"so it would keep the bake: make {self.quant} from the f16 file with llama.cpp's llama-quantize")
                raise ConfigError(f"{said}, {then}; export 'gguf' writes only {', '.join(WRITTEN)}.")
            if erasure.erases and not self.force:
                raise ConfigError(f"{said}: more than half, so {self.quant} would erase the bake and is not "
                                  f"written; use quant=f16 (or f32), or force=true to write it anyway.")
            notes.append(f"Warning: {said}: more than half, so {self.quant} erases much of the bake; written "
                         f"because force=true." if erasure.erases else f"{said}: the bake survives {self.quant}.")
        write_model(out / "model.gguf", lay, tensors, self.quant, name=f"{Path(bake.path).name} (promptbake, merged)",
                    tokenizer=tokenizer, spec=spec, tokenizer_gguf=str(shipped) if shipped else None, pre=self.pre)
        del merged, peft_model, base
        model_path = out / "model.gguf"
        notes.insert(0, f"model.gguf is '{spec}' with the bake merged into its weights, stored as {self.quant} "
                        f"({QUANTS[self.quant][0].name} matrices, float32 norms); it needs no adapter and no prompt.")
        notes += _write_modelfile(out, "./model.gguf", None, tokenizer)
        serve = [f"python -m llama_cpp.server --model {model_path}", f"llama-server -m {model_path}",
                 f"ollama create {_ollama_name(bake, self.model_name)} -f {out / 'Modelfile'}"]
        return ExportResult(format=self.name, path=out, files=["model.gguf", "Modelfile"], serve=serve, notes=notes,
                            measured=measured)
