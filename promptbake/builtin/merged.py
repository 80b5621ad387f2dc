"""The ``merged`` export: the adapter merged into its base model, a plain transformers model folder
(safetensors weights, config, tokenizer, generation config) that any transformers from 4.5x on,
vLLM and llama.cpp's ``convert_hf_to_gguf.py`` load as they load the base model."""

from __future__ import annotations

from pathlib import Path

from ..core import registry
from ..core.config import BakeConfig
from ..core.errors import CapabilityError
from ..core.interfaces import Exporter, ExportResult
from ..core.types import BakedRun
from .merge import merge_adapter


class MergedExporter(Exporter):
    """``promptbake export RUN --to merged`` (option ``dtype``: auto, float32, bfloat16, float16)."""

    name = "merged"

    def __init__(self, dtype: str = "auto"):
        super().__init__(dtype=dtype)
        self.dtype = dtype

    def check(self, config: BakeConfig) -> list[str]:
        student = registry.create("student", config.student, **config.student_options)
        if not student.capabilities.merges:
            raise CapabilityError(f"Export 'merged' merges the adapter into the model's weights, and student "
                                  f"'{student.name}''s adapter cannot be merged; use the peft student.")
        return []

    def export(self, bake: BakedRun, out: Path) -> ExportResult:
        merge_adapter(bake.adapter, out, model=bake.metadata.get("base_model"), dtype=self.dtype, overwrite=True)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        return ExportResult(format=self.name, path=out, files=files, serve=[
            (f"python -c \"from transformers import pipeline; print(pipeline('text-generation', '{out}')"
            f"([{{'role': 'user', 'content': 'Hello'}}])[0]['generated_text'])\""),
            f"vllm serve {out}",
            f"python llama.cpp/convert_hf_to_gguf.py {out} --outtype f16  # or: promptbake export --to gguf",
        ], notes=[(f"A full copy of the model with the bake in its weights ({len(files)} files); it needs no "
                  f"adapter and no prompt.")])
