"""The built-in behaviour probes (registered by ``promptbake.builtin``): language, regex,
keyword, starts_with, max_length and multiple_choice. ``Probe`` itself is the plugin API
(``promptbake.core.probes``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, MissingDependencyError, suggest
from ..core.probes import LogLik, Probe


def _langid() -> Any:
    try:
        import py3langid  # lazy: loads a small model on first use
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "The probe 'language' needs the Python package 'py3langid', which is not installed: "
            "pip install py3langid"
        ) from exc
    return py3langid


class LanguageProbe(Probe):
    """1 when py3langid identifies the answer's language as ``value`` (an ISO 639-1 code such as fr)."""

    name = "language"

    def __init__(self, value: str | None = None) -> None:
        super().__init__(value)
        code = self._required("a language code", "fr")
        self.value = self.code = code.lower()
        known = {lang for lang, _ in _langid().rank("")}
        if self.code not in known:
            raise ConfigError(f"The probe 'language' does not know the language code '{code}'; use an "
                              f"ISO 639-1 code such as fr, es or en.{suggest(self.code, known)}")

    def score(self, question: str, answer: str) -> float:
        if not answer.strip():
            return 0.0
        return float(_langid().classify(answer)[0] == self.code)


class RegexProbe(Probe):
    """1 when the regular expression ``value`` matches anywhere in the answer (``re.search``)."""

    name = "regex"

    def __init__(self, value: str | None = None) -> None:
        super().__init__(value)
        if not self.value:
            raise ConfigError("The probe 'regex' needs a regular expression, as in regex=(?i)^sure.")
        try:
            self.pattern = re.compile(self.value)
        except re.error as exc:
            raise ConfigError(f"The probe 'regex' got an invalid regular expression {self.value!r}: {exc}.") from None

    def score(self, question: str, answer: str) -> float:
        return float(self.pattern.search(answer) is not None)


class KeywordProbe(Probe):
    """1 when any of the comma-separated keywords occurs as a whole word, ignoring case."""

    name = "keyword"

    def __init__(self, value: str | None = None) -> None:
        super().__init__(value)
        self.keywords = [k.strip() for k in (self.value or "").split(",") if k.strip()]
        if not self.keywords:
            raise ConfigError("The probe 'keyword' needs comma-separated words, as in keyword=arr,matey.")
        # Lookarounds rather than \b, so keywords may start or end with punctuation ("C++").
        alternatives = "|".join(re.escape(k) for k in self.keywords)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def score(self, question: str, answer: str) -> float:
        return float(self.pattern.search(answer) is not None)


class StartsWithProbe(Probe):
    """1 when the stripped answer starts with ``value``, ignoring case."""

    name = "starts_with"

    def __init__(self, value: str | None = None) -> None:
        super().__init__(value)
        self.prefix = self._required("the text answers should start with", "Ahoy").casefold()

    def score(self, question: str, answer: str) -> float:
        return float(answer.strip().casefold().startswith(self.prefix))


class MaxLengthProbe(Probe):
    """1 when the answer has at most ``value`` whitespace-separated words (an empty answer has 0)."""

    name = "max_length"

    def __init__(self, value: str | None = None) -> None:
        super().__init__(value)
        raw = self._required("a number of words", "40")
        try:
            self.words = int(raw)
        except ValueError:
            self.words = 0
        if self.words <= 0:
            raise ConfigError(f"The probe 'max_length' needs a positive whole number of words, not '{raw}'.")
        self.value = str(self.words)

    def score(self, question: str, answer: str) -> float:
        return float(len(answer.split()) <= self.words)


BUNDLED_CHOICES = "data/multiple_choice.jsonl"


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    question: str
    choices: tuple[str, ...]
    answer: int

    @property
    def prompt(self) -> str:
        """The user message: the question, its lettered choices and the request for the answer."""
        lines = [f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(self.choices)]
        return f"{self.question}\n\n" + "\n".join(lines) + "\n\nReply with the text of the correct choice only."


def load_choices(path: str | Path | None = None) -> list[ChoiceItem]:
    """Multiple-choice items from a JSONL file of ``{"question", "choices", "answer"}`` (None: the bundled set)."""
    if path is None:
        where = f"the bundled file promptbake/{BUNDLED_CHOICES}"
        text = resources.files("promptbake").joinpath(BUNDLED_CHOICES).read_text(encoding="utf-8")
    else:
        file = Path(path).expanduser()
        where = f"the multiple-choice file {file}"
        if not file.is_file():
            raise ConfigError(f"The multiple-choice file {file} does not exist.")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"The multiple-choice file {file} is not valid UTF-8.") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"In {where}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{at} is not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{at} is not a JSON object.")
        question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise ConfigError(f"{at} needs a non-empty 'question' string.")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise ConfigError(f"{at} needs 'choices', a list of at least two non-empty strings.")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ConfigError(f"{at} has 'answer' {answer!r}, which is not a choice index from 0 to "
                              f"{len(choices) - 1}.")
        items.append(ChoiceItem(question, tuple(choices), answer))
    if not items:
        raise ConfigError(f"{where[0].upper()}{where[1:]} has no items.")
    return items


class MultipleChoiceProbe(Probe):
    """Accuracy on multiple-choice questions, comparing each choice's log-likelihood (as MMLU does).

    ``value`` is a JSONL file of ``{"question": str, "choices": [str, ...], "answer": index}``;
    without one, a bundled set of 24 easy general-knowledge questions is used. An item counts as
    right when the right choice's text is the likeliest reply to :attr:`ChoiceItem.prompt`.
    """

    name = "multiple_choice"
    needs_model = True

    def __init__(self, value: str | None = None) -> None:
        super().__init__((value.strip() or None) if value is not None else None)  # '' -> bundled
        self.items = load_choices(self.value)

    def score(self, question: str, answer: str) -> float:
        raise NotImplementedError("multiple_choice scores log-likelihoods: call evaluate() with loglik")

    def evaluate(self, answers: Sequence[Mapping[str, str]], sides: Sequence[str],
                 loglik: LogLik | None = None) -> dict[str, float]:
        """Fraction of items whose right choice has the highest log-likelihood, per side; ignores ``answers``."""
        if loglik is None:
            raise ConfigError("The probe 'multiple_choice' needs the model's log-likelihoods, which this "
                              "evaluation does not provide.")
        out = {}
        for side in sides:
            right = 0
            for item in self.items:
                scores = [loglik(side, item.prompt, choice) for choice in item.choices]
                best = max(range(len(scores)), key=scores.__getitem__)  # first of any tie
                right += best == item.answer
            out[side] = right / len(self.items)
        return out
