"""Composition techniques: merging adapters, Prompt Pursuit, sequential baking and prompt mixtures."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from promptbake import BakeConfig, Baker, ConfigError, prompt_sha256
from promptbake.builtin import models
from promptbake.builtin.hf import HFTeacher
from promptbake.builtin.merge import merge_adapter
from promptbake.core.types import Query
from promptbake.run.cache import TargetStore
from promptbake.run.rundir import RunDir
from promptbake.stages.generate import sample_split
from promptbake.stages.queries import load_queries
from promptbake.stages.render import Renderer
from promptbake.techniques import (
    MixtureBaker,
    assign_prompts,
    mix,
    mixture_prompt,
    parse_mixture,
    pursue,
    sequential,
)

PROMPT = "Always answer like a pirate, matey."
OTHER = "Reply in one short sentence."
FAST = {"max_queries": 3, "max_heldout": 2, "samples_per_query": 1, "max_new_tokens": 5, "epochs": 1,
        "batch_size": 4, "lr": 3e-2, "warmup_ratio": 0.0, "progress": False, "device": "cpu"}
IDS = torch.tensor([[1, 5, 9, 14, 3, 7, 20, 11]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _forget(spec: str) -> None:
    handle = models._cache.get((spec, "auto", "cpu"))
    if handle is not None:  # release(None) would forget every model
        models.release(handle)


def _params(spec: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in models.load(spec, "auto", "cpu").model.named_parameters()}


def _assert_unchanged(spec: str, before: dict[str, torch.Tensor]) -> None:
    handle = models.load(spec, "auto", "cpu")
    assert handle.peft_model is None
    after = dict(handle.model.named_parameters())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def _adapter(spec, tmp_path, name="run", **extra):
    settings = {**FAST, "evaluate": False, **extra}
    return Baker(PROMPT, model=spec, out=str(tmp_path / name), **settings).run().adapter_path


# -- merge ------------------------------------------------------------------------


def test_merge_equals_base_plus_adapter_loads_and_leaves_the_cached_base_alone(tiny_model, tmp_path):
    from peft import PeftModel

    spec = tiny_model()
    adapter = _adapter(spec, tmp_path)
    before = _params(spec)
    out = merge_adapter(adapter, tmp_path / "merged")
    _assert_unchanged(spec, before)
    base = models.load(spec, "auto", "cpu")
    with models.quiet_peft():
        reference = PeftModel.from_pretrained(copy.deepcopy(base.model), str(adapter))
    merged = models.load(str(out), "auto", "cpu")
    try:
        torch.testing.assert_close(_logits(merged.model), _logits(reference), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(_logits(merged.model), _logits(base.model), atol=1e-3)  # the bake is in it
        assert merged.tokenizer.chat_template == base.tokenizer.chat_template
        assert merged.tokenizer.encode("Hello there") == base.tokenizer.encode("Hello there")
    finally:
        _forget(str(out))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "manifest.json",
            "promptbake-merge.json"} <= names
    assert not any("lora" in n for n in names) and "promptbake.json" not in names  # a model, not an adapter
    info = json.loads((out / "promptbake-merge.json").read_text())
    assert info["base_model"] == spec and info["prompt_sha256"] == prompt_sha256(PROMPT) and "prompt" not in info
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left
    with pytest.raises(ConfigError, match="already exists"):
        merge_adapter(adapter, out)
    merge_adapter(adapter, out, overwrite=True)


def test_a_dequantized_gguf_model_merges_as_a_plain_one(tiny_model, tmp_path):
    """transformers marks a model loaded from a GGUF file (dequantized) as quantized and refuses to save it."""
    from types import SimpleNamespace

    spec = tiny_model()
    adapter = _adapter(spec, tmp_path)
    base = models.load(spec, "auto", "cpu").model
    gguf = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"), packed_modules={})
    saved = dict(base.__dict__)
    base.hf_quantizer, base.is_quantized = gguf, True
    try:
        out = merge_adapter(adapter, tmp_path / "merged")
        assert "quantization_config" not in json.loads((out / "config.json").read_text())
        assert base.hf_quantizer is gguf and base.is_quantized  # the shared base keeps its own state
        base.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="bitsandbytes"))
        with pytest.raises(ConfigError, match="quantized weights, which a LoRA adapter cannot be merged"):
            merge_adapter(adapter, tmp_path / "other")
    finally:
        for name in ("hf_quantizer", "is_quantized"):
            if name in saved:
                setattr(base, name, saved[name])
            else:
                delattr(base, name)


def test_merging_a_prefix_adapter_is_refused(tiny_model, tmp_path):
    spec = tiny_model()
    adapter = _adapter(spec, tmp_path, student="prefix")
    with pytest.raises(ConfigError, match="soft-prefix adapter, which adds no weights"):
        merge_adapter(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ConfigError, match="not an adapter directory"):
        merge_adapter(tmp_path, tmp_path / "merged")


# -- chains -----------------------------------------------------------------------


def _teacher_targets(spec: str, trajectories, top_k: int):
    teacher = HFTeacher()
    teacher.setup(BakeConfig(prompt=PROMPT, model=spec, device="cpu", progress=False))
    return teacher.score(trajectories, top_k=top_k, full=False)


def test_pursuit_bakes_each_round_with_the_last_rounds_merged_model_as_teacher(tiny_model, tmp_path):
    spec = tiny_model()
    before = _params(spec)
    out = tmp_path / "pursuit"
    results = pursue(PROMPT, 2, out, model=spec, loss="topk_kl", **FAST)  # top-K targets, compared below
    assert [r.run_dir for r in results] == [out / "round-1", out / "round-2"]
    merged1, merged2 = (out / "round-1" / "merged").resolve(), (out / "round-2" / "merged").resolve()
    assert json.loads((out / "round-1" / "config.json").read_text())["model"] == spec
    assert json.loads((out / "round-2" / "config.json").read_text())["model"] == str(merged1)
    assert json.loads((results[1].adapter_path / "promptbake.json").read_text())["base_model"] == str(merged1)
    summary = json.loads((out / "pursuit.json").read_text())
    assert summary["technique"] == "prompt pursuit" and "prompt" not in summary
    rounds = summary["rounds"]
    assert [r["merged"] for r in rounds] == [str(merged1), str(merged2)]
    assert [r["model"] for r in rounds] == [spec, str(merged1)]
    assert all(r["eval"]["kl_prompted_base"] > 0 and "gap_closed" in r["eval"] for r in rounds)
    assert PROMPT not in (out / "pursuit.json").read_text()
    _assert_unchanged(spec, before)  # the merges copied the shared base

    # Round 2's teacher is round 1's merged model (re-prompted), not the original base.
    try:
        merged = models.load(str(merged1), "auto", "cpu")
        assert not torch.allclose(_logits(merged.model), _logits(models.load(spec, "auto", "cpu").model), atol=1e-3)
        run2 = RunDir(out / "round-2")
        trajectories = run2.read_trajectories()[:2]
        store = TargetStore(run2.file("targets"))
        stored = store.read(store.index()["key"])[:2]
        k = json.loads((out / "round-2" / "config.json").read_text())["top_k"]
        for got, want in zip(stored, _teacher_targets(str(merged1), trajectories, k)):
            torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, rtol=1e-4, atol=1e-4)
        base = _teacher_targets(spec, trajectories, k)
        assert not torch.allclose(stored[0].topk_logprobs, base[0].topk_logprobs, atol=1e-3)
    finally:
        _forget(str(merged1))

    # A finished pursuit resumes to the same results without baking or merging again; a new one needs a free out.
    stamp = (merged2 / "model.safetensors").stat().st_mtime_ns
    again = pursue(PROMPT, 2, out, model=spec, loss="topk_kl", resume=True, **FAST)
    assert [r.adapter_path for r in again] == [r.adapter_path for r in results]
    assert (merged2 / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="already exists"):
        pursue(PROMPT, 2, out, model=spec, loss="topk_kl", **FAST)


def test_sequential_bakes_each_prompt_into_the_previous_result(tiny_model, tmp_path):
    spec = tiny_model()
    out = tmp_path / "seq"
    results = sequential([PROMPT, OTHER], out, model=spec, merge_last=False, include_prompt=True,
                         **{**FAST, "evaluate": False})
    assert [r.run_dir for r in results] == [out / "step-1", out / "step-2"]
    merged1 = (out / "step-1" / "merged").resolve()
    assert json.loads((out / "step-2" / "config.json").read_text())["model"] == str(merged1)
    assert not (out / "step-2" / "merged").exists()  # merge_last=False
    steps = json.loads((out / "sequence.json").read_text())["steps"]
    assert [s["prompt_sha256"] for s in steps] == [prompt_sha256(PROMPT), prompt_sha256(OTHER)]
    assert [s["prompt"] for s in steps] == [PROMPT, OTHER] and steps[1]["merged"] is None
    assert all(s["eval"] is None for s in steps)
    # Step 2's teacher saw the second prompt.
    tokenizer = models.load_tokenizer(str(merged1))
    queries = {q.id: q for q in load_queries(None, "train", FAST["max_queries"])}
    for t in RunDir(results[1].run_dir).read_trajectories():
        assert t.prompted_ids[: t.prompted_prefix_len] == Renderer(tokenizer, OTHER).prefix(queries[t.query_id], True)


@pytest.mark.parametrize("call, message", [
    (lambda out: pursue(PROMPT, 0, out), "rounds must be a positive integer"),
    (lambda out: pursue(PROMPT, 2, out, teacher_model="x"), "does not take the setting teacher_model"),
    (lambda out: pursue(PROMPT, 2, out, student="prefix"), "adapter cannot be merged into the model.s weights"),
    (lambda out: pursue(PROMPT, 2, out, epochs=0), "epochs must be a positive integer"),
    (lambda out: sequential([], out), "one or more prompts"),
    (lambda out: sequential([PROMPT, " "], out), "system prompt is empty"),
])
def test_chain_settings_are_refused_before_any_work(tmp_path, call, message):
    with pytest.raises(ConfigError, match=message):
        call(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- mixtures ---------------------------------------------------------------------


def test_assignment_is_deterministic_and_follows_the_weights():
    queries = [Query(id=str(i), messages=({"role": "user", "content": "q"},)) for i in range(4000)]
    a = assign_prompts(queries, [1.0, 3.0], seed=0)
    assert a == assign_prompts(queries, [1.0, 3.0], seed=0)
    assert a != assign_prompts(queries, [1.0, 3.0], seed=1)
    assert set(a) == {0, 1} and abs(a.count(1) / len(a) - 0.75) < 0.03
    three = assign_prompts(queries, [2.0, 1.0, 1.0], seed=5)
    for i, p in enumerate([0.5, 0.25, 0.25]):
        assert abs(three.count(i) / len(three) - p) < 0.03


def test_mixture_prompt_is_canonical_and_validated():
    text = mixture_prompt([PROMPT, OTHER], [1, 3])
    assert text == mixture_prompt([PROMPT, OTHER], [1.0, 3.0])
    assert text != mixture_prompt([OTHER, PROMPT], [3, 1])  # order decides the assignment
    assert parse_mixture(text) == ([PROMPT, OTHER], [1.0, 3.0])
    for prompts, weights, message in [
        ([PROMPT], [1.0], "at least two prompts"),
        ([PROMPT, OTHER], [1.0], "one weight per prompt: got 2 prompts and 1 weights"),
        ([PROMPT, OTHER], [1.0, 0.0], "positive numbers"),
        ([PROMPT, OTHER], [1.0, -2.0], "positive numbers"),
        ([PROMPT, OTHER], [1.0, float("nan")], "positive numbers"),
        ([PROMPT, ""], [1.0, 1.0], "non-empty"),
    ]:
        with pytest.raises(ConfigError, match=message):
            mixture_prompt(prompts, weights)
    with pytest.raises(ConfigError, match="must be the text"):
        MixtureBaker("Just a prompt.")


def test_mix_answers_each_query_under_its_assigned_prompt(tiny_model, tmp_path):
    spec = tiny_model()
    out = tmp_path / "mix"
    settings = {**FAST, "max_queries": 8, "max_heldout": 4, "samples_per_query": 2}
    result = mix([PROMPT, OTHER], [1, 1], out, model=spec, **settings)
    assert result.run_dir == out and result.eval["kl_prompted_base"] > 0
    tokenizer = models.load(spec, "auto", "cpu").tokenizer
    prompts = [PROMPT, OTHER]
    for split, name, n in (("train", "trajectories.jsonl", 2), ("heldout", "heldout.jsonl", 1)):
        queries = load_queries(None, split, settings["max_queries"] if split == "train" else settings["max_heldout"])
        assigned = assign_prompts(queries, [1.0, 1.0], seed=0)
        trajectories = RunDir(out).read_trajectories(name)
        assert [t.query_id for t in trajectories] == [q.id for q in queries for _ in range(n)]  # query order
        for t in trajectories:
            i = assigned[[q.id for q in queries].index(t.query_id)]
            query = next(q for q in queries if q.id == t.query_id)
            assert t.prompted_ids[: t.prompted_prefix_len] == Renderer(tokenizer, prompts[i]).prefix(query, True)
        if split == "train":
            assert set(assigned) == {0, 1}  # both prompts used
    config = json.loads((out / "config.json").read_text())
    assert config["prompt_sha256"] == prompt_sha256(mixture_prompt(prompts, [1, 1])) and "prompt" not in config
    info = json.loads((out / "mixture.json").read_text())
    assert [p["prompt_sha256"] for p in info["prompts"]] == [prompt_sha256(p) for p in prompts]
    assert [p["probability"] for p in info["prompts"]] == [0.5, 0.5]
    assert sum(info["queries_per_prompt"]["train"]) == 8
    meta = json.loads((result.adapter_path / "promptbake.json").read_text())
    assert "prompt" not in meta and len(meta["mixture"]) == 2
    for path in out.rglob("*.json*"):
        assert PROMPT not in path.read_text() and OTHER not in path.read_text()
    # Resuming the finished bake returns its result; include_prompt keeps the texts.
    assert mix([PROMPT, OTHER], [1, 1], out, model=spec, resume=True, **settings).adapter_path == result.adapter_path
    with pytest.raises(ConfigError, match="prompt differs"):
        mix([PROMPT, OTHER], [1, 2], out, model=spec, resume=True, **settings)
    kept = mix(prompts, [2, 1], tmp_path / "kept", model=spec, include_prompt=True, **{**FAST, "evaluate": False})
    assert [p["prompt"] for p in json.loads((kept.run_dir / "mixture.json").read_text())["prompts"]] == prompts


def test_the_bakes_renderer_renders_each_query_with_its_assigned_prompt(tiny_model):
    """What the Baker renders after sampling (answers, on-policy evaluation) uses the same prompts."""
    spec = tiny_model()
    baker = MixtureBaker(mixture_prompt([PROMPT, OTHER], [1, 1]), model=spec, **FAST)
    teacher = HFTeacher()
    teacher.setup(baker.config)
    baker.teacher = teacher
    tokenizer = teacher.tokenizer
    baker.student.setup(baker.config, 1)
    renderer = baker.make_renderer(256)
    queries = load_queries(None, "heldout", 6)
    trajectories, _ = sample_split(teacher, renderer, queries, 1, baker.config, {}, split="heldout")
    assigned = assign_prompts(queries, [1.0, 1.0], seed=0)
    assert set(assigned) == {0, 1} and renderer.counts["heldout"] == [assigned.count(0), assigned.count(1)]
    for q, i, t in zip(queries, assigned, trajectories):
        want = Renderer(tokenizer, [PROMPT, OTHER][i]).prefix(q, True)
        assert renderer.prefix(q, True) == want == t.prompted_ids[: t.prompted_prefix_len]
        assert renderer.prefix(q, False) == Renderer(tokenizer, PROMPT).prefix(q, False)
    assert isinstance(renderer, Renderer)
    with pytest.raises(ConfigError, match="was not assigned a prompt"):
        renderer.prefix(Query(id="new", messages=({"role": "user", "content": "hi"},)), True)
    baker.close()


def test_invalid_mixtures_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="positive numbers"):
        mix([PROMPT, OTHER], [1, 0], tmp_path / "m")
    with pytest.raises(ConfigError, match="one weight per prompt"):
        mix([PROMPT, OTHER, "Be kind."], [1, 2], tmp_path / "m")
    assert not (tmp_path / "m").exists()


# -- command line -------------------------------------------------------------------


def _sets(**extra) -> list[str]:
    settings = {"max_queries": 2, "max_heldout": 2, "samples_per_query": 1, "max_new_tokens": 4, "epochs": 1,
                "device": "cpu", **extra}
    return [arg for k, v in settings.items() for arg in ("-s", f"{k}={v}")]


def test_cli_techniques(tiny_model, tmp_path):
    from promptbake.cli import cli

    spec = tiny_model()
    runner = CliRunner()

    result = runner.invoke(cli, ["pursue", "-p", PROMPT, "--rounds", "2", "-o", str(tmp_path / "p"), "-m", spec,
                                 "--quiet", *_sets()])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Round 1:") and "of the gap closed" in lines[0] and "merged model" in lines[0]
    assert lines[1].startswith("Round 2:") and (tmp_path / "p" / "pursuit.json").is_file()

    result = runner.invoke(cli, ["sequence", "-p", PROMPT, "-p", OTHER, "-o", str(tmp_path / "s"), "-m", spec,
                                 "--quiet", *_sets(evaluate="false")])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines()] == ["Step 1", "Step 2", "Summary"]

    result = runner.invoke(cli, ["mix", "-p", PROMPT, "-w", "1", "-p", OTHER, "-w", "2", "-o", str(tmp_path / "m"),
                                 "-m", spec, "--quiet", *_sets()])
    assert result.exit_code == 0, result.output
    assert "Mixture:" in result.output and "of the gap closed" in result.output
    assert [p["weight"] for p in json.loads((tmp_path / "m" / "mixture.json").read_text())["prompts"]] == [1.0, 2.0]

    result = runner.invoke(cli, ["merge", "--adapter", str(tmp_path / "m" / "adapter"), "-o", str(tmp_path / "mm")])
    assert result.exit_code == 0, result.output
    assert "Merged model:" in result.output and (tmp_path / "mm" / "model.safetensors").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["mix", "-p", "a", "-w", "1", "-p", "b", "-w", "-1"], "Mixture weights must be positive numbers"),
    (["mix", "-p", "a", "-w", "1"], "at least two prompts"),
    (["pursue", "-p", "a", "--rounds", "0"], "rounds must be a positive integer"),
    (["sequence", "-p", "a", "-s", "teacher_model=x"], "does not take the setting teacher_model"),
    (["merge", "--adapter", "{tmp}"], "is not an adapter directory"),
])
def test_cli_errors_are_one_sentence(tmp_path, capsys, args, fragment):
    from promptbake.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*(a.format(tmp=tmp_path) for a in args), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("Error:") and fragment in err[0], err
    assert not (tmp_path / "out").exists()
