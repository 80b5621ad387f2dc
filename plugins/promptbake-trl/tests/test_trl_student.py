"""The trl student: the Baker's data and loss through the transformers Trainer, on 1 and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import promptbake_trl
import pytest
import torch
from helpers import save_tiny_model
from safetensors import safe_open

from promptbake import Baker, ConfigError
from promptbake.builtin.peft import PeftStudent
from promptbake.core.plugins import temporary_plugin

PROMPT = "Always answer like a pirate, matey."
HERE = Path(__file__).parent


def _curve(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("stage") == "train" and "loss" in r]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_trl_and_peft_give_the_same_loss_curve(tmp_path, grad_accum):
    """Same data, seed and optimizer: the 5-step curves agree to 1e-5 relative (measured: bit for bit)."""
    model = save_tiny_model(tmp_path)
    settings = {"model": str(model), "max_queries": 10, "max_heldout": 2, "samples_per_query": 2, "max_new_tokens": 8,
                    "epochs": 1, "batch_size": 4 // grad_accum, "grad_accum": grad_accum, "lr": 3e-3, "progress": False,
                    "device": "cpu", "loss": "topk_kl"}
    with temporary_plugin(promptbake_trl, "trl-test"):
        runs = {s: Baker(PROMPT, student=s, out=str(tmp_path / s), **settings).run() for s in ("peft", "trl")}
    peft, trl = _curve(tmp_path / "peft"), _curve(tmp_path / "trl")
    assert len(peft) == len(trl) == 5
    torch.testing.assert_close(torch.tensor(trl), torch.tensor(peft), rtol=1e-5, atol=0)
    assert (runs["trl"].adapter_path / "adapter_model.safetensors").is_file()
    assert runs["trl"].eval["kl_prompted_baked"] == pytest.approx(runs["peft"].eval["kl_prompted_baked"], rel=1e-4)


def test_trl_options_are_checked():
    from promptbake_trl.trl import TRLStudent

    from promptbake.core.config import BakeConfig

    config = BakeConfig(prompt="p")
    with pytest.raises(ConfigError, match="not a TrainingArguments/SFTConfig field"):
        TRLStudent(gradient_checkpointng=True).check(config)
    with pytest.raises(ConfigError, match="learning_rate is set by promptbake's own settings"):
        TRLStudent(learning_rate=1.0).check(config)
    TRLStudent(gradient_checkpointing=True, report_to="none").check(config)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny model and a run directory with 8+ trajectories and their top-K targets."""
    tmp = tmp_path_factory.mktemp("ddp")
    model = save_tiny_model(tmp)
    run = tmp / "run"
    Baker(PROMPT, model=str(model), loss="topk_kl", max_queries=6, samples_per_query=2, max_new_tokens=8,
          epochs=1, evaluate=False, progress=False, device="cpu", out=str(run)).run()
    return model, run


def _launch_step(model: Path, run: Path, out: Path, grad_accum: int, processes: int, options: dict | None = None,
                 script: str = "ddp_step.py") -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*launcher, str(HERE / script), str(model), str(run), str(out), str(grad_accum),
                           json.dumps(options or {})], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def _step(model: Path, run: Path, out: Path, grad_accum: int, processes: int,
          options: dict | None = None) -> dict[str, torch.Tensor]:
    result = _launch_step(model, run, out, grad_accum, processes, options)
    assert result.returncode == 0, result.stderr[-3000:]
    with safe_open(out, framework="pt") as f:
        assert f.metadata()["processes"] == str(processes)
        assert f.metadata()["fsdp"] == str(bool(options and options.get("fsdp")))  # FSDP ran where asked
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def _peft_update(model: Path, run: Path) -> dict[str, torch.Tensor]:
    """-lr * gradient of the token-mean top-K KL over the same 8 trajectories, from the peft student."""
    sys.path.insert(0, str(HERE))
    import ddp_step

    from promptbake.builtin.losses import TopKKLLoss
    from promptbake.builtin.scoring import response_logits
    from promptbake.core.config import BakeConfig
    from promptbake.core.interfaces import BatchTargets
    from promptbake.run.cache import TargetStore
    from promptbake.run.rundir import RunDir

    n = ddp_step.GLOBAL_BATCH
    trajectories = RunDir(run).read_trajectories()[:n]
    key = json.loads((run / "targets" / "index.json").read_text())["key"]
    targets = TargetStore(run / "targets").read(key)[:n]
    student = PeftStudent()
    student.setup(BakeConfig(prompt="p", model=str(model), device="cpu", progress=False), total_steps=1)
    try:
        h = student.handle
        logits, _ = response_logits(h.peft_model, trajectories, "unprompted", h.tokenizer.pad_token_id, "cpu")
        TopKKLLoss()(logits, BatchTargets.concat(targets), sum(t.num_tokens for t in targets)).backward()
        return {name: -ddp_step.LR * p.grad for name, p in h.peft_model.named_parameters() if p.requires_grad}
    finally:
        student.close()


def test_two_processes_take_the_same_step_as_one_and_as_the_peft_student(data, tmp_path):
    """gloo on CPU, started with torch.distributed.run: the update after one step on a global batch of 8
    equals one process's and the peft student's, within 1e-6 absolute (float32 reduction order)."""
    model, run = data
    reference = _peft_update(model, run)
    for processes, grad_accum in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        update = _step(model, run, tmp_path / f"u{processes}{grad_accum}.safetensors", grad_accum, processes)
        assert update.keys() == reference.keys()
        assert max(float(update[k].abs().max()) for k in update) > 1e-4  # a real step was taken
        for name in update:
            torch.testing.assert_close(update[name], reference[name], rtol=1e-4, atol=1e-6,
                                       msg=f"{processes} process(es), grad_accum {grad_accum}: {name}")


def test_fsdp2_on_two_processes_takes_ddps_step(data, tmp_path):
    """FSDP2 (the Trainer's fsdp=True; accelerate leaves FSDP off on CPU, the student turns it on),
    2 gloo processes: the one-step update equals DDP's (measured: bit for bit; asserted within
    1e-7 absolute) and the peft student's within the DDP test's 1e-6 absolute, grad_accum 1 and 2."""
    model, run = data
    reference = _peft_update(model, run)
    ddp = _step(model, run, tmp_path / "ddp.safetensors", 1, 2)
    for grad_accum in (1, 2):
        update = _step(model, run, tmp_path / f"fsdp{grad_accum}.safetensors", grad_accum, 2, {"fsdp": True})
        assert update.keys() == reference.keys() == ddp.keys()
        assert max(float(update[k].abs().max()) for k in update) > 1e-4  # a real step was taken
        for name in update:
            torch.testing.assert_close(update[name], ddp[name], rtol=0, atol=1e-7, msg=f"FSDP vs DDP: {name}")
            torch.testing.assert_close(update[name], reference[name], rtol=1e-4, atol=1e-6, msg=f"FSDP: {name}")


def test_fsdp1_on_cpu_is_refused_with_what_fails_beneath(data, tmp_path):
    """FSDP1 is refused on CPU processes with the two failures it meets there, each recorded here
    with the refusal lifted (fsdp_unguarded.py): accelerate's plugin with sync_module_states (the
    default), and torch's FullyShardedDataParallel with it off. If either stops failing, the refusal
    can narrow."""
    from promptbake_trl.trl import FSDP1_ON_CPU

    model, run = data
    fsdp1 = {"fsdp": True, "fsdp_config": {"version": 1}}
    refused = _launch_step(model, run, tmp_path / "u.safetensors", 1, 2, fsdp1)
    assert refused.returncode != 0 and FSDP1_ON_CPU in refused.stderr
    beneath = _launch_step(model, run, tmp_path / "u.safetensors", 1, 2, fsdp1, script="fsdp_unguarded.py")
    assert beneath.returncode != 0
    assert ("RuntimeError: There are currently no available devices found, must be one of 'XPU', 'CUDA', 'MLU', "
            "'NPU', 'MUSA', or 'HPU'.") in beneath.stderr
    assert "accelerate/utils/dataclasses.py" in beneath.stderr  # FullyShardedDataParallelPlugin.__post_init__
    fsdp1["fsdp_config"]["sync_module_states"] = False
    beneath = _launch_step(model, run, tmp_path / "u.safetensors", 1, 2, fsdp1, script="fsdp_unguarded.py")
    assert beneath.returncode != 0
    assert "ValueError: Inconsistent compute device and `device_id` on rank 0: cpu vs cpu:0" in beneath.stderr
    assert "torch/distributed/fsdp/_init_utils.py" in beneath.stderr  # _get_compute_device
    assert not (tmp_path / "u.safetensors").exists()


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"],
    # accelerate launch refuses --cpu beside --use_fsdp; without it, on a machine without GPUs, the
    # processes are CPU ones all the same.
    "accelerate-fsdp2": [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                         "--use_fsdp", "--fsdp_version", "2"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_bake_on_two_processes(tmp_path, launcher):
    """`torchrun` or `accelerate launch` (DDP, or FSDP2 from accelerate's flags) of `-m promptbake bake
    --student trl`: rank 0 samples and scores, both processes train, rank 0 saves, evaluates and reports."""
    if launcher == "accelerate-fsdp2" and torch.cuda.is_available():
        pytest.skip("the FSDP2 launch is of CPU processes; on a GPU machine accelerate would place them there")
    model = save_tiny_model(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": "trl", "OMP_NUM_THREADS": "1"}
    args = ["bake", "-p", PROMPT, "-m", str(model), "--student", "trl", "-o", str(run), "--max-queries", "4",
            "-s", "max_heldout=2", "-s", "samples_per_query=2", "-s", "max_new_tokens=6", "--epochs", "1",
            "-s", "batch_size=4", "--quiet"]
    result = subprocess.run([*LAUNCHERS[launcher], "-m", "promptbake", *args], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Adapter:") == 1  # rank 0 reports; the other rank trained silently
    assert "train_loss" not in result.stdout  # --quiet: no Trainer log dicts either
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("stage") == "train"] == [1, 2]
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "eval.json").is_file()
    generated = [r for r in records if r.get("stage") == "score"]
    assert len(generated) == 1  # one record of the scoring, written by rank 0 (every rank scored its shards)


@pytest.mark.parametrize("cut", ["step", "save"])
def test_trl_bake_resumes_from_its_checkpoint(tmp_path, monkeypatch, cut):
    """Cut off in step 5 of 6, a trl bake resumes from its step-4 checkpoint (weights, AdamW
    moments, LR schedule, RNG for the LoRA dropout) and ends with the uninterrupted bake's adapter;
    cut off while saving the adapter, it takes the step-6 checkpoint's weights and trains no more."""
    from promptbake_trl import trl
    from safetensors.torch import load_file

    model = save_tiny_model(tmp_path)
    settings = {"model": str(model), "max_queries": 6, "max_heldout": 2, "samples_per_query": 2,
                "max_new_tokens": 6, "epochs": 2, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.3,
                "lora_dropout": 0.1, "checkpoint_every": 2, "progress": False, "device": "cpu",
                "loss": "topk_kl", "student": "trl", "evaluate": False}
    real = trl._BakeTrainer.compute_loss
    calls = {"n": 0}

    def cut_in_step_5(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise ConnectionError("lost the machine")
        return real(self, *a, **k)

    def cut_in_save(self, *a, **k):  # type: ignore[no-untyped-def]
        raise ConnectionError("lost the machine")

    with temporary_plugin(promptbake_trl, "trl-test"):
        whole = Baker(PROMPT, out=str(tmp_path / "whole"), **settings).run()
        if cut == "step":
            monkeypatch.setattr(trl._BakeTrainer, "compute_loss", cut_in_step_5)
        else:
            monkeypatch.setattr(trl.TRLStudent, "save", cut_in_save)
        with pytest.raises(ConnectionError):
            Baker(PROMPT, out=str(tmp_path / "cut"), **settings).run()
        monkeypatch.undo()
        state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
        assert state["step"] == (4 if cut == "step" else 6)
        steps_run = []
        monkeypatch.setattr(trl._BakeTrainer, "compute_loss",
                            lambda self, *a, **k: steps_run.append(1) or real(self, *a, **k))
        resumed = Baker.resume(tmp_path / "cut", PROMPT, progress=False).run()
    assert len(steps_run) == (2 if cut == "step" else 0)  # steps 5 and 6 only, or none
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("stage") == "train" and "step" in r] == [1, 2, 3, 4, 5, 6]
    assert any(r.get("resumed_at") == state["step"] for r in records)
    curve = _curve(tmp_path / "cut")
    assert curve == _curve(tmp_path / "whole")  # bit for bit on CPU, the dropout of steps 5 and 6 included
    assert resumed.metrics["steps"] == 6 and resumed.metrics["first_loss"] == curve[0]
    a = load_file(whole.adapter_path / "adapter_model.safetensors")
    b = load_file(resumed.adapter_path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_two_process_bake_resumes_from_its_checkpoint(tmp_path):
    """torchrun, 2 processes with LoRA dropout: cut off in step 3 of 4, resumed from the step-2
    checkpoint (each process gets its own RNG state back), it ends bit for bit on the adapter
    and loss curve of an uninterrupted launch."""
    model = save_tiny_model(tmp_path)
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": "trl", "OMP_NUM_THREADS": "1"}
    args = ["-p", PROMPT, "-m", str(model), "--student", "trl", "--max-queries", "4", "-s", "max_heldout=2",
            "-s", "samples_per_query=2", "-s", "max_new_tokens=6", "--epochs", "2", "-s", "batch_size=4",
            "-s", "checkpoint_every=2", "-s", "lora_dropout=0.1", "-s", "evaluate=false", "--quiet"]

    def launch(cut: int, *bake: str) -> subprocess.CompletedProcess:
        return subprocess.run([*LAUNCHERS["torchrun"], str(HERE / "ddp_bake.py"), str(cut), "--", "bake", *bake],
                              capture_output=True, text=True, env=env, timeout=300, check=False)

    assert launch(0, *args, "-o", str(tmp_path / "whole")).returncode == 0
    cut = launch(3, *args, "-o", str(tmp_path / "cut"))
    assert cut.returncode != 0 and "cut off in step 3" in cut.stderr
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 2
    resumed = launch(0, "--resume", str(tmp_path / "cut"), "-p", PROMPT, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _curve(tmp_path / "cut") == _curve(tmp_path / "whole") and len(_curve(tmp_path / "whole")) == 4
    with safe_open(tmp_path / "whole" / "adapter" / "adapter_model.safetensors", "pt") as a, \
            safe_open(tmp_path / "cut" / "adapter" / "adapter_model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118


def test_an_fsdp2_bake_resumes_from_its_checkpoint(tmp_path):
    """torchrun, 2 processes, FSDP2 (student_options.fsdp=true), LoRA dropout: the step-2 and step-4
    checkpoints are gathered whole from the shards (get_state_dict) in the files DDP writes; cut off in
    step 3 of 4 and resumed (set_state_dict into the sharded model and optimizer), the bake ends bit for
    bit on the uninterrupted FSDP2 bake's adapter and loss curve, and both on DDP's (measured: bit for
    bit; asserted: curve within 1e-6 relative, adapter and checkpoints within 1e-7 absolute)."""
    from safetensors.torch import load_file

    model = save_tiny_model(tmp_path)
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": "trl", "OMP_NUM_THREADS": "1"}
    args = ["-p", PROMPT, "-m", str(model), "--student", "trl", "--max-queries", "4", "-s", "max_heldout=2",
            "-s", "samples_per_query=2", "-s", "max_new_tokens=6", "--epochs", "2", "-s", "batch_size=4",
            "-s", "checkpoint_every=2", "-s", "lora_dropout=0.1", "-s", "evaluate=false", "--quiet"]
    fsdp = ["-s", "student_options.fsdp=true"]

    def launch(cut: int, *bake: str) -> subprocess.CompletedProcess:
        return subprocess.run([*LAUNCHERS["torchrun"], str(HERE / "ddp_bake.py"), str(cut), "--", "bake", *bake],
                              capture_output=True, text=True, env=env, timeout=300, check=False)

    for name, extra in (("ddp", []), ("whole", fsdp)):
        done = launch(0, *args, *extra, "-o", str(tmp_path / name))
        assert done.returncode == 0, done.stderr[-3000:]
    cut = launch(3, *args, *fsdp, "-o", str(tmp_path / "cut"))
    assert cut.returncode != 0 and "cut off in step 3" in cut.stderr
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 2
    resumed = launch(0, "--resume", str(tmp_path / "cut"), "-p", PROMPT, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["student_options"]["fsdp"] is True
    curve = _curve(tmp_path / "whole")
    assert len(curve) == 4 and _curve(tmp_path / "cut") == curve
    torch.testing.assert_close(torch.tensor(curve), torch.tensor(_curve(tmp_path / "ddp")), rtol=1e-6, atol=0)

    def tensors(run: str, file: str) -> dict[str, torch.Tensor]:
        return load_file(tmp_path / run / file)

    adapter = "adapter/adapter_model.safetensors"
    whole, resumed_adapter, ddp = (tensors(r, adapter) for r in ("whole", "cut", "ddp"))
    assert whole.keys() == resumed_adapter.keys() == ddp.keys()
    assert all(torch.equal(whole[k], resumed_adapter[k]) for k in whole)
    for k in whole:
        torch.testing.assert_close(whole[k], ddp[k], rtol=0, atol=1e-7)
    # The last checkpoint (step 4): weights, AdamW moments and step counts, every process's RNG.
    state = "checkpoint/training_state.safetensors"
    sharded, unsharded = tensors("whole", state), tensors("ddp", state)
    assert sharded.keys() == unsharded.keys() and any(k.endswith(".exp_avg_sq") for k in sharded)
    assert sharded["extra.rng.cpu"].shape[0] == 2
    for k in sharded:
        torch.testing.assert_close(sharded[k], unsharded[k], rtol=0, atol=1e-7, msg=k)
