"""Behaviour probes: the built-ins, spec parsing, per-side means, plugins and the CLI listing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import promptbake
from promptbake.builtin.probes import MultipleChoiceProbe, load_choices
from promptbake.cli import cli
from promptbake.core import plugins, probes
from promptbake.core.errors import ConfigError, PromptbakeError, UnknownBackendError
from promptbake.core.probes import Probe, parse_probe, parse_probes

FRENCH = "Le chat dort tranquillement sur le canapé pendant que les enfants jouent dans le jardin ensoleillé."
ENGLISH = "The cat sleeps quietly on the sofa while the children are playing in the sunny garden outside."
SPANISH = "El gato duerme tranquilamente en el sofá mientras los niños juegan en el jardín soleado."


def _score(spec: str, answer: str, question: str = "Q?") -> float:
    return parse_probe(spec).score(question, answer)


@pytest.mark.parametrize("code, text, expected", [
    ("fr", FRENCH, 1.0), ("fr", ENGLISH, 0.0), ("en", ENGLISH, 1.0), ("en", FRENCH, 0.0),
    ("es", SPANISH, 1.0), ("es", FRENCH, 0.0), ("FR", FRENCH, 1.0), ("fr", "   ", 0.0), ("fr", "", 0.0),
])
def test_language(code, text, expected):
    assert _score(f"language={code}", text) == expected


def test_language_label_and_bad_code():
    assert parse_probe("language=FR").label == "language=fr"
    with pytest.raises(ConfigError, match="does not know the language code 'xx'"):
        parse_probe("language=xx")


@pytest.mark.parametrize("spec, answer, expected", [
    ("regex=^Sure", "Sure, here it is.", 1.0),
    ("regex=^Sure", "sure, here it is.", 0.0),  # the pattern is used as given
    ("regex=(?i)^sure", "SURE thing", 1.0),
    ("regex=\\d{3}-\\d{4}", "Call 555-1234 now", 1.0),
    ("regex=\\d{3}-\\d{4}", "No number here", 0.0),
    ("regex=a=b", "x a=b y", 1.0),  # only the first '=' separates name and value
    ("keyword=arr,matey", "Arr, what a day!", 1.0),
    ("keyword=arr, matey", "Ahoy MATEY.", 1.0),
    ("keyword=arr,matey", "The array is sorted.", 0.0),  # whole words only
    ("keyword=c++", "I like C++ a lot.", 1.0),
    ("starts_with=Ahoy", "  ahoy there, sailor", 1.0),
    ("starts_with=Ahoy", "Well, ahoy there", 0.0),
    ("max_length=3", "one two three", 1.0),
    ("max_length=3", "one  two\nthree four", 0.0),
    ("max_length=3", "", 1.0),
])
def test_text_probes(spec, answer, expected):
    assert _score(spec, answer) == expected


def test_labels():
    assert [p.label for p in parse_probes(["max_length=40", "keyword=a,b", "multiple_choice"])] == [
        "max_length=40", "keyword=a,b", "multiple_choice"]


def test_unknown_probe_suggests_the_close_one():
    with pytest.raises(UnknownBackendError) as info:
        parse_probe("langauge=fr")
    assert "Unknown probe 'langauge'. Did you mean: language?" in str(info.value)
    assert info.value.kind == "probe"


@pytest.mark.parametrize("spec, message", [
    ("regex=([a-z", "invalid regular expression"),
    ("regex", "needs a regular expression"),
    ("language", "needs a language code"),
    ("language=", "needs a language code"),
    ("max_length=abc", "positive whole number of words, not 'abc'"),
    ("max_length=0", "positive whole number"),
    ("max_length", "needs a number of words"),
    ("keyword= , ", "needs comma-separated words"),
    ("starts_with", "needs the text"),
    ("=fr", "has no name"),
])
def test_bad_specs_are_one_sentence_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_probe(spec)
    assert "\n" not in str(info.value)


def test_same_probe_twice_is_refused():
    with pytest.raises(ConfigError, match="given twice"):
        parse_probes(["max_length=40", "max_length=40"])


def test_evaluate_is_the_mean_per_side():
    rows = [
        {"question": "q1", "base": "one two three four", "prompted": "one", "baked": "one two"},
        {"question": "q2", "base": "one", "prompted": "one", "baked": "one two three"},
    ]
    result = parse_probe("max_length=2").evaluate(rows, ["base", "prompted", "baked"])
    assert result == {"base": 0.5, "prompted": 1.0, "baked": 0.5}


def test_evaluate_rejects_scores_outside_0_1():
    class Bad(Probe):
        name = "bad"

        def score(self, question, answer):
            return 2.0

    with pytest.raises(PromptbakeError, match=r"outside \[0, 1\]"):
        Bad().evaluate([{"question": "q", "base": "a"}], ["base"])


# --- multiple choice ---------------------------------------------------------------------------


def test_bundled_multiple_choice_file():
    items = load_choices()
    assert len(items) == 24
    assert all(len(i.choices) == 4 and 0 <= i.answer < 4 for i in items)
    assert len({i.answer for i in items}) == 4  # the right answer is not always in the same place
    assert len({i.question for i in items}) == 24
    assert "A. " in items[0].prompt and items[0].question in items[0].prompt


def _fake_loglik(prefer_right: bool):
    items = {i.prompt: i for i in load_choices()}
    calls = []

    def loglik(side: str, question: str, continuation: str) -> float:
        calls.append(side)
        item = items[question]
        index = item.choices.index(continuation)
        target = item.answer if prefer_right else 0
        return -1.0 if index == target else -5.0 - index

    return loglik, calls


def test_multiple_choice_with_a_loglik_preferring_the_right_answer():
    loglik, calls = _fake_loglik(prefer_right=True)
    probe = parse_probe("multiple_choice")
    assert probe.needs_model
    assert probe.evaluate([], ["base", "baked"], loglik) == {"base": 1.0, "baked": 1.0}
    assert len(calls) == 2 * 24 * 4


def test_multiple_choice_with_a_loglik_preferring_the_first_choice():
    loglik, _ = _fake_loglik(prefer_right=False)
    expected = sum(i.answer == 0 for i in load_choices()) / 24
    assert 0 < expected < 1
    assert parse_probe("multiple_choice").evaluate([], ["baked"], loglik) == {"baked": expected}


def test_multiple_choice_needs_loglik():
    with pytest.raises(ConfigError, match="log-likelihoods"):
        MultipleChoiceProbe().evaluate([], ["base"])


def test_multiple_choice_from_a_user_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": 1}\n\n'
                    '{"question": "Sky?", "choices": ["blue", "green", "red"], "answer": 0}\n')
    probe = parse_probe(f"multiple_choice={path}")
    assert probe.label == f"multiple_choice={path}" and len(probe.items) == 2
    assert probe.evaluate([], ["baked"], lambda side, q, c: 0.0 if c in ("4", "green") else -1.0) == {"baked": 0.5}


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "choices": ["a", "b"], "answer": 0}\nnot json\n', "line 2 is not valid JSON"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}\n', "line 1 has 'answer' 2"),
    ('{"question": "q", "choices": ["a", "b"], "answer": -1}\n', "line 1 has 'answer' -1"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}\n', "line 1 has 'answer' True"),
    ('{"question": "q", "choices": ["a"], "answer": 0}\n', "line 1 needs 'choices'"),
    ('{"choices": ["a", "b"], "answer": 0}\n', "line 1 needs a non-empty 'question'"),
    ('[1, 2]\n', "line 1 is not a JSON object"),
    ('\n', "has no items"),
])
def test_bad_multiple_choice_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        parse_probe(f"multiple_choice={path}")
    assert str(path) in str(info.value)


def test_missing_multiple_choice_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_probe(f"multiple_choice={tmp_path / 'nope.jsonl'}")


# --- plugins -----------------------------------------------------------------------------------


class _Polite(Probe):
    """A third-party probe: 1 when the answer says please."""

    name = "polite"

    def score(self, question, answer):
        return float("please" in answer.lower())


class _ProbePlugin:
    @promptbake.hookimpl
    def register_probes(self, register):
        register("polite", _Polite, aliases=("courteous",))


def test_a_plugin_probe_is_found_by_parse_probe():
    with plugins.temporary_plugin(_ProbePlugin(), "polite-plugin"):
        probe = parse_probe("courteous")
        assert isinstance(probe, _Polite) and probe.label == "polite"
        rows = [{"question": "q", "baked": "Please sit."}, {"question": "q", "baked": "Sit."}]
        assert probe.evaluate(rows, ["baked"]) == {"baked": 0.5}
        assert "polite" in promptbake.backend_names("probe")
    with pytest.raises(UnknownBackendError):
        parse_probe("polite")


class _NotAProbe:
    def __init__(self, value=None):
        pass


class _WrongTypePlugin:
    @promptbake.hookimpl
    def register_probes(self, register):
        register("wrong", _NotAProbe)


def test_a_registered_non_probe_is_refused():
    with (plugins.temporary_plugin(_WrongTypePlugin(), "wrong-plugin"),
          pytest.raises(PromptbakeError, match="not a promptbake.probes.Probe subclass")):
        parse_probe("wrong")


def test_plugins_command_lists_the_probes():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    builtin = {p["name"]: p for p in json.loads(result.output)}["builtin"]
    assert builtin["probes"] == ["keyword", "language", "max_length", "multiple_choice", "regex", "starts_with"]
    assert builtin["losses"] and builtin["teachers"] == ["hf"]


def test_probes_import_no_torch():
    code = ("import sys, promptbake.probes as p; p.parse_probes(['max_length=3', 'regex=x', 'multiple_choice']);"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_module_names_its_kind():
    assert probes.KIND in plugins.KINDS
