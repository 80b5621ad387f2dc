"""The tinker teacher, the refusals, timeouts, and a whole bake against the local stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import promptbake_tinker
import pytest
import torch
from promptbake_tinker import client
from promptbake_tinker.teacher import TinkerTeacher, topk_targets
from tinker_fake import FakeService, Hung

from promptbake import Baker
from promptbake.builtin import models
from promptbake.builtin.scoring import logits_to_targets, response_logits
from promptbake.core.errors import BackendError, CapabilityError, ConfigError
from promptbake.core.plugins import temporary_plugin
from promptbake.core.types import Trajectory

KEY = "tml-SECRET-do-not-write-0123456789"


@pytest.fixture
def service(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(client.KEY_ENV, KEY)
    spec = tiny_model("smollm2")
    handle = models.load(spec)
    svc = FakeService({spec: (handle.model, handle.tokenizer)}, tmp_path / "service")
    monkeypatch.setattr(client, "connect", lambda base_url=None: svc)
    svc.spec = spec
    return svc


def test_tinker_plugin_import_is_light():
    code = "import sys, promptbake_tinker; print('tinker' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_tinker_teacher_scores_like_the_model(service):
    handle = models.load(service.spec)
    tok = handle.tokenizer
    traj = Trajectory("q", 0, prompted_ids=list(range(20, 40)), unprompted_ids=list(range(30, 40)), response_len=6)
    teacher = TinkerTeacher()
    from promptbake.core.config import BakeConfig

    teacher.setup(BakeConfig(model=service.spec, device="cpu"))
    assert teacher.tokenizer is tok
    (got,) = teacher.score([traj], top_k=5, full=False)
    with torch.no_grad():
        logits, lengths = response_logits(handle.model, [traj], "prompted", tok.pad_token_id, "cpu")
    (want,) = logits_to_targets(logits, lengths, [traj], top_k=5, full=False)
    assert torch.equal(got.topk_ids, want.topk_ids)
    assert torch.allclose(got.topk_logprobs, want.topk_logprobs, atol=1e-5)
    assert torch.allclose(got.tail_logprob, want.tail_logprob, atol=1e-4)
    assert got.weight is None
    with pytest.raises(CapabilityError, match="full-vocabulary"):
        teacher.score([traj], top_k=5, full=True)
    with pytest.raises(CapabilityError, match="limit of 20"):
        teacher.score([traj], top_k=21, full=False)


def test_tinker_topk_targets_padding_and_missing_rows():
    rows = [None, [(5, -0.1), (6, -2.5)], [(7, -1e-9)], None, [(9, -0.5), (0, -99999.0)]]
    t = topk_targets(rows, 1, [5, 7, 8, 9], 2)
    assert t.topk_ids.tolist() == [[5, 6], [7, 7], [8, 8], [9, 9]]
    assert t.topk_logprobs[1, 1] == float("-inf") and t.topk_logprobs[3, 1] == float("-inf")
    assert t.weight.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert torch.isfinite(t.tail_logprob[:2]).all() and not torch.isnan(t.tail_logprob).any()


def test_tinker_missing_key_refused_before_any_work(tiny_model, monkeypatch, tmp_path):
    monkeypatch.delenv(client.KEY_ENV, raising=False)
    monkeypatch.setattr(client, "connect", lambda base_url=None: pytest.fail("connected without a key"))
    with temporary_plugin(promptbake_tinker, "tinker-test"):
        baker = Baker("Be brief.", teacher="tinker", student="tinker", loss="topk_kl", model="Qwen/Qwen3-8B",
                      out=str(tmp_path / "run"))
        with pytest.raises(ConfigError, match="TINKER_API_KEY") as err:
            baker.run()
    assert str(err.value).count(".") <= 2 and not (tmp_path / "run").exists()
    # with another teacher the tinker student refuses first thing in setup, before connecting
    from promptbake_tinker.student import TinkerStudent

    from promptbake.core.config import BakeConfig

    with pytest.raises(ConfigError, match="TINKER_API_KEY"):
        TinkerStudent().setup(BakeConfig(device="cpu"), 1)


def test_tinker_refusals_full_kl_and_large_k(monkeypatch):
    monkeypatch.setenv(client.KEY_ENV, KEY)
    with temporary_plugin(promptbake_tinker, "tinker-test"):
        with pytest.raises(CapabilityError, match="Student 'tinker' cannot train with loss 'full_kl'"):
            Baker("Be brief.", teacher="tinker", student="tinker", loss="full_kl").check()
        with pytest.raises(CapabilityError, match="needs full-vocabulary logits, which teacher 'tinker'"):
            Baker("Be brief.", teacher="tinker", student="peft", loss="full_kl").check()
        with pytest.raises(CapabilityError, match="top_k=32 is above teacher 'tinker''s limit of 20"):
            Baker("Be brief.", teacher="tinker", student="tinker", loss="topk_kl", top_k=32).check()


def test_tinker_hung_future_times_out():
    with pytest.raises(BackendError, match=r"did not answer a forward/backward request within 0.05 s"):
        client.wait(Hung(), 0.05, "a forward/backward request")
    with pytest.raises(ConfigError, match="timeout"):
        TinkerTeacher(timeout=0)


def test_tinker_hung_step_times_out(service):
    from promptbake_tinker.student import TinkerStudent

    from promptbake.builtin.losses import CELoss
    from promptbake.core.config import BakeConfig

    student = TinkerStudent(timeout=0.05)
    student.setup(BakeConfig(model=service.spec, device="cpu"), 1)
    service.trainings[0].hang = True
    traj = Trajectory("q", 0, prompted_ids=[20, 21, 22, 23], unprompted_ids=[22, 23], response_len=1)
    from promptbake.core.types import Targets

    with pytest.raises(BackendError, match="within 0.05 s"):
        student.step([[(traj, Targets(sampled_ids=torch.tensor([23])))]], CELoss())


def test_tinker_bake_end_to_end(service, bake_settings):
    with temporary_plugin(promptbake_tinker, "tinker-test"):
        result = Baker("Always answer in French.", teacher="tinker", student="tinker", loss="topk_kl",
                       model=service.spec, top_k=5, lora_rank=4, **bake_settings).run()
    run = Path(result.run_dir)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in log if e.get("stage") == "train"]
    fake = service.trainings[0]
    fb = [n for kind, n in fake.requests if kind == "forward_backward"]
    assert result.metrics["steps"] == len(fb) == 6  # 12 trajectories, batch 4, 2 epochs
    assert sum(fb) == 2 * result.metrics["trajectories"]  # one datum per example per epoch
    assert [kind for kind, _ in fake.requests].count("forward") == len(fb)  # the custom loss's forward
    assert len(steps) == 6 and all(e["datums"] == 4 for e in steps)
    assert all(e["loss"] == e["loss"] for e in steps)  # not NaN
    # teacher: scored once per trajectory (+ held-out none: the student cannot score), never per step
    scored = [c for s in service.samplers for c in s.calls if c["topk"]]
    assert len(scored) == result.metrics["trajectories"]
    adapter = Path(result.adapter_path)
    meta = json.loads((adapter / "promptbake.json").read_text())
    assert meta["tinker"]["downloaded"] and meta["tinker"]["sampler_path"].startswith("tinker://")
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    for path in run.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_tinker_bake_resumes_from_the_services_checkpoint(service, bake_settings, tmp_path, monkeypatch):
    """A bake cut off after step 5 resumes from its step-4 checkpoint on the service and ends
    with the uninterrupted bake's adapter (2 epochs x 3 steps, a checkpoint every 2 steps)."""
    from tinker_fake import FakeTraining

    settings = {**bake_settings, "checkpoint_every": 2}
    options = {"teacher": "tinker", "student": "tinker", "loss": "topk_kl", "model": service.spec, "top_k": 5, "lora_rank": 4}
    prompt = "Always answer in French."
    with temporary_plugin(promptbake_tinker, "tinker-test"):
        whole = Baker(prompt, **{**options, **settings, "out": str(tmp_path / "whole")}).run()
        real = FakeTraining.optim_step
        calls = {"n": 0}

        def cut_at_step_5(self, *a, **k):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 5:
                raise ConnectionError("lost the connection")
            return real(self, *a, **k)

        monkeypatch.setattr(FakeTraining, "optim_step", cut_at_step_5)
        cut = tmp_path / "cut"
        with pytest.raises(ConnectionError):
            Baker(prompt, **{**options, **settings, "out": str(cut)}).run()
        monkeypatch.setattr(FakeTraining, "optim_step", real)
        before = len(service.trainings)
        resumed = Baker.resume(cut, prompt, progress=False).run()
    clients = service.trainings[before:]
    assert len(clients) == 2  # setup's new client, then the one made from the step-4 state
    assert [kind for kind, _ in clients[0].requests] == []
    assert [kind for kind, _ in clients[1].requests].count("optim_step") == 2  # steps 5 and 6 only
    assert len(service.states) == 3 + 2 + 1  # steps 2, 4, 6 of the whole bake; 2, 4 cut; 6 resumed
    assert all(s["ttl_seconds"] == 7 * 24 * 3600 for s in service.states.values())
    log = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e.get("stage") == "train" and "step" in e] == [1, 2, 3, 4, 5, 6]
    assert any(e.get("resumed_at") == 4 for e in log)
    state = json.loads((cut / "checkpoint" / "tinker_state.json").read_text())
    assert state["steps"] == 6 and state["state_path"].startswith("tinker://")
    from safetensors.torch import load_file

    a = load_file(Path(whole.adapter_path) / "adapter_model.safetensors")
    b = load_file(Path(resumed.adapter_path) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for path in cut.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_tinker_resume_from_an_expired_checkpoint_says_so(service, tmp_path):
    from promptbake_tinker.student import STATE_FILE, TinkerStudent

    from promptbake.core.config import BakeConfig

    student = TinkerStudent()
    student.setup(BakeConfig(model=service.spec, device="cpu"), 4)
    (tmp_path / STATE_FILE).write_text(json.dumps(
        {"state_path": "tinker://gone:train:0/weights/x", "base_model": service.spec, "steps": 2}))
    with pytest.raises(BackendError, match=r"Tinker refused a training client from the checkpoint "
                                           r"tinker://gone:train:0/weights/x \(it may have expired"):
        student.load_state(str(tmp_path))
    (tmp_path / STATE_FILE).write_text(json.dumps({"state_path": "tinker://a", "base_model": "other", "steps": 2}))
    with pytest.raises(ConfigError, match="trained base model 'other' on Tinker"):
        student.load_state(str(tmp_path))
    with pytest.raises(ConfigError, match="state_ttl_seconds must be a whole number of seconds, at least 3600"):
        TinkerStudent(state_ttl_seconds=60)
