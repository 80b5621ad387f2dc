"""Held-out evaluation: how close the baked model is to the prompted one.

On trajectories sampled from the prompted teacher for queries never used in
training, per response token: KL(prompted || baked), KL(prompted || base), the
fraction of that gap the bake closed, and top-1 agreement with the prompted model.

A teacher that scores (hf, vllm) gives the prompted and base distributions
directly. A hosted teacher cannot score, so its held-out targets are the top-K
log-probs that came with its own samples, and "base" is the student measured
before training (a fresh LoRA adapter leaves the base model unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .batching import batches
from .cache import TargetStore, targets_key
from .config import BakeConfig
from .interfaces import BatchTargets, Student, Teacher
from .progress import progress
from .rundir import write_json
from .types import Targets, Trajectory

BASE_FILE = "eval-base.json"


class Tally:
    """Running KL sum and top-1 agreement against reference (prompted) targets."""

    def __init__(self, full: bool):
        from .losses import FullKLLoss, TopKKLLoss

        self.kl_loss = FullKLLoss() if full else TopKKLLoss(tail=True)
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
                    top_k: int, batch_size: int = 8, show_progress: bool = True) -> dict[str, Any]:
    """Mean per-token KL and agreement over ``trajectories``, with a teacher that scores."""
    full = teacher.capabilities.full_logits
    tallies = {"baked": Tally(full), "base": Tally(full)}
    for part in progress(batches(trajectories, batch_size), "evaluate", show_progress):
        prompted = BatchTargets.concat(teacher.score(part, top_k=top_k, full=full, side="prompted"))
        positions = response_positions(part)
        tallies["baked"].add(prompted, BatchTargets.concat(student.score(part, full=True)).full_logprobs, positions)
        tallies["base"].add(prompted, BatchTargets.concat(
            teacher.score(part, top_k=None, full=True, side="unprompted")).full_logprobs, positions)
        del prompted
    kind = "full" if full else f"top-{top_k} with tail (a lower bound)"
    return summary(tallies["base"], tallies["baked"], kind, len(trajectories))


def tally_student(student: Student, trajectories: Sequence[Trajectory], targets: Sequence[Targets],
                  batch_size: int = 8, show_progress: bool = True, label: str = "evaluate") -> Tally:
    """KL and agreement of the student's current weights against given top-K targets."""
    tally = Tally(full=False)
    pairs = list(zip(trajectories, targets))
    for part in progress(batches(pairs, batch_size), label, show_progress):
        prompted = BatchTargets.concat([tg for _, tg in part])
        trajs = [t for t, _ in part]
        tally.add(prompted, BatchTargets.concat(student.score(trajs, full=True)).full_logprobs, response_positions(trajs))
    return tally


def response_positions(trajectories: Sequence[Trajectory]) -> list[int]:
    """Each response row's index within its response, trajectory after trajectory."""
    return [i for t in trajectories for i in range(t.response_len)]


class Evaluation:
    """The held-out evaluation of one bake, measured around training.

    A teacher with full distributions scores prompted and base sides after
    training (:func:`heldout_metrics`). Otherwise the reference is the teacher's
    held-out top-K (from its samples, or scored once), and the student is
    measured against it before training (the base: a fresh adapter changes
    nothing) and after.
    """

    def __init__(self, teacher: Teacher, student: Student, held: Sequence[Trajectory],
                 held_targets: Sequence[Targets] | None, config: BakeConfig, run_path: str | Path | None = None):
        self.teacher, self.student, self.held, self.config = teacher, student, list(held), config
        self.held_targets = held_targets
        self.reference: Sequence[Targets] | None = None
        self.base: Tally | None = None
        # Where the measurement before training is kept, so a resumed bake (whose
        # student may already be trained) reads it instead of measuring again.
        self.run_path = Path(run_path) if run_path is not None else None

    @property
    def enabled(self) -> bool:
        return bool(self.held) and self.student.capabilities.can_score

    @property
    def teacher_scores_base(self) -> bool:
        tc = self.teacher.capabilities
        return tc.can_score and tc.full_logits

    def before_training(self) -> None:
        """Find the reference and measure the untrained student, where that is the method."""
        cfg = self.config
        if not self.enabled or self.teacher_scores_base:
            return
        key = targets_key(model=cfg.teacher_model or cfg.model, teacher=self.teacher.name, prompt_sha256="",
                          kind="topk", top_k=cfg.top_k, trajectories=self.held)
        if self._restore(key):
            return
        if self.held_targets is not None:
            self.reference = self.held_targets
        elif self.teacher.capabilities.can_score:
            self.reference = [t for part in batches(self.held, cfg.score_batch_size * 4)
                              for t in self.teacher.score(part, top_k=cfg.top_k, full=False)]
        if self.reference is not None:
            self.base = tally_student(self.student, self.held, self.reference, cfg.score_batch_size,
                                      cfg.progress, "evaluate base")
            if self.run_path is not None:
                if self.held_targets is None:
                    TargetStore(self.run_path / "heldout-targets").write(self.reference, key)
                write_json(self.run_path / BASE_FILE, {"key": key, "base": self.base.to_json()})

    def _restore(self, key: str) -> bool:
        """Take the reference and base measurement saved by an earlier run of this bake."""
        if self.run_path is None or not self.config.resume:
            return False
        try:
            saved = json.loads((self.run_path / BASE_FILE).read_text(encoding="utf-8"))
            base = Tally.from_json(saved["base"]) if saved.get("key") == key else None
        except (OSError, ValueError, KeyError, TypeError):
            return False
        reference = (self.held_targets if self.held_targets is not None
                     else TargetStore(self.run_path / "heldout-targets").read(key))
        if base is None or reference is None:
            return False
        self.base, self.reference = base, reference
        return True

    def after_training(self) -> dict[str, Any] | None:
        """The metrics for eval.json, or None when nothing could be evaluated."""
        cfg = self.config
        if not self.enabled:
            return None
        if self.teacher_scores_base:
            return heldout_metrics(self.teacher, self.student, self.held, cfg.top_k,
                                   cfg.score_batch_size, cfg.progress)
        if self.reference is None or self.base is None:
            return None
        baked = tally_student(self.student, self.held, self.reference, cfg.score_batch_size,
                              cfg.progress, "evaluate")
        where = "the teacher's own samples" if self.held_targets is not None else "held-out samples"
        return summary(self.base, baked, f"top-{cfg.top_k} with tail on {where} (a lower bound)",
                       len(self.held))
