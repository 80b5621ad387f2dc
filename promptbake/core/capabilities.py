"""Checks that a teacher, student and loss can work together, before any work starts."""

from __future__ import annotations

from typing import Any

from .config import BakeConfig
from .errors import CapabilityError
from .interfaces import Loss, Student, Teacher


def check(teacher: Teacher, student: Student, loss: Loss, config: BakeConfig) -> None:
    """Raise CapabilityError with one sentence saying why and what would work."""
    tc, sc = teacher.capabilities, student.capabilities
    t, lname = teacher.name, loss.name
    if not tc.can_generate:
        raise CapabilityError(f"Teacher '{t}' cannot generate responses, which a bake needs; use a teacher that samples (hf, vllm, openai).")
    if sc.losses is not None and lname not in sc.losses:
        raise CapabilityError(
            f"Student '{student.name}' cannot train with loss '{lname}'; it supports: {', '.join(sorted(sc.losses))}."
        )
    if loss.needs == "full" and not tc.full_logits:
        raise CapabilityError(
            f"Loss '{lname}' needs full-vocabulary logits, which teacher '{t}' cannot give; "
            f"use loss topk_kl or ce with this teacher, or the hf teacher for full_kl."
        )
    if config.on_policy > 0:
        if loss.needs == "tokens":
            raise CapabilityError(f"On-policy baking trains on the teacher's distributions over the student's "
                                  f"own samples; loss '{lname}' uses no teacher distribution: use topk_kl or full_kl.")
        if not tc.can_score:
            raise CapabilityError(f"On-policy baking needs a teacher that scores given text; teacher '{t}' "
                                  f"cannot: use hf or vllm, or on_policy=0.")
        if not sc.can_generate or sc.owns_loop:
            raise CapabilityError(f"On-policy baking needs a student that samples between epochs; student "
                                  f"'{student.name}' cannot: use peft, or on_policy=0.")
    if loss.needs == "topk":
        if not (tc.can_score or tc.sample_logprobs):
            raise CapabilityError(
                f"Loss '{lname}' needs the teacher's top-K log-probabilities, which teacher '{t}' "
                f"cannot give; use loss ce."
            )
        if tc.max_top_k is not None and config.top_k > tc.max_top_k:
            raise CapabilityError(
                f"top_k={config.top_k} is above teacher '{t}''s limit of {tc.max_top_k}; "
                f"use top_k <= {tc.max_top_k}, or the hf teacher for larger K."
            )


def check_distributed(student: Student, config: BakeConfig) -> None:
    """Refuse launches that would train several unsynchronised copies or race on the run directory."""
    if not student.capabilities.owns_loop:
        raise CapabilityError(f"Student '{student.name}' trains in one process; under accelerate launch or "
                              f"torchrun use a distributed student such as trl.")
    if not config.out:
        raise CapabilityError("Under accelerate launch or torchrun every process must name the same run "
                              "directory; pass --out.")


def default_loss(teacher: Teacher, student: Student, config: BakeConfig) -> str:
    """The loss of a bake that names none: the exact full-vocabulary KL where it costs about what
    top-K does (the teacher hands over hidden states that the student, holding the same
    weights, turns into log-probs), else top-K KL."""
    tc, sc = teacher.capabilities, student.capabilities
    teacher_model = getattr(teacher, "model_spec", None) or config.teacher_model or config.model
    student_model = getattr(student, "model_spec", None) or config.model
    if tc.full_logits and tc.hidden_states and sc.hidden_targets and teacher_model == student_model:
        return "full_kl"
    return "topk_kl"


def _vocab_signature(tokenizer: Any) -> tuple[int, int]:
    vocab = tokenizer.get_vocab()
    return len(vocab), hash(frozenset(vocab.items()))


def check_tokenizers(teacher: Teacher, student: Student, loss: Loss) -> None:
    """KL losses compare distributions token by token, so both sides need one vocabulary, and
    distributions over it of one width (checked after setup, before any work)."""
    if not loss.same_tokenizer or teacher.tokenizer is None:
        return
    if teacher.tokenizer is not student.tokenizer and \
            _vocab_signature(teacher.tokenizer) != _vocab_signature(student.tokenizer):
        raise CapabilityError(
            f"Loss '{loss.name}' compares teacher and student token by token, but their tokenizers "
            f"differ; use the same model family for both, or loss ce (which trains on text)."
        )
    tv, sv = teacher.vocab_size, student.vocab_size
    if tv is not None and sv is not None and tv != sv:
        raise CapabilityError(
            f"Loss '{loss.name}' compares teacher and student token by token, but the teacher's model gives "
            f"{tv} logits and the student's {sv} over one tokenizer (one of them has fewer output rows than the "
            f"tokenizer has tokens); use models whose output layers cover the tokenizer, or loss ce."
        )


def check_sampling_extras(teacher: Teacher, extras: dict[str, Any]) -> None:
    """The generation_config extras every side must sample with are ones the teacher can apply."""
    missing = sorted(set(extras) - teacher.capabilities.sampling_extras)
    if missing:
        can = ", ".join(sorted(teacher.capabilities.sampling_extras)) or "none"
        raise CapabilityError(
            f"With generation_config=true every side samples with the model's {', '.join(missing)}, which teacher "
            f"'{teacher.name}' cannot apply (it can: {can}); set generation_config=false to sample the plain "
            f"distribution on every side."
        )
