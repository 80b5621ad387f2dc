"""Held-out evaluation: how close the baked model is to the prompted one.

On trajectories sampled from the prompted teacher for queries never used in
training, per response token: KL(prompted || baked), KL(prompted || base), the
fraction of that gap the bake closed, and top-1 agreement with the prompted model.

"Prompted" is the teacher's distribution: full where it gives one (hf), else its
top-K with the tail (scored, or the log-probs that came with a hosted teacher's
own samples). "Baked" and "base" are both the student: with its adapter and with
the adapter off. So a bake whose teacher is another model (a larger one of the
same family) measures the gap the student's own model had to close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...core.config import BakeConfig
from ...core.interfaces import BatchTargets, Student, Teacher
from ...core.progress import progress
from ...core.types import Targets, Trajectory


class Tally:
    """Running KL sum and top-1 agreement against reference (prompted) targets."""

    def __init__(self, full: bool):
        from ...core import (
            registry,  # the registered full_kl and topk_kl (with its tail)
        )

        self.kl_loss = registry.create("loss", "full_kl") if full else registry.create("loss", "topk_kl", tail=True)
        self.full = full
        self.kl = 0.0
        self.agree = 0
        self.tokens = 0
        # Per response position (0 = the first response token): KL sum and token count.
        self.position_kl: list[float] = []
        self.position_tokens: list[int] = []

    def add(self, prompted: BatchTargets, other_logprobs: Any, positions: Sequence[int] | None = None) -> None:
        """Add positions: ``other_logprobs`` [N, V] full log-probs of the model compared;
        ``positions`` [N], each row's index within its response, for the per-position curve."""
        if self.full:
            best = prompted.full_logprobs.argmax(-1)  # type: ignore[union-attr]
        else:
            best = prompted.topk_ids[:, 0]  # type: ignore[index]
        keep = prompted.weight > 0 if prompted.weight is not None else None
        # log_softmax(logprobs) == logprobs, so the loss takes them as logits.
        per_token = prompted.weighted(self.kl_loss.per_token(other_logprobs, prompted))
        hits = other_logprobs.argmax(-1) == best.to(other_logprobs.device)
        if keep is not None:
            hits = hits & keep.to(hits.device)
        self.kl += float(per_token.sum())
        self.agree += int(hits.sum())
        self.tokens += int(keep.sum()) if keep is not None else int(prompted.sampled_ids.shape[0])
        if positions is not None:
            counted = keep.tolist() if keep is not None else [True] * len(positions)
            for pos, value, count in zip(positions, per_token.tolist(), counted):
                while len(self.position_kl) <= pos:
                    self.position_kl.append(0.0)
                    self.position_tokens.append(0)
                self.position_kl[pos] += value
                self.position_tokens[pos] += int(count)

    def curve(self) -> list[float | None]:
        """Mean KL at each response position (None where no token counted)."""
        return [k / n if n else None for k, n in zip(self.position_kl, self.position_tokens)]

    def to_json(self) -> dict[str, Any]:
        return {"full": self.full, "kl": self.kl, "agree": self.agree, "tokens": self.tokens,
                "position_kl": self.position_kl, "position_tokens": self.position_tokens}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        tally = cls(bool(data["full"]))
        tally.kl, tally.agree, tally.tokens = float(data["kl"]), int(data["agree"]), int(data["tokens"])
        tally.position_kl = [float(v) for v in data.get("position_kl", [])]
        tally.position_tokens = [int(v) for v in data.get("position_tokens", [])]
        return tally

    @property
    def mean_kl(self) -> float:
        return self.kl / max(self.tokens, 1)

    @property
    def agreement(self) -> float:
        return self.agree / max(self.tokens, 1)


def summary(base: Tally, baked: Tally, kind: str, trajectories: int) -> dict[str, Any]:
    """The metrics dict written to eval.json."""
    b, k = base.mean_kl, baked.mean_kl
    return {
        "kl_prompted_base": b,
        "kl_prompted_baked": k,
        "gap_closed": (1.0 - k / b) if b > 0 else float("nan"),
        "top1_agreement_baked": baked.agreement,
        "top1_agreement_base": base.agreement,
        "kl": kind,
        "tokens": baked.tokens,
        "trajectories": trajectories,
        # Mean KL at each response position: where along a response the baked model departs.
        "kl_by_position": {"base": base.curve(), "baked": baked.curve(), "tokens": baked.position_tokens},
    }


def heldout_metrics(teacher: Teacher, student: Student, trajectories: Sequence[Trajectory],
                    top_k: int, batch_size: int = 8, show_progress: bool = True,
                    reference: Sequence[Targets] | None = None) -> dict[str, Any]:
    """Mean per-token KL and top-1 agreement of the baked and base student against the prompted teacher.

    The prompted side is ``reference`` (targets that came with a hosted teacher's samples)
    or the teacher's scores: full distributions where it gives them, else its top-K with
    the tail. Baked is the student as trained; base is the student's own model with the
    adapter off (``strength=0``), whichever model the teacher runs.
    """
    full = reference is None and teacher.capabilities.full_logits
    tallies = {"baked": Tally(full), "base": Tally(full)}
    turns = sorted({t.turn for t in trajectories})
    by_turn = {turn: {"baked": Tally(full), "base": Tally(full)} for turn in turns} if len(turns) > 1 else {}
    for lo in progress(range(0, len(trajectories), batch_size), "evaluate", show_progress):
        part = trajectories[lo: lo + batch_size]
        given = reference[lo: lo + batch_size] if reference is not None else \
            teacher.score(part, top_k=None if full else top_k, full=full, side="prompted")
        prompted = BatchTargets.concat(given)
        for side, strength in (("baked", 1.0), ("base", 0.0)):
            other = student.score(part, full=True, strength=strength)
            tallies[side].add(prompted, BatchTargets.concat(other).full_logprobs, response_positions(part))
            for turn, tally in by_turn.items():  # each turn of held-out conversations on its own
                mine = [i for i, t in enumerate(part) if t.turn == turn]
                if mine:
                    tally[side].add(BatchTargets.concat([given[i] for i in mine]),
                                    BatchTargets.concat([other[i] for i in mine]).full_logprobs)
    if full:
        kind = "full"
    else:
        where = " on the teacher's own samples" if reference is not None else ""
        kind = f"top-{top_k} with tail{where} (a lower bound)"
    out = summary(tallies["base"], tallies["baked"], kind, len(trajectories))
    if by_turn:
        out["by_turn"] = {str(turn): {k: v for k, v in summary(t["base"], t["baked"], kind, 0).items()
                                      if k not in ("kl", "trajectories", "kl_by_position")}
                          for turn, t in by_turn.items()}
    return out


def response_positions(trajectories: Sequence[Trajectory]) -> list[int]:
    """Each response row's index within its response, trajectory after trajectory."""
    return [i for t in trajectories for i in range(t.response_len)]


def evaluate_heldout(teacher: Teacher, student: Student, held: Sequence[Trajectory],
                     held_targets: Sequence[Targets] | None, config: BakeConfig) -> dict[str, Any] | None:
    """The held-out metrics for eval.json, or None when nothing can be evaluated: no held-out
    trajectories, a student that cannot score, or a teacher that neither scores nor gave
    log-probs with its samples."""
    if not held or not student.capabilities.can_score:
        return None
    if held_targets is None and not teacher.capabilities.can_score:
        return None
    return heldout_metrics(teacher, student, held, config.top_k, config.score_batch_size, config.progress,
                           reference=held_targets)
