"""Data that flows between stages: queries, trajectories and teacher targets.

Token ids are plain Python lists so this module stays torch-free; target tensors
are torch tensors created by the backends that produce them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Query:
    """One conversation to answer, without any system message.

    ``messages`` ends with a user (or tool) turn. A conversation of several user turns is
    answered turn by turn by the prompted teacher, each answer becoming the history of the next
    turn; assistant turns given in the data (tool calls among them) are kept as they are. Tool
    results (``role: tool``) are context, never trained. ``tools`` are the tool schemas the chat
    template renders (``apply_chat_template(tools=...)``).
    """

    id: str
    messages: tuple[dict[str, Any], ...]
    category: str | None = None
    tools: tuple[dict[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The last user message."""
        return next((str(m.get("content") or "") for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def user_turns(self) -> int:
        return sum(m["role"] == "user" for m in self.messages)


@dataclass(frozen=True)
class Prefix:
    """A prompt to answer, in both forms a teacher may need.

    ``ids`` is the conversation rendered with the student's chat template up to
    and including the assistant generation prompt (local engines sample from
    it); ``messages`` is the same conversation as chat messages, system prompt
    first (hosted chat APIs take these).
    """

    ids: list[int]
    messages: tuple[dict[str, str], ...]


@dataclass
class Trajectory:
    """One response y to a query, rendered twice with the model's chat template.

    Both id lists end with the same ``response_len`` tokens: the response, with
    its end-of-turn token when the response finished. Everything before that is
    the rendered prefix (system u + conversation on the prompted side;
    conversation only on the unprompted side).
    """

    query_id: str
    sample: int
    prompted_ids: list[int]
    unprompted_ids: list[int]
    response_len: int
    finished: bool = True
    text: str = ""
    turn: int = 1  # which assistant turn of its conversation this is (1: the first)

    @property
    def response_ids(self) -> list[int]:
        return self.prompted_ids[len(self.prompted_ids) - self.response_len:]

    @property
    def prompted_prefix_len(self) -> int:
        return len(self.prompted_ids) - self.response_len

    @property
    def unprompted_prefix_len(self) -> int:
        return len(self.unprompted_ids) - self.response_len

    @property
    def key(self) -> str:
        return f"{self.query_id}#{self.sample}" + (f"@{self.turn}" if self.turn != 1 else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id, "sample": self.sample,
            "prompted_ids": self.prompted_ids, "unprompted_ids": self.unprompted_ids,
            "response_len": self.response_len, "finished": self.finished, "text": self.text,
            **({"turn": self.turn} if self.turn != 1 else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trajectory:
        return cls(**data)


@dataclass
class Targets:
    """What the teacher says at each response position of one trajectory.

    Row t describes the distribution over the response's token t, given
    everything before it on the prompted side. Sparse targets hold the top-K
    ids and log-probabilities plus the log of the remaining (tail) mass; full
    targets hold log-probabilities over the whole vocabulary, or the teacher's
    final hidden states from which a student that shares the teacher's output
    layer makes them (``hidden``: a few KB per row instead of the vocabulary's
    size).
    """

    sampled_ids: torch.Tensor  # [R] int64: the response tokens themselves
    topk_ids: torch.Tensor | None = None  # [R, K] int32
    topk_logprobs: torch.Tensor | None = None  # [R, K] float32
    tail_logprob: torch.Tensor | None = None  # [R] float32: log(1 - sum p_k), -inf if none
    full_logprobs: torch.Tensor | None = None  # [R, V] float16 or float32
    # [R] float32, 1 = train on this position, 0 = excluded (a hosted teacher's token
    # that could not be mapped to the student's vocabulary). None: every position.
    weight: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # [R, H] float16: the teacher's final hidden states

    def __len__(self) -> int:
        return int(self.sampled_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Positions that count towards the loss."""
        return len(self) if self.weight is None else int((self.weight > 0).sum())

    def head(self, n: int) -> Targets:
        """The first ``n`` positions (a trajectory cut its sample short)."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:n]

        return Targets(self.sampled_ids[:n], cut(self.topk_ids), cut(self.topk_logprobs),
                       cut(self.tail_logprob), cut(self.full_logprobs), cut(self.weight), cut(self.hidden))


@dataclass
class Sample:
    """One generated response: token ids in the student's vocabulary.

    ``targets`` holds the teacher's distributions at each of these positions
    when they come with the sample (hosted APIs), else None.
    """

    token_ids: list[int]
    finished: bool
    extra: dict[str, Any] = field(default_factory=dict)
    targets: Targets | None = None


@dataclass(frozen=True)
class BakedRun:
    """A finished bake as an exporter reads it (``promptbake export`` builds it from a run directory)."""

    path: Path  # the run directory
    adapter: Path  # its adapter folder: the student's saved weights and promptbake.json
    metadata: dict[str, Any]  # promptbake.json: base_model, prompt_sha256, teacher, student, loss, ...
    settings: dict[str, Any]  # config.json: the settings it was baked with (the prompt as its sha256)
    heldout: list[Trajectory] = field(default_factory=list)  # held-out trajectories, for measurements


@dataclass(frozen=True)
class PromptMixture:
    """Several system prompts baked in one bake (the paper's mixture): each query is answered
    under prompt ``i`` with probability ``weights[i] / sum(weights)``, drawn once per query from
    the bake's seed, so the baked model behaves like the prompted model under a randomly drawn
    prompt of the mixture. Give it as a bake's ``prompt``.
    """

    prompts: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        import math

        from .errors import ConfigError

        prompts, weights = self.prompts, self.weights
        if isinstance(prompts, str) or len(prompts) < 2:
            raise ConfigError("A mixture needs at least two prompts; bake a single prompt with promptbake bake.")
        if isinstance(weights, str) or len(weights) != len(prompts):
            raise ConfigError(f"A mixture needs one weight per prompt: got {len(prompts)} prompts and "
                              f"{len(weights)} weights.")
        clean = []
        for w in weights:
            try:
                value = float(w)
            except (TypeError, ValueError):
                raise ConfigError(f"Mixture weights must be numbers, got {w!r}.") from None
            if isinstance(w, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"Mixture weights must be positive numbers, got {w!r}.")
            clean.append(value)
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ConfigError("Every prompt of a mixture must be non-empty text.")
        object.__setattr__(self, "prompts", tuple(prompts))
        object.__setattr__(self, "weights", tuple(clean))

    @property
    def text(self) -> str:
        """The canonical text that names the mixture (its sha256 is the bake's prompt sha256)."""
        import json

        return json.dumps({"mixture": [{"prompt": p, "weight": w} for p, w in zip(self.prompts, self.weights)]},
                          ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> PromptMixture:
        """The mixture that :attr:`text` names."""
        import json

        from .errors import ConfigError

        try:
            items = json.loads(text)["mixture"]
            return cls(tuple(item["prompt"] for item in items), tuple(item["weight"] for item in items))
        except (ValueError, TypeError, KeyError):
            raise ConfigError("The prompt of a mixture bake must be the text PromptMixture.text gives; use "
                              "promptbake.PromptMixture.") from None

    def assign(self, queries: Sequence[Query], seed: int) -> list[int]:
        """The prompt index of each query: ``random.Random(seed)`` draws once per query, in list order."""
        import random

        rng = random.Random(seed)
        indices = range(len(self.weights))
        return [rng.choices(indices, weights=self.weights)[0] for _ in queries]

    def describe(self, include_prompt: bool = False) -> list[dict[str, Any]]:
        """Each prompt's weight, probability and sha256 (and text, with ``include_prompt``)."""
        total = sum(self.weights)
        return [{"weight": w, "probability": w / total, "prompt_sha256": sha256_text(p),
                 **({"prompt": p} if include_prompt else {})} for p, w in zip(self.prompts, self.weights)]


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_sha256(prompt: str | PromptMixture) -> str:
    """The sha256 that stands for a bake's prompt (a mixture's: of its canonical text)."""
    return sha256_text(prompt.text if isinstance(prompt, PromptMixture) else prompt)
