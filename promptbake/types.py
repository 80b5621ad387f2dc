"""Data that flows between stages: queries, trajectories and teacher targets.

Token ids are plain Python lists so this module stays torch-free; target tensors
are torch tensors created by the backends that produce them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Query:
    """One user conversation to answer, without any system message.

    ``messages`` ends with a user turn; earlier turns (if any) are context.
    """

    id: str
    messages: tuple[dict[str, str], ...]
    category: str | None = None

    @property
    def text(self) -> str:
        """The last user message."""
        return self.messages[-1]["content"]


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
        return f"{self.query_id}#{self.sample}"

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id, "sample": self.sample,
            "prompted_ids": self.prompted_ids, "unprompted_ids": self.unprompted_ids,
            "response_len": self.response_len, "finished": self.finished, "text": self.text,
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
