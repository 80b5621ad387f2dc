"""End-to-end bakes on tiny local models, capability checks and the training step."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from promptbake import (
    BakeConfig,
    Baker,
    CapabilityError,
    ConfigError,
    TeacherCapabilities,
    prompt_sha256,
)
from promptbake.builtin.hf import HFTeacher
from promptbake.builtin.peft import PeftStudent
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Prefix, Query

PROMPT = "Always answer like a pirate, matey."


@pytest.mark.parametrize("loss", ["ce", "topk_kl", "full_kl"])
def test_bake_writes_a_complete_run_directory(tiny_model, bake_settings, loss):
    spec = tiny_model()
    result = Baker(PROMPT, teacher="hf", student="peft", loss=loss, model=spec, **bake_settings).run()
    run = result.run_dir
    assert (result.adapter_path / "adapter_config.json").is_file()
    assert (result.adapter_path / "adapter_model.safetensors").is_file()
    meta = json.loads((result.adapter_path / "promptbake.json").read_text())
    assert meta["prompt_sha256"] == prompt_sha256(PROMPT) and "prompt" not in meta
    assert meta["loss"] == loss and meta["base_model"] == spec
    config = json.loads((run / "config.json").read_text())
    assert "prompt" not in config and config["prompt_sha256"] == prompt_sha256(PROMPT)
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            assert PROMPT not in path.read_text()
    trajectories = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 6 * 2
    index = json.loads((run / "targets" / "index.json").read_text())
    assert index["count"] == len(trajectories)
    shard = load_file(run / "targets" / index["shards"][0]["file"])
    kinds = set(shard) - {"lengths"}  # one tensor per field, and each target's row count
    expected = {"ce": {"sampled_ids"}, "topk_kl": {"sampled_ids", "topk_ids", "topk_logprobs", "tail_logprob"},
                # the hf teacher shares the student's weights: full targets travel as its hidden states
                "full_kl": {"sampled_ids", "hidden"}}[loss]
    assert kinds == expected
    if loss == "full_kl":
        assert shard["hidden"].dtype == torch.float16 and shard["hidden"].shape[-1] == 32  # the tiny model's width
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["stage"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert result.metrics["steps"] == 6
    e = result.eval
    assert e is not None and e["trajectories"] == 3 and e["tokens"] > 0
    assert json.loads((run / "eval.json").read_text()) == e


@pytest.mark.parametrize("loss", ["topk_kl", "full_kl"])
def test_kl_bake_lowers_heldout_kl(tiny_model, bake_settings, loss):
    spec = tiny_model()
    settings = {**bake_settings, "epochs": 4, "lr": 3e-3, "max_queries": 10}
    e = Baker(PROMPT, loss=loss, model=spec, **settings).run().eval
    assert e["kl_prompted_baked"] < 0.8 * e["kl_prompted_base"]
    # The per-position curve covers every response position and averages back to the headline KL.
    curve = e["kl_by_position"]
    assert len(curve["baked"]) == len(curve["base"]) == len(curve["tokens"]) == settings["max_new_tokens"]
    assert sum(curve["tokens"]) == e["tokens"] and curve["tokens"][0] == e["trajectories"]
    for side in ("baked", "base"):
        mean = sum(k * n for k, n in zip(curve[side], curve["tokens"]) if n) / e["tokens"]
        assert mean == pytest.approx(e[f"kl_prompted_{side}"], rel=1e-5)


@pytest.mark.parametrize("loss", ["topk_kl", "full_kl"])
def test_a_model_loaded_in_bfloat16_bakes_and_evaluates(tiny_model, bake_settings, loss):
    """``dtype="bfloat16"`` (what ``auto`` loads on a CUDA GPU): the teacher samples and scores,
    the student trains and the evaluation runs on bfloat16 weights, the adapter's own in float32
    (peft's default). full_kl's hidden-state targets go through the bfloat16 output layer."""
    import copy

    from promptbake.builtin import models

    spec = tiny_model()
    plain = models.cached(spec)
    low = models.ModelHandle(spec=spec, model=copy.deepcopy(plain.model).to(torch.bfloat16),
                             tokenizer=plain.tokenizer, device="cpu")
    models.register_handle(low, dtype="bfloat16")
    try:
        settings = {**bake_settings, "epochs": 4, "lr": 3e-3, "max_queries": 10, "dtype": "bfloat16"}
        result = Baker(PROMPT, loss=loss, model=spec, **settings).run()
        assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
    finally:
        models.release(low)
    e = result.eval
    assert e["kl_prompted_baked"] < 0.8 * e["kl_prompted_base"]
    assert result.metrics["steps"] > 0
    saved = load_file(result.adapter_path / "adapter_model.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}


def test_same_seed_same_adapter(tiny_model, bake_settings, tmp_path):
    spec = tiny_model()
    a = Baker(PROMPT, model=spec, **{**bake_settings, "out": str(tmp_path / "a")}).run()
    b = Baker(PROMPT, model=spec, **{**bake_settings, "out": str(tmp_path / "b")}).run()
    wa = load_file(a.adapter_path / "adapter_model.safetensors")
    wb = load_file(b.adapter_path / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key])


def test_include_prompt_stores_the_text(tiny_model, bake_settings):
    spec = tiny_model()
    result = Baker(PROMPT, model=spec, include_prompt=True, evaluate=False, **bake_settings).run()
    assert json.loads((result.adapter_path / "promptbake.json").read_text())["prompt"] == PROMPT
    assert result.eval is None


def test_existing_output_directory_is_refused_unless_overwrite(tiny_model, bake_settings, tmp_path):
    spec = tiny_model()
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        Baker(PROMPT, model=spec, **bake_settings).run()
    assert (out / "keep.txt").exists()
    Baker(PROMPT, model=spec, overwrite=True, **{**bake_settings, "evaluate": False}).run()
    assert not (out / "keep.txt").exists() and (out / "adapter").is_dir()


class HostedLikeTeacher(HFTeacher):
    """An hf teacher that claims a hosted API's limits (no full logits, K <= 20)."""

    name = "hosted-like"
    capabilities = TeacherCapabilities(can_generate=True, can_score=True, max_top_k=20, full_logits=False)


def test_full_kl_with_a_teacher_without_full_logits_is_refused_before_work(tmp_path):
    baker = Baker(PROMPT, teacher=HostedLikeTeacher(), loss="full_kl", out=str(tmp_path / "r"))
    with pytest.raises(CapabilityError, match="needs full-vocabulary logits, which teacher 'hosted-like' cannot give"):
        baker.run()
    assert not (tmp_path / "r").exists()


def test_an_unset_top_k_is_the_teacher_default_and_is_recorded(tiny_model, bake_settings):
    assert Baker(PROMPT).config.top_k == 256  # hf: a local model gives any K
    assert Baker(PROMPT, teacher=HostedLikeTeacher()).config.top_k == 20  # capped APIs keep their 20
    assert Baker(PROMPT, top_k=7).config.top_k == 7
    run = Baker(PROMPT, model=tiny_model(), evaluate=False, **bake_settings).run().run_dir
    assert json.loads((run / "config.json").read_text())["top_k"] == 256


def test_top_k_above_the_teacher_limit_is_refused(tmp_path):
    with pytest.raises(CapabilityError, match="top_k=50 is above teacher 'hosted-like''s limit of 20"):
        Baker(PROMPT, teacher=HostedLikeTeacher(), loss="topk_kl", top_k=50, out=str(tmp_path / "r")).run()


def test_student_that_cannot_run_a_loss_is_refused(tmp_path):
    from promptbake import StudentCapabilities

    class CeOnly(PeftStudent):
        name = "ce-only"
        capabilities = StudentCapabilities(losses=frozenset({"ce"}))

    with pytest.raises(CapabilityError, match="cannot train with loss 'full_kl'; it supports: ce"):
        Baker(PROMPT, student=CeOnly(), loss="full_kl").check()


def test_different_tokenizers_with_a_kl_loss_are_refused(tiny_model, bake_settings):
    student_spec, teacher_spec = tiny_model("smollm2"), tiny_model("llama3")
    baker = Baker(PROMPT, model=student_spec, teacher_model=teacher_spec, loss="topk_kl", **bake_settings)
    with pytest.raises(CapabilityError, match="tokenizers differ"):
        baker.run()


def test_teacher_shares_the_students_weights(tiny_model, bake_settings):
    from promptbake.builtin import models

    spec = tiny_model()
    config = BakeConfig(prompt=PROMPT, model=spec, **bake_settings)
    student, teacher = PeftStudent(), HFTeacher()
    student.setup(config, total_steps=1)
    teacher.setup(config)
    try:
        assert teacher.handle is student.handle
        base = teacher.handle.model
        lora_a = next(p for n, p in base.named_parameters() if "lora_B" in n)
        with torch.no_grad():
            lora_a.fill_(0.5)  # make the adapter matter
        ids = torch.tensor([[1, 2, 3, 4]])
        with teacher.handle.adapter_disabled():
            disabled = base(input_ids=ids).logits
        enabled = student.handle.peft_model(input_ids=ids).logits
        assert not torch.allclose(disabled, enabled)
    finally:
        student.close()
    assert models.load(spec, "auto", "cpu").peft_model is None


def _grads_after_step(spec, config, micro_batches_fn, head_chunk=None, bf16=False, seen=None, **options):
    from promptbake.builtin.losses import TopKKLLoss

    baker = Baker(config=config)
    student, teacher = PeftStudent(head_chunk=head_chunk, bf16=bf16, **options), HFTeacher()
    student.setup(config, total_steps=10)
    teacher.setup(config)
    try:
        from promptbake.stages.generate import sample_split
        from promptbake.stages.queries import load_queries
        from promptbake.stages.render import Renderer

        renderer = Renderer(student.tokenizer, PROMPT, 256)
        generated, _ = sample_split(teacher, renderer, load_queries(None, "train", 3), 2, baker.config, {})
        # Cut responses to unequal lengths so micro-batches differ in token counts.
        trajs = [renderer.trajectory(Query(t.query_id, ({"role": "user", "content": "x"},)),
                                     t.response_ids[: 3 + i], prefixes=(
                                         t.prompted_ids[: t.prompted_prefix_len],
                                         t.unprompted_ids[: t.unprompted_prefix_len]))
                 for i, t in enumerate(generated)]
        targets = teacher.score(trajs, top_k=5, full=False)
        pairs = list(zip(trajs, targets))
        grads = {}
        student.optimizer.step = lambda: grads.update(  # capture instead of stepping
            {n: p.grad.clone() for n, p in student.handle.peft_model.named_parameters() if p.grad is not None})
        metrics = student.step(micro_batches_fn(pairs), TopKKLLoss())
        if seen is not None:  # what the step left behind
            seen.update(metrics=metrics, low=dict(student._low),
                        head=student.handle.peft_model.get_base_model().get_output_embeddings(),
                        patched=[m for m in student.handle.peft_model.modules() if "forward" in vars(m)])
        return grads, [t.response_len for t in trajs]
    finally:
        student.close()


@pytest.mark.parametrize("head_chunk", [None, 4], ids=["logits", "hidden-state chunks"])
def test_bf16_training_runs_the_decoder_in_bfloat16_and_keeps_float32_gradients(tiny_model, bake_settings,
                                                                                head_chunk, monkeypatch):
    spec = tiny_model()
    config = BakeConfig(prompt=PROMPT, model=spec, **{**bake_settings, "max_grad_norm": 0.0})
    plain, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk)
    dtypes = set()
    forward = torch.nn.Linear.forward

    def linear(self, x):
        out = forward(self, x)
        if torch.is_grad_enabled():  # the training forward, not the teacher's scoring
            dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", linear)
    mixed, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk, bf16=True)
    assert torch.bfloat16 in dtypes
    assert mixed.keys() == plain.keys() and mixed
    flat = [torch.cat([g[n].flatten() for n in sorted(plain)]) for g in (plain, mixed)]
    assert all(g.dtype == torch.float32 for g in mixed.values())
    assert not torch.equal(*flat)  # another precision...
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99  # ...the same step


def test_generate_bf16_reaches_every_local_sampler(tiny_model, bake_settings, monkeypatch):
    """``generate_bf16``: the hf teacher's samples and the peft student's answers decode with
    bfloat16 products (sample_rows' ``bf16``); off by default."""
    from promptbake.builtin import hf, peft

    seen: dict[str, set[bool]] = {"teacher": set(), "student": set()}
    for module, side in ((hf, "teacher"), (peft, "student")):
        def spy(*args, _real=module.sample_rows, _side=side, **kwargs):
            seen[_side].add(kwargs.get("bf16", False))
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, "sample_rows", spy)
    spec = tiny_model()
    Baker(PROMPT, model=spec, **{**bake_settings, "out": bake_settings["out"] + "-plain"}).run()
    assert seen == {"teacher": {False}, "student": {False}}
    seen = {"teacher": set(), "student": set()}
    e = Baker(PROMPT, model=spec, generate_bf16=True, **bake_settings).run().eval
    assert seen == {"teacher": {True}, "student": {True}}
    assert e["trajectories"] == 3 and e["kl_prompted_base"] > 0
    with pytest.raises(ConfigError, match="generate_bf16 must be true or false"):
        BakeConfig(prompt=PROMPT, generate_bf16="yes")


def test_bf16_must_be_a_boolean():
    with pytest.raises(ConfigError, match="bf16 must be true or false"):
        PeftStudent(bf16="yes")
    with pytest.raises(ConfigError, match="bf16_grads must be true or false"):
        PeftStudent(bf16_grads=1)
    with pytest.raises(ConfigError, match="bf16_forward must be true or false"):
        PeftStudent(bf16_forward="no")


@pytest.mark.parametrize("head_chunk", [None, 4], ids=["logits", "hidden-state chunks"])
def test_bf16_grads_keeps_every_forward_in_float32_and_takes_gradients_through_bfloat16_weights(
        tiny_model, bake_settings, head_chunk):
    spec = tiny_model()
    config = BakeConfig(prompt=PROMPT, model=spec, **{**bake_settings, "max_grad_norm": 0.0})
    plain_seen, low_seen = {}, {}
    plain, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk, seen=plain_seen)
    low, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk, seen=low_seen, bf16_grads=True)
    assert low_seen["metrics"]["loss"] == plain_seen["metrics"]["loss"]  # the same forward, to the bit
    copies = low_seen["low"]
    # A bfloat16 copy of every frozen linear weight (the output layer's too), none of the adapter's.
    assert copies and all(w.dtype == torch.bfloat16 for w in copies.values())
    assert low_seen["head"] in copies
    assert not any(layer.weight.requires_grad for layer in copies)
    assert not low_seen["patched"] and not plain_seen["low"]  # layers are themselves again after the step
    assert low.keys() == plain.keys() and low
    flat = [torch.cat([g[n].flatten() for n in sorted(plain)]) for g in (plain, low)]
    assert all(g.dtype == torch.float32 for g in low.values())
    assert not torch.equal(*flat)  # gradients through bfloat16 weights...
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.999  # ...pointing the same way


@pytest.mark.parametrize("head_chunk", [None, 4], ids=["logits", "hidden-state chunks"])
def test_bf16_forward_takes_the_decoders_frozen_products_from_the_copies_and_keeps_the_head_float32(
        tiny_model, bake_settings, head_chunk, monkeypatch):
    spec = tiny_model()
    config = BakeConfig(prompt=PROMPT, model=spec, **{**bake_settings, "max_grad_norm": 0.0})
    plain_seen, low_seen = {}, {}
    plain, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk, seen=plain_seen)
    products: dict[str, set[torch.dtype]] = {"head": set(), "decoder": set()}
    linear = torch.nn.functional.linear

    def spy(x, w, b=None):  # every product: the teacher's (float32) and the step's
        products["head" if w.shape[0] >= 100 else "decoder"].add(w.dtype)  # the head: a vocabulary's rows
        return linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    low, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk, seen=low_seen, bf16_forward=True)
    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    # Forward products from the decoder's bfloat16 copies (bf16_grads alone makes none: its
    # backward is a matmul); the adapter's and the teacher's float32; the head's always float32.
    assert products["decoder"] == {torch.bfloat16, torch.float32} and products["head"] == {torch.float32}
    assert low_seen["low"] and all(w.dtype == torch.bfloat16 for w in low_seen["low"].values())
    assert not low_seen["patched"]  # layers are themselves again after the step
    assert low_seen["metrics"]["loss"] != plain_seen["metrics"]["loss"]  # another forward...
    assert low_seen["metrics"]["loss"] == pytest.approx(plain_seen["metrics"]["loss"], rel=0.05)
    flat = [torch.cat([g[n].flatten() for n in sorted(plain)]) for g in (plain, low)]
    assert low.keys() == plain.keys() and all(g.dtype == torch.float32 for g in low.values())
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99  # ...the same step


def test_gradient_accumulation_normalises_by_the_whole_step(tiny_model, bake_settings):
    spec = tiny_model()
    config = BakeConfig(prompt=PROMPT, model=spec, **{**bake_settings, "max_grad_norm": 0.0, "temperature": 1.5})
    whole, lengths = _grads_after_step(spec, config, lambda p: [p])
    assert len(set(lengths)) > 1  # micro-batches of unequal token counts
    split, _ = _grads_after_step(spec, config, lambda p: [p[:1], p[1:4], p[4:]])
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7)


def test_chunked_output_layer_gives_the_same_step(tiny_model, bake_settings):
    spec = tiny_model()
    config = BakeConfig(prompt=PROMPT, model=spec, **{**bake_settings, "max_grad_norm": 0.0})
    whole, _ = _grads_after_step(spec, config, lambda p: [p])
    chunked, _ = _grads_after_step(spec, config, lambda p: [p], head_chunk=4)
    assert whole.keys() == chunked.keys() and whole
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-7)


def test_names_override_a_given_config():
    config = BakeConfig(prompt=PROMPT, loss="topk_kl", teacher="hf")
    baker = Baker(config=config, loss="full_kl", epochs=2)
    assert baker.loss.name == "full_kl" and baker.config.loss == "full_kl" and baker.config.epochs == 2
    assert Baker(config=config).loss.name == "topk_kl"
    # Unset: exact full_kl where the hf teacher shares the peft student's weights, else top-K.
    assert Baker(PROMPT).config.loss == "full_kl"
    assert Baker(PROMPT, teacher_model="other-model").config.loss == "topk_kl"
    assert Baker(PROMPT, teacher=HostedLikeTeacher()).config.loss == "topk_kl"
    from promptbake.core.interfaces import StudentCapabilities

    class NoHidden(PeftStudent):
        capabilities = StudentCapabilities()

    assert Baker(PROMPT, student=NoHidden()).config.loss == "topk_kl"


@pytest.mark.parametrize("caps, ok", [
    (TeacherCapabilities(can_score=False, sample_logprobs=True, max_top_k=20), True),
    (TeacherCapabilities(can_score=False, sample_logprobs=False), False),
])
def test_topk_needs_scoring_or_logprobs_with_samples(caps, ok):
    class Hosted(HFTeacher):
        name = "hosted"
        capabilities = caps

    baker = Baker(PROMPT, teacher=Hosted(), loss="topk_kl")
    if ok:
        baker.check()
    else:
        with pytest.raises(CapabilityError, match="needs the teacher's top-K log-probabilities"):
            baker.check()


def test_tally_curve_skips_excluded_positions():
    from promptbake.core.interfaces import BatchTargets
    from promptbake.stages.evaluate.heldout import Tally

    prompted = torch.log_softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), -1)
    other = torch.log_softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(1)), -1)
    values, ids = prompted.topk(3, -1)
    targets = BatchTargets(sampled_ids=ids[:, 0], topk_ids=ids, topk_logprobs=values,
                           tail_logprob=torch.log1p(-values.exp().sum(-1)),
                           weight=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
    tally = Tally(full=False)
    tally.add(targets, other, positions=[0, 1, 2, 0, 1])  # two responses: 3 and 2 tokens
    assert tally.tokens == 4 and tally.position_tokens == [2, 1, 1]
    curve = tally.curve()
    assert sum(k * n for k, n in zip(curve, tally.position_tokens)) == pytest.approx(tally.kl, rel=1e-6)
    assert Tally.from_json(tally.to_json()).curve() == curve


def test_generate_strength_scales_the_adapter(tiny_model, bake_settings, tmp_path):
    from promptbake.compare import compare

    spec = tiny_model()
    adapter = Baker(PROMPT, model=spec, **{**bake_settings, "lr": 3e-2, "evaluate": False}).run().adapter_path
    full = compare(adapter, "Hello there?", max_new_tokens=6)
    none = compare(adapter, "Hello there?", max_new_tokens=6, strength=0.0)
    assert full["baked"] != full["base"]  # the bake changed the answer...
    assert none["baked"] == none["base"] == full["base"]  # ...and strength 0 is the base model again
    assert compare(adapter, "Hello there?", max_new_tokens=6, strength=1.0) == full
    compare(adapter, "Hello there?", max_new_tokens=6, strength=0.5)
    with pytest.raises(ConfigError, match="strength must be between 0 and 1"):
        compare(adapter, "Hello there?", strength=1.5)
    prefix = Baker(PROMPT, student="prefix", model=spec,
                   **{**bake_settings, "evaluate": False, "out": str(tmp_path / "p")}).run().adapter_path
    with pytest.raises(ConfigError, match="soft-prefix adapter has no scale"):
        compare(prefix, "Hello there?", strength=0.5)
    assert compare(prefix, "Hello there?", max_new_tokens=2)  # the model was given back intact


def test_train_runs_the_batches_epoch_batches_plans(tmp_path):
    from promptbake.core.interfaces import StudentCapabilities
    from promptbake.core.types import Trajectory
    from promptbake.run.rundir import RunDir
    from promptbake.stages import train

    class Recorder(PeftStudent):
        name = "recorder"
        capabilities = StudentCapabilities()

        def __init__(self) -> None:
            self.seen: list[list[int]] = []

        def step(self, batch, loss):
            self.seen.extend([[int(t.query_id) for t, _ in mb] for mb in batch])
            return {"loss": 0.0}

    # Lengths 3..40: bucketing sorts within windows, so the plan is not a plain shuffle.
    trajs = [Trajectory(query_id=str(i), sample=0, prompted_ids=[1] * (4 + i), unprompted_ids=[1] * (3 + i),
                        response_len=1 + i % 3) for i in range(38)]
    for seed in (0, 1):
        baker = Baker(PROMPT, student=Recorder(), loss="ce", epochs=3, batch_size=4, grad_accum=2, seed=seed)
        plan = train.epoch_batches(trajs, baker.config)
        assert len(plan) == 3 and all(sorted(i for mb in epoch for i in mb) == list(range(38)) for epoch in plan)
        train.train(baker.student, baker.loss, trajs, [None] * len(trajs), baker.config,
                    RunDir.create(tmp_path / f"run{seed}"), "key")
        assert baker.student.seen == [mb for epoch in plan for mb in epoch]
    assert train.epoch_batches(trajs, Baker(PROMPT, epochs=3, batch_size=4, seed=0).config) != plan  # the seed moves it


def test_loss_options_that_do_not_fit_the_loss_are_refused_in_one_sentence():
    with pytest.raises(ConfigError, match=r"Loss 'full_kl' \(the default here, as no loss was named\) does not "
                                          r"take loss_options \['tail'\]"):
        Baker(PROMPT, loss_options={"tail": False})
    assert Baker(PROMPT, loss="topk_kl", loss_options={"tail": False}).loss.tail is False


def test_the_default_loss_follows_what_will_be_stored(tiny_model, bake_settings, tmp_path):
    """full_kl is the default only where its targets travel as the teacher's hidden states: the
    prefix student cannot read them, and a model whose logits are not its output layer's (Granite
    divides them by logits_scaling) gives none, so both would store 2V bytes a token."""
    from helpers import registered
    from transformers import GraniteConfig, GraniteForCausalLM

    from promptbake.builtin import models

    assert Baker(PROMPT, student="prefix", model=tiny_model()).config.loss == "topk_kl"
    spec = tiny_model()
    assert Baker(PROMPT, model=spec).config.loss == "full_kl"
    tok = models.load(spec).tokenizer
    config = GraniteConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=8.0,
                           pad_token_id=tok.pad_token_id)
    with registered("tiny-granite", GraniteForCausalLM(config).eval(), tok):
        result = Baker(PROMPT, model="tiny-granite", **{**bake_settings, "evaluate": False}).run()
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["loss"] == "topk_kl"
    assert json.loads((result.adapter_path / "promptbake.json").read_text())["loss"] == "topk_kl"
    # Named, full_kl is kept (and stored as full log-probs).
    with registered("tiny-granite", GraniteForCausalLM(config).eval(), tok):
        named = Baker(PROMPT, model="tiny-granite", loss="full_kl",
                      **{**bake_settings, "evaluate": False, "out": str(tmp_path / "named")}).run()
    assert json.loads((named.run_dir / "config.json").read_text())["loss"] == "full_kl"


def test_sampling_stops_at_every_end_id_of_the_models_generation_config(tiny_model, bake_settings):
    from promptbake.builtin import models

    spec = tiny_model("llama3")
    handle = models.load(spec)
    extra = handle.tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    handle.model.generation_config.eos_token_id = [handle.tokenizer.eos_token_id, extra]
    baker = Baker(PROMPT, model=spec, **bake_settings)
    baker.student.setup(baker.config, 1)
    try:
        assert extra in baker.make_renderer(512).stop_ids
    finally:
        baker.close()


def test_vocabularies_of_different_widths_are_refused_before_any_work(tiny_model, bake_settings, tmp_path):
    """Teacher and student over one tokenizer whose output layers cover it differently (one model has
    fewer rows than the tokenizer has tokens) cannot be compared token by token."""
    from helpers import registered
    from transformers import LlamaConfig, LlamaForCausalLM

    from promptbake.builtin import models

    spec = tiny_model()
    tok = models.load(spec).tokenizer
    short = LlamaConfig(vocab_size=len(tok) - 8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
    with registered("tiny-short", LlamaForCausalLM(short).eval(), tok), pytest.raises(CapabilityError, match="logits"):
        Baker(PROMPT, model=spec, teacher_model="tiny-short", loss="full_kl", **bake_settings).run()
    assert not (tmp_path / "run").exists()


def test_generation_config_extras_a_teacher_cannot_apply_are_refused(tiny_model, bake_settings, tmp_path):
    import dataclasses

    from promptbake.builtin import models

    spec = tiny_model()
    models.load(spec).model.generation_config.repetition_penalty = 1.05

    class Plain(HFTeacher):
        capabilities = dataclasses.replace(HFTeacher.capabilities, sampling_extras=frozenset())

    with pytest.raises(CapabilityError, match="repetition_penalty, which teacher 'hf' cannot apply"):
        Baker(PROMPT, teacher=Plain(), model=spec, generation_config=True, **bake_settings).run()
    assert not (tmp_path / "run").exists()
    # Off (the default), every side samples the plain distribution, whatever the teacher.
    result = Baker(PROMPT, teacher=Plain(), model=spec, **{**bake_settings, "evaluate": False}).run()
    assert json.loads((result.run_dir / "config.json").read_text())["generation_config"] is False


def test_the_students_rows_run_their_shared_start_once(tiny_model, bake_settings, monkeypatch):
    """The student's unprompted rows of one call all begin with the chat template's default
    system message (SmolLM2's): generating and scoring run it once, with the adapter as the call
    runs it (on and off), and give what running it in every row gives."""
    from promptbake.builtin.prefix_cache import common_prefix
    from promptbake.stages.render import Renderer

    spec = tiny_model("smollm2")
    config = BakeConfig(prompt=PROMPT, model=spec, **bake_settings)
    student = PeftStudent()
    student.setup(config, total_steps=1)
    try:
        model = student.handle.peft_model
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))  # an adapter that matters
        renderer = Renderer(student.tokenizer, PROMPT, 256)
        queries = [Query(f"q{i}", ({"role": "user", "content": "Why is the sea so wide? " * (i + 1)},))
                   for i in range(4)]
        prefixes = [Prefix(ids=renderer.prefix(q, False), messages=()) for q in queries]
        start = common_prefix([p.ids for p in prefixes])
        assert start >= 8  # the default system message, and more
        shapes: list[tuple[int, int]] = []
        hook = model.get_base_model().model.register_forward_pre_hook(
            lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
        greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=5, min_new_tokens=5)

        def run(strength):
            shapes.clear()
            tokens = [[s.token_ids for s in g] for g in student.generate(prefixes, greedy, strength=strength)]
            generating = list(shapes)
            trajs = [renderer.trajectory(q, g[0]) for q, g in zip(queries, tokens)]
            scored = student.score(trajs, full=True, strength=strength)
            return tokens, [t.full_logprobs for t in scored], (generating, shapes[len(generating):])

        try:
            shared = {s: run(s) for s in (1.0, 0.0)}
            monkeypatch.setattr(PeftStudent, "_shared_start", lambda self: None)
            plain = {s: run(s) for s in (1.0, 0.0)}
        finally:
            hook.remove()
        for s in (1.0, 0.0):
            assert shared[s][0] == plain[s][0]
            for a, b in zip(shared[s][1], plain[s][1]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            longest = max(len(p.ids) for p in prefixes)
            for calls, whole in ((shared[s][2], False), (plain[s][2], True)):
                for forwards in calls:  # generating, then scoring
                    # The start once (one row), every other forward behind it; or whole rows.
                    assert ((1, start) in forwards) is not whole
                    assert max(w for rows, w in forwards if rows > 1) >= longest if whole else \
                        all(w <= longest + 5 - start for rows, w in forwards if rows > 1)
        assert shared[1.0][0] != shared[0.0][0]  # the adapter was on for one and off for the other
    finally:
        student.close()
