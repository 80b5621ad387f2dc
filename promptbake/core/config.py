"""Bake settings: one dataclass, loadable from TOML, validated with one-sentence errors."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, suggest
from .types import PromptMixture

# LoRA settings belong to the student (its options); at the top level they are accepted as
# aliases (0.1's TOML files and commands), moved into student_options.
STUDENT_ALIASES = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")


@dataclass
class BakeConfig:
    """Everything a bake needs. Backend-specific settings go in ``*_options``."""

    prompt: str | PromptMixture = ""  # a PromptMixture bakes several prompts in one bake
    model: str = "smollm2-135m"
    teacher: str = "hf"
    student: str = "peft"
    # None: full_kl when the teacher's weights are the student's and it gives hidden states
    # (hf teacher, peft student, one model: exact and about as small as top-K), else topk_kl.
    loss: str | None = None
    teacher_model: str | None = None  # defaults to ``model``
    teacher_options: dict[str, Any] = field(default_factory=dict)
    student_options: dict[str, Any] = field(default_factory=dict)
    loss_options: dict[str, Any] = field(default_factory=dict)
    # data
    queries: str | None = None  # None: the built-in train split
    heldout: str | None = None  # None: the built-in held-out split
    max_queries: int | None = None
    max_heldout: int | None = None
    # conversations: grow single queries to this many user turns (follow-ups: "builtin" or "generate")
    turns: int = 1
    followups: str = "builtin"
    train_turns: str = "all"  # in conversations, train every assistant turn ("all") or each one's "last"
    # sampling
    samples_per_query: int = 2
    max_new_tokens: int = 48
    min_new_tokens: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # None: the teacher's default (256 for hf; 20 for hosted APIs, vLLM and Tinker)
    # Apply the student model's generation_config sampling extras (repetition penalty, top-k,
    # min-p...) on every side alike; off: every side samples the plain distribution (decoding.py).
    generation_config: bool = False
    max_length: int | None = None  # tokens per rendering; None: the model's context, at most 1024
    # Extra arguments of the chat template, as deployed, e.g. {"enable_thinking": true} for Qwen3
    # (whose thinking is off by default here), {"date_string": "..."} for Llama-3.1.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # training
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Aliases of the student options of the same names (see STUDENT_ALIASES): None once moved there.
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    target_modules: str | list[str] | None = None
    seed: int = 0
    # runtime
    dtype: str = "auto"
    device: str = "auto"
    score_batch_size: int = 8
    generate_batch_size: int = 64  # rows decoded together (decoding a few rows at a time is memory-bound)
    # Local models decode (samples, answers) with their float32 linear layers' products in
    # bfloat16: faster where bfloat16 products are (AVX-512 BF16/AMX CPUs); scoring, training and
    # every KL stay as loaded (low_precision.py).
    generate_bf16: bool = False
    out: str | None = None
    target_cache: str | None = None  # a folder shared by runs: same key, no teacher calls
    on_policy: float = 0.0  # fraction of each epoch's data sampled by the student itself (see onpolicy.py)
    checkpoint_every: int = 50  # optimizer steps between training checkpoints (and one at the end)
    overwrite: bool = False
    resume: bool = False  # continue the bake in ``out`` from what it saved
    include_prompt: bool = False  # store the prompt text in the run and adapter metadata
    evaluate: bool = True
    progress: bool = True
    # evaluation of behaviour (see fidelity.py)
    probes: list[str] = field(default_factory=list)  # probe specs, e.g. ["language=fr", "max_length=40"]
    strengths: list[float] = field(default_factory=list)  # adapter scales at which to score the probes
    reprompt: bool = False  # also answer with the baked model plus the prompt (re-prompting)
    probe_samples: int = 2  # sampled answers per held-out query and side for the sampled probe scores
    save_epochs: bool = True  # keep each epoch's adapter in RUN/epochs/ (half-baking by early stopping)
    # export at the end of the bake (RUN/export/FORMAT), checked before any work: e.g. ["gguf-lora", "vllm"]
    export: list[str] = field(default_factory=list)
    export_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per format, e.g. {vllm = {max_lora_rank = 32}}

    _POSITIVE = ("samples_per_query", "max_new_tokens", "epochs", "turns",
                 "batch_size", "grad_accum", "score_batch_size",
                 "generate_batch_size", "checkpoint_every")

    def __post_init__(self) -> None:
        moved = {k: getattr(self, k) for k in STUDENT_ALIASES if getattr(self, k) is not None}
        if isinstance(self.student_options, dict):
            for key, value in moved.items():
                if key in self.student_options and self.student_options[key] != value:
                    raise ConfigError(f"{key} is set twice, to {value!r} and student_options.{key}="
                                      f"{self.student_options[key]!r}; give it once (it is a student option).")
            if moved:
                self.student_options = {**moved, **self.student_options}
        for key in moved:
            setattr(self, key, None)
        self.validate()

    def checkpoint_due(self, step: int, total: int) -> bool:
        """Whether a checkpoint is written after optimizer step ``step`` of ``total``."""
        return step % self.checkpoint_every == 0 or step == total

    def length_limit(self, context: int | None) -> int:
        """Tokens allowed per rendering for a model with ``context`` positions (None: unknown)."""
        if self.max_length is None:
            return min(1024, context) if context else 1024
        if context and self.max_length > context:
            raise ConfigError(f"max_length={self.max_length} is longer than the model's context of {context} "
                              f"tokens; set max_length to {context} or less.")
        return self.max_length

    def validate(self) -> None:
        if not isinstance(self.prompt, str | PromptMixture):
            raise ConfigError(f"prompt must be text or a PromptMixture, got {type(self.prompt).__name__}.")
        for name in self._POSITIVE:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("max_queries", "max_heldout", "max_length", "top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}).")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ConfigError("max_grad_norm and weight_decay must be >= 0.")
        if not isinstance(self.probes, list) or not all(isinstance(p, str) and p for p in self.probes):
            raise ConfigError(f"probes must be a list of probe specs such as ['language=fr'], got {self.probes!r}.")
        if not isinstance(self.strengths, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in self.strengths):
            raise ConfigError(f"strengths must be a list of numbers between 0 and 1, got {self.strengths!r}.")
        if isinstance(self.probe_samples, bool) or not isinstance(self.probe_samples, int) \
                or self.probe_samples < 0:
            raise ConfigError(f"probe_samples must be a whole number >= 0, got {self.probe_samples!r}.")
        if isinstance(self.on_policy, bool) or not isinstance(self.on_policy, int | float) \
                or not 0 <= self.on_policy <= 1:
            raise ConfigError(f"on_policy must be a fraction between 0 and 1, got {self.on_policy!r}.")
        if not isinstance(self.export, list) or not all(isinstance(f, str) and f for f in self.export):
            raise ConfigError(f"export must be a list of formats such as ['gguf-lora'], got {self.export!r}.")
        if not isinstance(self.export_options, dict) or not all(isinstance(v, dict) for v in self.export_options.values()):
            raise ConfigError(f"export_options must be a table per format such as {{vllm = {{max_lora_rank = 32}}}}, "
                              f"got {self.export_options!r}.")
        if self.train_turns not in ("all", "last"):
            raise ConfigError(f"train_turns must be all or last, got {self.train_turns!r}.")
        if self.followups not in ("builtin", "generate"):
            raise ConfigError(f"followups must be builtin (a fixed set of follow-up messages) or generate (written by "
                              f"the teacher), got {self.followups!r}.")
        if not isinstance(self.generation_config, bool):
            raise ConfigError(f"generation_config must be true or false, got {self.generation_config!r}.")
        if not isinstance(self.generate_bf16, bool):
            raise ConfigError(f"generate_bf16 must be true or false, got {self.generate_bf16!r}.")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues a run directory and --overwrite replaces it; pass one of them.")
        for name in ("teacher_options", "student_options", "loss_options", "chat_template_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a table of settings such as {{tail = false}} "
                                  f"(or {name}.KEY=VALUE with --set), got {getattr(self, name)!r}.")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BakeConfig:
        """Build from a mapping, rejecting unknown keys by name."""
        valid = cls.keys()
        for key in data:
            if key not in valid:
                raise ConfigError(
                    f"Unknown setting '{key}'.{suggest(key, valid)} Valid settings: {', '.join(valid)}."
                )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"Invalid settings: {exc}.") from None

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> BakeConfig:
        """Load a TOML file (flat keys; [teacher_options] etc. as tables), then apply overrides."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"Config file {path} is not valid UTF-8.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}  # --set teacher_options.x=... adds to the file's table
            else:
                data[key] = value
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The settings (the student-option aliases left out: they live in student_options)."""
        data = dataclasses.asdict(self)
        data["prompt"] = self.prompt  # a PromptMixture stays one
        for key in STUDENT_ALIASES:
            del data[key]
        return data
