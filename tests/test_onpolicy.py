"""On-policy baking: part of each epoch is sampled by the student and scored by the teacher."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_resume import SETTINGS, adapter, run_harness

from promptbake import Baker, CapabilityError, ConfigError
from promptbake.builtin.hf import HFTeacher
from promptbake.run.chunks import ChunkStore
from promptbake.run.rundir import RunDir

PROMPT = "Always answer like a pirate, matey."


@pytest.mark.parametrize("loss", ["topk_kl", "full_kl"])
def test_each_epoch_trains_on_student_samples_scored_by_the_teacher(tiny_model, bake_settings, loss):
    spec = tiny_model()
    baker = Baker(PROMPT, model=spec, on_policy=0.5, evaluate=False, loss=loss, **bake_settings)
    result = baker.run()
    run = result.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    sampled = [r for r in records if r.get("stage") == "on_policy"]
    n = bake_settings["max_queries"] * bake_settings["samples_per_query"]
    assert [r["epoch"] for r in sampled] == list(range(bake_settings["epochs"]))
    assert all(r["sampled"] == n // 2 for r in sampled)
    off = {t.key: t for t in RunDir(run).read_trajectories()}
    store = ChunkStore(run / "on-policy", "epoch")
    teacher = HFTeacher()
    teacher.setup(baker.config)
    for epoch in range(bake_settings["epochs"]):
        lines = (run / "on-policy" / f"epoch-{epoch:05d}.jsonl").read_text().splitlines()
        key = json.loads(lines[0])["key"]
        trajs, targets = store.read(epoch, key)
        assert len(trajs) == n // 2
        for t in trajs:
            base = off[t.key]
            # Same query and both renderings' prefixes as the teacher's sample; the response is the student's.
            assert t.unprompted_ids[: t.unprompted_prefix_len] == base.unprompted_ids[: base.unprompted_prefix_len]
            assert t.prompted_ids[: t.prompted_prefix_len] == base.prompted_ids[: base.prompted_prefix_len]
        # The targets are the prompted teacher's distribution on those student samples
        # (for full_kl its hidden states, stored as float16, as the off-policy targets are).
        if loss == "full_kl":
            for got, want in zip(targets, teacher.score_hidden(trajs)):
                assert got.hidden.dtype == torch.float16 and got.topk_ids is None
                torch.testing.assert_close(got.hidden.float(), want.hidden, rtol=1e-3, atol=1e-3)
            continue
        again = teacher.score(trajs, top_k=baker.config.top_k, full=False)
        for got, want in zip(targets, again):
            torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, rtol=0, atol=1e-5)
            assert torch.equal(got.topk_ids, want.topk_ids)


def test_on_policy_data_changes_the_bake(tiny_model, bake_settings, tmp_path):
    spec = tiny_model()
    off = Baker(PROMPT, model=spec, evaluate=False, **{**bake_settings, "out": str(tmp_path / "off")}).run()
    on = Baker(PROMPT, model=spec, evaluate=False, on_policy=1.0, **{**bake_settings, "out": str(tmp_path / "on")}).run()
    a = load_file(off.adapter_path / "adapter_model.safetensors")
    b = load_file(on.adapter_path / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_on_policy_is_refused_where_it_cannot_work(tiny_model, bake_settings):
    spec = tiny_model()
    with pytest.raises(CapabilityError, match="loss 'ce'"):
        Baker(PROMPT, model=spec, loss="ce", on_policy=0.5, **bake_settings).check()
    with pytest.raises(ConfigError, match="on_policy must be a fraction"):
        Baker(PROMPT, model=spec, on_policy=1.5)


def test_a_killed_on_policy_bake_resumes_to_the_same_adapter(tmp_path):
    from helpers import save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    args = ["-p", PROMPT, "-m", str(model), *SETTINGS, "-s", "on_policy=0.5", "--no-eval"]
    ref = tmp_path / "ref"
    done = run_harness("none", 0, tmp_path / "ref.jsonl", "bake", "-o", str(ref), *args)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    # Killed at step 5: epoch 2's on-policy samples were saved, the step-4 checkpoint is the newest.
    killed = run_harness("train", 5, tmp_path / "killed.jsonl", "bake", "-o", str(run), *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_harness("none", 0, tmp_path / "resumed.jsonl", "bake", "--resume", str(run), "-p", PROMPT,
                          "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    # The student's weights at epoch 2's start are gone; its samples and their targets were read
    # back, not redrawn and rescored (the spy logs every teacher call; with --no-eval there is none).
    assert not (tmp_path / "resumed.jsonl").exists()
    assert (tmp_path / "killed.jsonl").read_text().count('"score"') > 0
    ours, theirs = adapter(run), adapter(ref)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
