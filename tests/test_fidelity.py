"""The fidelity evaluation: answers, probes, on-policy gap, half-baking curves and ``promptbake eval``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from promptbake import Baker, ConfigError
from promptbake.cli import cli
from promptbake.core.errors import PromptbakeError
from promptbake.reevaluate import evaluate_run
from promptbake.stages.evaluate import epoch_adapters

PROMPT = "Always answer like a pirate, matey."
PROBES = ["max_length=6", "regex=(?i)a", "multiple_choice"]


SETTINGS = {"max_queries": 6, "max_heldout": 3, "samples_per_query": 2, "max_new_tokens": 10, "epochs": 2, "batch_size": 4,
                "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """One tiny bake shared by the tests below (they run in file order; later ones re-evaluate it)."""
    from helpers import make_tiny_llama, make_tokenizer

    from promptbake.builtin import models

    tokenizer = make_tokenizer("smollm2")
    handle = models.ModelHandle(spec="tiny-fidelity", model=make_tiny_llama(tokenizer), tokenizer=tokenizer,
                                device="cpu")
    models.register_handle(handle)
    out = tmp_path_factory.mktemp("fidelity") / "run"
    result = Baker(PROMPT, model=handle.spec, probes=PROBES, strengths=[0.0, 1.0], out=str(out), **SETTINGS).run()
    yield handle.spec, result
    models.release(handle)


def test_a_bake_ends_with_answers_probes_on_policy_and_curves(baked):
    bake_settings = SETTINGS
    _, result = baked
    run, e = result.run_dir, result.eval
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == bake_settings["max_heldout"]
    assert all({"query_id", "question", "base", "prompted", "baked"} <= set(r) for r in rows)
    for side in ("base", "prompted", "baked"):
        stats = e["answers"][side]
        assert stats["answers"] == len(rows) and 0 < stats["mean_tokens"] <= bake_settings["max_new_tokens"]
        assert 0 <= stats["distinct_1"] <= 1 and 0 <= stats["distinct_2"] <= 1
    # Each probe scores every side; the multiple-choice probe uses the bundled 24 items.
    assert set(e["probes"]) == {"max_length=6", "regex=(?i)a", "multiple_choice"}
    for label, scores in e["probes"].items():
        assert set(scores) == {"base", "prompted", "baked"}, label
        assert all(0 <= v <= 1 for v in scores.values())
    assert all(round(v * 24) == pytest.approx(v * 24) for v in e["probes"]["multiple_choice"].values())
    # Sampled answers (2 per query by default) for the text probes; the choice probe needs no answers.
    n = e["probe_samples"] * bake_settings["max_heldout"]
    assert e["probe_samples"] == 2 and set(e["probes_sampled"]) == {"max_length=6", "regex=(?i)a"}
    for label, scores in e["probes_sampled"].items():
        assert set(scores) == {"base", "prompted", "baked"}, label
        assert all(round(v * n) == pytest.approx(v * n) for v in scores.values())
    gap = e["on_policy"]
    assert gap["kl"] == "full" and gap["tokens_base"] > 0 and gap["tokens_baked"] > 0
    assert gap["gap_closed"] == pytest.approx(1 - gap["kl_prompted_baked"] / gap["kl_prompted_base"])
    # Half-baking: strength 0 answers as the base model does, strength 1 as the baked one.
    by_strength = {row["strength"]: row["probes"] for row in e["strengths"]}
    text_probes = {k: v for k, v in e["probes"].items() if k != "multiple_choice"}
    assert by_strength[0.0] == {k: v["base"] for k, v in text_probes.items()}
    assert by_strength[1.0] == {k: v["baked"] for k, v in text_probes.items()}
    assert [row["epoch"] for row in e["epochs"]] == [1, 2]
    assert json.loads((run / "eval.json").read_text()) == e
    assert (run / "report.html").is_file()


def test_the_last_epoch_adapter_is_the_final_adapter(baked):
    bake_settings = SETTINGS
    _, result = baked
    saved = epoch_adapters(result.run_dir)
    assert [n for n, _ in saved] == list(range(1, bake_settings["epochs"] + 1))
    last = load_file(saved[-1][1] / "adapter_model.safetensors")
    final = load_file(result.adapter_path / "adapter_model.safetensors")
    first = load_file(saved[0][1] / "adapter_model.safetensors")
    assert last.keys() == final.keys()
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert any(not torch.equal(first[k], final[k]) for k in final)


def test_the_epoch_curve_answers_again_only_with_adapters_other_than_the_final_one(baked, monkeypatch):
    """The last epoch's adapter is the final one: its point on the curve is the baked side's greedy
    answers, not a second round of the same generation."""
    from promptbake.builtin.peft import PeftStudent

    _, result = baked
    loaded = []
    original = PeftStudent.load_adapter
    monkeypatch.setattr(PeftStudent, "load_adapter", lambda self, path: (loaded.append(path), original(self, path)))
    metrics = evaluate_run(result.run_dir, PROMPT, probes=["max_length=6"], strengths=[], progress=False,
                           report=False)
    final, first = str(result.adapter_path), str(epoch_adapters(result.run_dir)[0][1])
    assert loaded == [final, first, final]  # the run's adapter; epoch 1 for the curve; the final one back
    last = metrics["epochs"][-1]
    assert last["epoch"] == SETTINGS["epochs"] and last["probes"] == {"max_length=6": metrics["probes"]["max_length=6"]["baked"]}


def test_the_prompted_sides_sampled_answers_start_with_the_held_out_trajectories(baked, monkeypatch):
    """The held-out trajectories are the prompted teacher's samples at the bake's settings: each is
    the prompted side's first sampled answer to its query, and only the rest are sampled."""
    from promptbake.run import files
    from promptbake.run.rundir import RunDir
    from promptbake.stages.evaluate import behaviour

    _, result = baked
    held = RunDir(result.run_dir).read_trajectories(files.HELDOUT)
    asked, drawn = [], {}
    original = behaviour.Sides.sample_groups
    monkeypatch.setattr(behaviour.Sides, "sample_groups",
                        lambda self, side, queries, sampling, strength=1.0:
                        asked.append((side, sampling.n, sampling.temperature)) or original(self, side, queries, sampling, strength))
    original_prompted = behaviour.prompted_samples
    monkeypatch.setattr(behaviour, "prompted_samples",
                        lambda *a: drawn.setdefault("prompted", original_prompted(*a)))
    metrics = evaluate_run(result.run_dir, PROMPT, probes=["max_length=6"], strengths=[], progress=False,
                           report=False)
    sampled = [(side, n) for side, n, temperature in asked if temperature > 0]
    assert sampled == [("base", 2), ("prompted", 1), ("baked", 2)]
    assert [group[0].token_ids for group in drawn["prompted"]] == [t.response_ids for t in held]
    assert all(len(group) == 2 for group in drawn["prompted"])
    assert set(metrics["probes_sampled"]["max_length=6"]) == {"base", "prompted", "baked"}


def test_without_a_held_out_trajectory_for_every_query_all_prompted_samples_are_drawn():
    from promptbake.core.interfaces import SamplingConfig
    from promptbake.core.types import Query, Sample, Trajectory
    from promptbake.stages.evaluate import behaviour

    class Stub:
        def sample_groups(self, side, queries, sampling):
            return [[Sample([9] * (i + 1), True) for i in range(sampling.n)] for _ in queries]

    queries = [Query(f"q{i}", ({"role": "user", "content": "hi"},)) for i in range(2)]
    held = [Trajectory(query_id="q0", sample=0, prompted_ids=[1, 2, 3], unprompted_ids=[2, 3], response_len=1)]
    sampling = SamplingConfig(n=2, temperature=1.0)
    assert [[s.token_ids for s in g] for g in behaviour.prompted_samples(Stub(), queries, sampling, held)] == \
        [[[9], [9, 9]], [[9], [9, 9]]]
    held.append(Trajectory(query_id="q1", sample=0, prompted_ids=[1, 4, 5], unprompted_ids=[4, 5], response_len=2))
    assert [[s.token_ids for s in g] for g in behaviour.prompted_samples(Stub(), queries, sampling, held)] == \
        [[[3], [9]], [[4, 5], [9]]]


def test_eval_measures_a_finished_run_again(baked):
    _, result = baked
    before = json.loads((result.run_dir / "answers.jsonl").read_text().splitlines()[0])
    metrics = evaluate_run(result.run_dir, PROMPT, probes=["max_length=3"], reprompt=True, progress=False)
    # The adapter reloaded from disk answers exactly as the trained one did (greedy decoding).
    after = json.loads((result.run_dir / "answers.jsonl").read_text().splitlines()[0])
    assert {k: after[k] for k in before} == before and "reprompted" in after
    assert set(metrics["probes"]) == {"max_length=3"}
    assert set(metrics["probes"]["max_length=3"]) == {"base", "prompted", "baked", "reprompted"}
    assert metrics["kl_prompted_baked"] == pytest.approx(result.eval["kl_prompted_baked"], rel=1e-4)


def test_eval_refuses_another_prompt_and_a_bad_probe(baked):
    _, result = baked
    with pytest.raises(ConfigError, match="prompt differs"):
        evaluate_run(result.run_dir, "Another prompt.", progress=False)
    with pytest.raises(PromptbakeError, match="Unknown probe 'languag'. Did you mean: language"):
        evaluate_run(result.run_dir, PROMPT, probes=["languag=fr"], progress=False)


def test_eval_cli(baked):
    _, result = baked
    runner = CliRunner()
    out = runner.invoke(cli, ["eval", str(result.run_dir), "--prompt", PROMPT, "--probe", "max_length=4",
                              "--strengths", "0,0.5,1", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "Probe max_length=4" in out.output and "strength 0.5" in out.output
    assert "report.html" in out.output


def test_eval_cli_bad_input(tmp_path):
    from promptbake.cli import main

    for args, message in ((["eval", str(tmp_path)], "not a run directory"),
                          (["eval", str(tmp_path), "--strengths", "a,b"], "--strengths")):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 1, message


def test_strengths_and_probes_are_validated():
    with pytest.raises(ConfigError, match="strengths"):
        Baker(PROMPT, strengths=[1.5])
    with pytest.raises(ConfigError, match="probes"):
        Baker(PROMPT, probes="language=fr")
    with pytest.raises(PromptbakeError, match="Unknown probe"):  # before any model loads
        Baker(PROMPT, model="no-such-model", probes=["nope=1"]).check()


def test_sampled_probe_scores_count_every_sample():
    from helpers import make_tokenizer

    from promptbake.core.probes import parse_probes
    from promptbake.core.types import Query, Sample
    from promptbake.stages.evaluate.behaviour import Sides, sampled_probe_scores
    from promptbake.stages.render import Renderer

    tok = make_tokenizer("smollm2")
    sides = Sides(None, None, Renderer(tok, PROMPT))  # type: ignore[arg-type]
    queries = [Query(f"q{i}", ({"role": "user", "content": f"Question {i}?"},)) for i in range(2)]

    def said(text: str) -> Sample:
        return Sample(tok(text, add_special_tokens=False)["input_ids"], True)

    samples = {"prompted": [[said("Arr matey"), said("Arr")], [said("Arr"), said("Hello there")]],
               "baked": [[said("Hello"), said("Hi")], [said("Hey"), said("Arr")]]}
    scores = sampled_probe_scores(parse_probes(["starts_with=Arr"]), sides, queries, samples)
    assert scores == {"starts_with=Arr": {"prompted": 0.75, "baked": 0.25}}


def test_probe_samples_zero_skips_the_sampled_scores_and_bad_values_are_refused(baked):
    spec, result = baked
    e = evaluate_run(result.run_dir, PROMPT, report=False, probes=["max_length=6"], probe_samples=0,
                     progress=False)
    assert "probes_sampled" not in e and e["probes"]["max_length=6"] and "on_policy" in e
    with pytest.raises(ConfigError, match="probe_samples must be a whole number"):
        Baker(PROMPT, model=spec, probe_samples=-1)
