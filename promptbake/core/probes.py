"""Behaviour probes: checks on a model's answers, scored in [0, 1], found through plugins.

A probe is named by a spec, ``name`` or ``name=value`` (``language=fr``,
``max_length=40``, ``regex=(?i)^sure``). Text probes score one answer at a time
(:meth:`Probe.score`); probes with ``needs_model = True`` score with the
log-likelihoods the evaluator provides instead (:meth:`Probe.evaluate`).

Built-ins are registered by ``promptbake.builtin`` through the ``register_probes``
hook; third-party plugins add their own the same way. This module imports no torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from . import registry
from .errors import ConfigError, PromptbakeError

LogLik = Callable[[str, str, str], float]
"""``loglik(side, question, continuation)``: the summed log-probability of ``continuation`` as the
assistant's reply to the user ``question``, for a side such as "base", "prompted" or "baked"."""

KIND = "probe"


class Probe(ABC):
    """A behaviour check on answers. Scores are in [0, 1].

    Subclasses set ``name``, validate ``value`` in ``__init__`` (raising
    :class:`ConfigError` with one sentence) and implement :meth:`score`; a probe
    that needs the model (``needs_model = True``) overrides :meth:`evaluate`.
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False  # True: uses loglik instead of answers

    def __init__(self, value: str | None = None) -> None:
        """``value`` is the text after ``=`` in the spec, or None when there is none."""
        self.value = value

    @property
    def label(self) -> str:
        """The probe as a spec, e.g. ``language=fr``: the key of its results."""
        name = self.name or type(self).__name__
        return name if self.value is None else f"{name}={self.value}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def _required(self, what: str, example: str) -> str:
        """``self.value`` stripped; raises ConfigError when it is missing or empty."""
        value = (self.value or "").strip()
        if not value:
            raise ConfigError(f"The probe '{self.name}' needs {what}, as in {self.name}={example}.")
        return value

    @abstractmethod
    def score(self, question: str, answer: str) -> float:
        """One answer's score in [0, 1] (text probes)."""

    def evaluate(self, answers: Sequence[Mapping[str, str]], sides: Sequence[str],
                 loglik: LogLik | None = None) -> dict[str, float]:
        """Mean score per side. ``answers`` rows hold "question" and one text per side name."""
        if not answers:
            raise ConfigError(f"The probe '{self.label}' has no answers to score.")
        out = {}
        for side in sides:
            total = 0.0
            for row in answers:
                value = float(self.score(row["question"], row[side]))
                if not 0.0 <= value <= 1.0:  # a plugin bug; say which probe
                    raise PromptbakeError(f"The probe '{self.label}' scored {value}, outside [0, 1].")
                total += value
            out[side] = total / len(answers)
        return out


def parse_probe(spec: str | Probe) -> Probe:
    """Build a probe from ``"name=value"`` or ``"name"`` (a Probe instance is returned as is).

    The name is looked up among registered probes; an unknown one raises
    :class:`~promptbake.errors.UnknownBackendError` with suggestions.
    """
    if isinstance(spec, Probe):
        return spec
    name, sep, value = spec.partition("=")
    name = name.strip()
    if not name:
        raise ConfigError(f"The probe spec {spec!r} has no name; write name or name=value, as in language=fr.")
    probe = registry.create(KIND, name, value=value if sep else None)
    if not isinstance(probe, Probe):
        raise PromptbakeError(f"The probe '{name}' is a {type(probe).__name__}, not a promptbake.probes.Probe "
                              f"subclass.")
    return probe


def parse_probes(specs: Sequence[str | Probe]) -> list[Probe]:
    """Build each probe of ``specs``; the same probe twice is an error (results are keyed by label)."""
    probes: list[Probe] = []
    seen: set[str] = set()
    for spec in specs:
        probe = parse_probe(spec)
        if probe.label in seen:
            raise ConfigError(f"The probe '{probe.label}' is given twice.")
        seen.add(probe.label)
        probes.append(probe)
    return probes


# --- built-in text probes ---------------------------------------------------------------------


# --- multiple choice (scores with the model) ---------------------------------------------------


