"""The three plugin interfaces: Teacher, Student and Loss, with their capabilities.

Backends declare what they can do as plain data; the Baker checks a
teacher/student/loss combination against these before any work starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from .config import BakeConfig
    from .types import BakedRun, Prefix, Sample, Targets, Trajectory

TargetKind = Literal["tokens", "topk", "full"]
Side = Literal["prompted", "unprompted"]


@dataclass(frozen=True)
class TeacherCapabilities:
    """What a teacher can provide."""

    can_generate: bool = True
    can_score: bool = True  # teacher-forced scoring of given tokens
    max_top_k: int | None = None  # None: any K
    # K when the bake leaves top_k unset. Hosted APIs and vLLM servers cap top log-probs
    # at 20 by default; a local model gives any K, and a wider K is a closer KL (docs/performance.md).
    default_top_k: int = 20
    full_logits: bool = False
    token_ids: bool = True  # returns ids in the student's vocabulary (not strings)
    sample_logprobs: bool = False  # top-K log-probs arrive with its own samples (hosted APIs)
    # score_hidden gives final hidden states at response rows, which a student sharing the
    # teacher's output layer turns into full log-probs (full_kl at 2H bytes a token, not 2V).
    hidden_states: bool = False
    # generation_config extras it can apply to its samples (decoding.EXTRAS names them): a bake
    # with generation_config=true whose student model has others is refused before any work.
    sampling_extras: frozenset[str] = frozenset()


@dataclass(frozen=True)
class StudentCapabilities:
    """What a student can train with."""

    losses: frozenset[str] | None = None  # None: any Loss object (it runs torch losses itself)
    can_score: bool = True  # can report its own distribution, for evaluation
    checkpoints: bool = False  # implements save_state/load_state, so a resumed bake continues training
    owns_loop: bool = False  # trains in fit() with its own loop (a distributed trainer), not step by step
    can_generate: bool = False  # samples from its own weights (behaviour evaluation, on-policy baking)
    adapters: bool = False  # loads a saved adapter (load_adapter) and scales it (generate's strength)
    # Trains full_kl from the teacher's hidden states through its own frozen output layer
    # when it holds the teacher's weights (reads_hidden_targets says when).
    hidden_targets: bool = False
    merges: bool = True  # its adapter merges into the model's weights (LoRA); a soft prefix does not


@dataclass
class SamplingConfig:
    """How trajectories are sampled."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 1
    seed: int = 0
    stop_ids: list[int] = field(default_factory=list)  # end-of-turn ids; kept in the output
    # Top-K log-probs wanted with each sample (teachers with sample_logprobs, for a
    # KL loss); None: text and tokens only.
    logprobs: int | None = None
    # Sampling settings of the model's generation_config applied on every side alike, with
    # BakeConfig.generation_config (see decoding.py: repetition_penalty, no_repeat_ngram_size,
    # top_k, min_p, typical_p). Empty: the plain distribution at temperature and top_p.
    extras: dict[str, Any] = field(default_factory=dict)


class Teacher(ABC):
    """Produces trajectories (generate) and per-token targets (score)."""

    name: ClassVar[str] = "teacher"
    capabilities: TeacherCapabilities = TeacherCapabilities()

    def check(self, config: BakeConfig) -> None:
        """Cheap checks before anything loads (keys, options); raise a PromptbakeError."""

    def setup(self, config: BakeConfig) -> None:
        """Load weights or open clients. Called once, after capability checks."""

    @property
    def tokenizer(self) -> Any | None:
        """The tokenizer the teacher's ids refer to, or None when it returns text."""
        return None

    @property
    def vocab_size(self) -> int | None:
        """How many logits its distributions cover (after setup), or None where it does not say.
        Rows of a model's output layer past its tokenizer's vocabulary are padding, not counted."""
        return None

    def use_student_tokenizer(self, tokenizer: Any) -> None:
        """Called after setup with the tokenizer trajectories are rendered with.

        Teachers that return text (hosted APIs) map their tokens to its ids.
        """

    @abstractmethod
    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        """Sample ``sampling.n`` responses for each prompt.

        Token ids are in the student's vocabulary. A teacher with
        ``sample_logprobs`` puts the :class:`Targets` of each sample's positions
        in ``Sample.targets``.
        """

    @abstractmethod
    def score(
        self, trajectories: Sequence[Trajectory], *, top_k: int | None, full: bool,
        side: Side = "prompted",
    ) -> list[Targets]:
        """Teacher-forced distributions at every response position of each trajectory."""

    def score_hidden(self, trajectories: Sequence[Trajectory]) -> list[Targets]:
        """Full targets as final hidden states (``Targets.hidden``) on the prompted side:
        :meth:`output_layer` turns them into logits. For ``capabilities.hidden_states``."""
        raise NotImplementedError(f"teacher '{self.name}' gives no hidden states")

    def output_layer(self) -> Any | None:
        """The module that turns :meth:`score_hidden`'s states into logits (None: none)."""
        return None

    def close(self) -> None:
        """Release resources."""

    def __str__(self) -> str:
        return f"Teacher: {self.name}"


class Student(ABC):
    """Owns the trainable weights: steps on batches of (trajectory, targets) and saves."""

    name: ClassVar[str] = "student"
    capabilities: StudentCapabilities = StudentCapabilities()

    def check(self, config: BakeConfig) -> None:
        """Cheap checks before anything loads (keys, options); raise a PromptbakeError."""

    @abstractmethod
    def setup(self, config: BakeConfig, total_steps: int) -> None:
        """Load the model and build the optimizer for ``total_steps`` optimizer steps."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer whose chat template defines the renderings."""

    @property
    def context_length(self) -> int | None:
        """Positions the model can attend over (None: unknown); bounds the renderings."""
        return None

    @property
    def vocab_size(self) -> int | None:
        """How many logits its distributions cover (after setup), or None where it does not say:
        the tokenizer's vocabulary, not the output layer's padded rows."""
        return None

    @property
    def generation_config(self) -> Any | None:
        """The model's ``transformers.GenerationConfig`` (after setup), or None where there is none:
        its end ids stop every side's sampling, and with the setting ``generation_config`` its
        sampling extras apply on every side (see decoding.py)."""
        return None

    @abstractmethod
    def step(self, micro_batches: Sequence[Sequence[tuple[Trajectory, Targets]]], loss: Loss) -> dict[str, float]:
        """One optimizer step over gradient-accumulation micro-batches.

        The loss is normalised by the response tokens of the whole step, not
        per micro-batch.
        """

    @abstractmethod
    def save(self, path: str, metadata: dict[str, Any]) -> None:
        """Write the trained weights (and ``metadata``) to directory ``path``."""

    def score(self, trajectories: Sequence[Trajectory], *, full: bool, top_k: int | None = None,
              strength: float = 1.0) -> list[Targets]:
        """The student's own distribution at response positions of the unprompted side.

        ``strength`` 0 is the base model (the adapter switched off): the evaluation's
        baseline, which must be the student's model, not the teacher's, when the two differ.
        """
        raise NotImplementedError(f"student '{self.name}' cannot score")

    def reads_hidden_targets(self, head: Any) -> bool:
        """Whether :meth:`step` can train on full targets given as hidden states through the
        teacher's output layer ``head``: only when ``head`` is this student's own output
        layer and it is frozen, so the teacher's logits are exactly ``head(hidden)``."""
        return False

    def fit(self, trajectories: Sequence[Trajectory], targets: Sequence[Targets],
            steps: Sequence[Sequence[Sequence[int]]], loss: Loss, log: Any, *, start: int = 0,
            checkpoint: Any = None) -> dict[str, Any]:
        """Train over ``steps`` (each a list of micro-batches of indices into ``trajectories``),
        calling ``log(record)`` once per optimizer step; for students with ``capabilities.owns_loop``.

        Students that also set ``capabilities.checkpoints`` get two more arguments: ``start``,
        the steps already taken (their state was handed to :meth:`load_state` before this call;
        train ``steps[start:]`` and number records from ``start + 1``), and ``checkpoint(step)``,
        to call on rank 0 after every optimizer step (it saves through :meth:`save_state`
        when one is due). Others are called with neither.

        Returns ``{"steps", "first_loss", "last_loss"}``.
        """
        raise NotImplementedError(f"student '{self.name}' trains step by step")

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig, *,
                 strength: float = 1.0) -> list[list[Sample]]:
        """``sampling.n`` samples per prefix from the student's current weights (temperature 0: greedy).

        ``strength`` scales the trained adapter: 0 is the base model, 1 the bake as trained.
        Students that set ``capabilities.can_generate`` implement it.
        """
        raise NotImplementedError(f"student '{self.name}' cannot generate")

    def load_adapter(self, path: str) -> None:
        """Replace the adapter's weights with those saved in directory ``path`` (after :meth:`setup`
        with the settings it was baked with). Students that set ``capabilities.adapters`` implement it."""
        raise NotImplementedError(f"student '{self.name}' cannot load a saved adapter")

    def save_state(self, path: str) -> None:
        """Write everything needed to continue training (weights, optimizer, schedule, RNG) into
        directory ``path``, without pickle. Students that set ``capabilities.checkpoints`` implement it."""
        raise NotImplementedError(f"student '{self.name}' cannot checkpoint")

    def load_state(self, path: str) -> None:
        """Restore what :meth:`save_state` wrote, after :meth:`setup` with the same settings."""
        raise NotImplementedError(f"student '{self.name}' cannot checkpoint")

    def close(self) -> None:
        """Release resources."""

    def __str__(self) -> str:
        return f"Student: {self.name}"


class Loss(ABC):
    """A per-token distillation loss between teacher targets and student logits."""

    name: ClassVar[str] = "loss"
    needs: ClassVar[TargetKind] = "topk"
    # ce can train across tokenizers (as text); KL losses need the student's vocabulary.
    same_tokenizer: ClassVar[bool] = True

    @abstractmethod
    def per_token(self, logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
        """Loss per response token, shape [N], from student logits [N, V]."""

    def __call__(self, logits: torch.Tensor, targets: BatchTargets, num_tokens: int) -> torch.Tensor:
        """Sum of per-token losses divided by ``num_tokens`` (the step's token count)."""
        return targets.weighted(self.per_token(logits, targets)).sum() / max(num_tokens, 1)

    def from_hidden(self, hidden: torch.Tensor, head: Any, targets: BatchTargets, num_tokens: int,
                    chunk_size: int = 256) -> torch.Tensor:
        """Like ``__call__`` from hidden states [N, H] and the output layer ``head``.

        Logits are made ``chunk_size`` rows at a time and each chunk's gradient
        (towards its hidden states and the head's trainable weights) is taken at
        once, then the chunk is dropped: no [N, V] tensor is ever alive, and the
        output layer is not run again in the backward pass. The returned value's
        backward hands those gradients on.
        """
        from .chunked import chunked_loss

        return chunked_loss(self, hidden, head, targets, num_tokens, chunk_size)

    def __str__(self) -> str:
        return f"Loss: {self.name}"


@dataclass
class BatchTargets:
    """Targets for N response tokens, flattened across a micro-batch."""

    sampled_ids: torch.Tensor  # [N]
    topk_ids: torch.Tensor | None = None  # [N, K]
    topk_logprobs: torch.Tensor | None = None  # [N, K]
    tail_logprob: torch.Tensor | None = None  # [N]
    full_logprobs: torch.Tensor | None = None  # [N, V]
    weight: torch.Tensor | None = None  # [N]: 0 marks an excluded position
    hidden: torch.Tensor | None = None  # [N, H]: the teacher's final hidden states (see Targets)

    def rows(self, index: slice) -> BatchTargets:
        """The targets of a range of rows."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return BatchTargets(self.sampled_ids[index], cut(self.topk_ids), cut(self.topk_logprobs),
                            cut(self.tail_logprob), cut(self.full_logprobs), cut(self.weight), cut(self.hidden))

    def weighted(self, per_token: torch.Tensor) -> torch.Tensor:
        """Per-token losses with excluded positions set to exactly 0 (not NaN * 0)."""
        if self.weight is None:
            return per_token
        import torch

        weight = self.weight.to(per_token.device)
        return torch.where(weight > 0, per_token * weight, torch.zeros_like(per_token))

    @classmethod
    def concat(cls, items: Sequence[Targets], device: Any = None) -> BatchTargets:
        """Stack per-trajectory targets row-wise (all must carry the same fields)."""
        import torch

        def cat(field: str, dtype: Any = None) -> torch.Tensor | None:
            parts = [getattr(t, field) for t in items]
            if all(p is None for p in parts):
                return None
            if field == "weight":  # a trajectory without weights trains on every position
                parts = [torch.ones(len(t)) if p is None else p for t, p in zip(items, parts)]
            elif any(p is None for p in parts):
                return None
            if field in ("topk_ids", "topk_logprobs"):
                parts = pad_topk(parts, field)
            out = torch.cat(parts, dim=0)
            return out.to(device=device, dtype=dtype) if (device or dtype) else out

        return cls(
            sampled_ids=cat("sampled_ids", torch.long),  # type: ignore[arg-type]
            topk_ids=cat("topk_ids", torch.long),
            topk_logprobs=cat("topk_logprobs", torch.float32),
            tail_logprob=cat("tail_logprob", torch.float32),
            full_logprobs=cat("full_logprobs"),  # float16 from the cache: full_kl widens a chunk at a time
            weight=cat("weight", torch.float32),
            hidden=cat("hidden"),
        )


def pad_topk(parts: list[torch.Tensor], field: str) -> list[torch.Tensor]:
    """Widen top-K rows to one K: extra ids repeat the row's first id, extra log-probs are -inf.

    Hosted teachers can return fewer than K usable entries; a repeated id with
    zero probability changes neither the KL nor the tail.
    """
    import torch

    width = max(p.shape[-1] for p in parts)
    out = []
    for p in parts:
        if p.shape[-1] < width:
            extra = width - p.shape[-1]
            fill = p[:, :1].expand(-1, extra) if field == "topk_ids" else torch.full((p.shape[0], extra), float("-inf"))
            p = torch.cat([p, fill.to(p.dtype)], dim=-1)
        out.append(p)
    return out


@dataclass
class ExportResult:
    """What an exporter wrote, and how to serve it."""

    format: str
    path: Path  # the folder (or file) written
    files: list[str] = field(default_factory=list)  # what it holds, relative to ``path``
    serve: list[str] = field(default_factory=list)  # commands that serve it, ready to paste
    notes: list[str] = field(default_factory=list)  # sentences: what was measured, what to watch for
    measured: dict[str, Any] = field(default_factory=dict)  # the figures the notes quote


class Exporter(ABC):
    """Writes a finished bake in a format a server loads (``promptbake export RUN --to NAME``).

    ``check`` runs when a bake that will be exported starts (``export`` setting), before any
    work: it raises a PromptbakeError (one sentence) for a bake the format could not serve and
    returns warnings for one it could serve only partly. ``export`` writes into ``out``, a new
    folder, whole or not at all (the caller writes it under a temporary name and renames it).
    """

    name: ClassVar[str] = "exporter"

    def __init__(self, **options: Any):
        """Options of the format (``--option KEY=VALUE`` on the command line)."""
        self.options = options

    def check(self, config: BakeConfig) -> list[str]:
        return []

    @abstractmethod
    def export(self, bake: BakedRun, out: Path) -> ExportResult:
        """Write ``bake`` into the folder ``out``; say what was written."""

    def __str__(self) -> str:
        return f"Exporter: {self.name}"
