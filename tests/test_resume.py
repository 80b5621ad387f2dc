"""Resuming a bake killed with SIGKILL at each stage: nothing finished is redone, and the
adapter equals an uninterrupted bake's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_model
from safetensors import safe_open
from safetensors.torch import load_file
from test_no_pickle import is_pickle

HARNESS = Path(__file__).with_name("crashing_bake.py")
PROMPT = "Answer like a pirate."
# 6 queries x 1 sample, 2 held out; chunks of 2 queries and shards of 2 targets (set by
# the harness); 2 epochs of 3 steps, a checkpoint every 2 steps and at step 6.
SETTINGS = ["--max-queries", "6", "-s", "max_heldout=2", "-s", "samples_per_query=1", "-s", "max_new_tokens=6",
            "--epochs", "2", "-s", "batch_size=2", "-s", "checkpoint_every=2", "--quiet"]


def run_harness(stage: str, nth: int, spy: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": ""}
    return subprocess.run([sys.executable, str(HARNESS), stage, str(nth), str(spy), "--", *args],
                          check=False, capture_output=True, text=True, env=env, timeout=300)


def spied(path: Path) -> dict[str, int]:
    totals = {"generate": 0, "score": 0}
    if path.exists():
        for line in path.read_text().splitlines():
            for name, n in json.loads(line).items():
                totals[name] += n
    return totals


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    spy = run.with_name("spy.jsonl")
    result = run_harness("none", 0, spy, "bake", "-p", PROMPT, "-m", str(model), "-o", str(run), *SETTINGS)
    assert result.returncode == 0, result.stderr
    return run, spied(spy)


# The evaluation after training: the held-out KL scores its 2 trajectories on the prompted side
# (2; base and baked are the student, with its adapter off and on); the prompted model answers the
# 2 held-out queries (generate 2); the on-policy gap scores the base's 2 samples and the baked
# model's 2 on the prompted side (4).
EVAL = 2 + 4
EVAL_GENERATE = 2
# (stage, which call is killed, teacher work the resumed bake does, first train step it runs)
CASES = {
    "generate": ("generate", 2, {"generate": 4 + 2 + EVAL_GENERATE, "score": 6 + EVAL}, 1),  # train chunk 0 kept
    "score": ("score", 2, {"generate": EVAL_GENERATE, "score": 4 + EVAL}, 1),  # shard 0 kept
    "train": ("train", 4, {"generate": EVAL_GENERATE, "score": EVAL}, 3),  # the step-2 checkpoint kept
    "checkpoint": ("checkpoint", 2, {"generate": EVAL_GENERATE, "score": EVAL}, 3),  # step-4 one half-written
    # Adapters are written after epoch 1, after epoch 2, then the final one: the 3rd swap is cut.
    "save": ("save", 3, {"generate": EVAL_GENERATE, "score": EVAL}, 7),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_after_kill(model, reference, tmp_path, case):
    stage, nth, redo, first_step = CASES[case]
    run = tmp_path / "run"
    killed = run_harness(stage, nth, tmp_path / "killed.jsonl", "bake", "-p", PROMPT, "-m", str(model),
                         "-o", str(run), *SETTINGS)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "adapter").exists()

    spy = tmp_path / "resumed.jsonl"
    resumed = run_harness("none", 0, spy, "bake", "--resume", str(run), "-p", PROMPT, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert spied(spy) == redo
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("stage") == "train" and "step" in r]
    assert steps == list(range(1, 7)), steps  # every step logged once: redone ones replaced
    assert next(r for r in records if "resumed_at" in r)["resumed_at"] == first_step - 1

    ref_run, _ = reference
    ours, theirs = adapter(run), adapter(ref_run)
    assert ours.keys() == theirs.keys()
    for name in ours:  # tolerance: 1e-6 absolute; on CPU the runs agree bit for bit
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
    ref_eval = json.loads((ref_run / "eval.json").read_text())
    assert json.loads((run / "eval.json").read_text())["kl_prompted_baked"] == pytest.approx(
        ref_eval["kl_prompted_baked"], abs=1e-6)


def test_reference_run_did_each_piece_of_work_once(reference):
    run, work = reference
    assert work == {"generate": 6 + 2 + EVAL_GENERATE, "score": 6 + EVAL}
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"training_state.safetensors", "manifest.json", "adapter_model.safetensors"}
    # Checkpoints included: tensors are safetensors (which open as such), the rest is not pickled.
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                assert f.keys()
        else:
            assert not is_pickle(path.read_bytes()), path


def test_resuming_a_finished_bake_does_nothing(model, reference, tmp_path):
    ref_run, _ = reference
    spy = tmp_path / "spy.jsonl"
    again = run_harness("none", 0, spy, "bake", "--resume", str(ref_run), "-p", PROMPT, "--quiet")
    assert again.returncode == 0, again.stderr
    assert spied(spy) == {"generate": 0, "score": 0}
    assert "of the gap closed" in again.stdout
