"""The teacher-target cache: reuse by key, detection of damaged shards, size per token."""

from __future__ import annotations

import json

import pytest
import torch

from promptbake import Baker
from promptbake.builtin.hf import HFTeacher
from promptbake.core.types import Targets
from promptbake.run.cache import TargetStore

PROMPT = "Reply in rhymes."


def _events(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_later_run_with_the_same_key_reuses_targets(tiny_model, bake_settings, tmp_path):
    spec = tiny_model()
    cache = tmp_path / "cache"
    first = Baker(PROMPT, model=spec, target_cache=str(cache), evaluate=False, loss="topk_kl",
                  **{**bake_settings, "out": str(tmp_path / "a")}).run()
    assert [e["cache"] for e in _events(first.run_dir) if e["stage"] == "score"] == ["miss"]

    class NoScoring(HFTeacher):
        def score(self, *args, **kwargs):
            if kwargs.get("side", "prompted") == "prompted":
                raise AssertionError("targets should come from the cache")
            return super().score(*args, **kwargs)

    second = Baker(PROMPT, model=spec, teacher=NoScoring(), target_cache=str(cache), evaluate=False, loss="topk_kl",
                   **{**bake_settings, "out": str(tmp_path / "b")}).run()
    assert [e["cache"] for e in _events(second.run_dir) if e["stage"] == "score"] == ["hit"]
    # A different K is a different key.
    third = Baker(PROMPT, model=spec, target_cache=str(cache), evaluate=False, loss="topk_kl", top_k=7,
                  **{**bake_settings, "out": str(tmp_path / "c")}).run()
    assert [e["cache"] for e in _events(third.run_dir) if e["stage"] == "score"] == ["miss"]


@pytest.mark.parametrize("loss", ["topk_kl", "full_kl"])
def test_a_cache_hit_trains_exactly_like_the_fresh_bake(tiny_model, bake_settings, tmp_path, loss):
    from safetensors.torch import load_file

    spec = tiny_model()
    cache = tmp_path / "cache"
    runs = [Baker(PROMPT, model=spec, loss=loss, target_cache=str(cache), evaluate=False,
                  **{**bake_settings, "out": str(tmp_path / name)}).run() for name in ("fresh", "hit")]
    assert [e["cache"] for e in _events(runs[1].run_dir) if e["stage"] == "score"] == ["hit"]
    fresh, hit = (load_file(r.adapter_path / "adapter_model.safetensors") for r in runs)
    for key in fresh:  # full targets are held as float16, as stored, in both
        assert torch.equal(fresh[key], hit[key]), key


def test_full_kl_from_hidden_states_trains_like_full_log_probs(tiny_model, bake_settings, tmp_path):
    """The hf teacher hands the peft student its hidden states (2H bytes a token) instead of
    full log-probs (2V): the same objective, so the adapters agree up to float16 rounding."""
    from safetensors.torch import load_file

    from promptbake.builtin.peft import PeftStudent
    from promptbake.core.interfaces import StudentCapabilities

    class FullLogProbs(PeftStudent):  # a student that cannot read hidden states
        capabilities = StudentCapabilities(checkpoints=True, can_generate=True, adapters=True)

    spec = tiny_model()
    runs = {name: Baker(PROMPT, model=spec, loss="full_kl", student=student, evaluate=False,
                        **{**bake_settings, "out": str(tmp_path / name), "max_grad_norm": 0.0}).run()
            for name, student in (("hidden", None), ("logprobs", FullLogProbs()))}
    kinds = {}
    for name, run in runs.items():
        index = json.loads((run.run_dir / "targets" / "index.json").read_text())
        kinds[name] = set(load_file(run.run_dir / "targets" / index["shards"][0]["file"])) - {"lengths"}
    assert kinds == {"hidden": {"sampled_ids", "hidden"}, "logprobs": {"sampled_ids", "full_logprobs"}}
    # The same objective. The tiny model's KL is ~1e-4 here, where float16 log-probs (an error
    # of ~1e-3 each) already move it by a fifth: compare in absolute terms. (Exactness of the
    # hidden-state path is checked on a larger KL in test_scoring.)
    losses = {name: [e["loss"] for e in _events(run.run_dir) if e["stage"] == "train" and "loss" in e]
              for name, run in runs.items()}
    assert len(losses["hidden"]) == 6 and min(losses["hidden"]) > 0
    torch.testing.assert_close(torch.tensor(losses["hidden"]), torch.tensor(losses["logprobs"]), rtol=0, atol=3e-5)
    a, b = (load_file(r.adapter_path / "adapter_model.safetensors") for r in runs.values())
    moved_a, moved_b = (torch.cat([w[k].flatten() for k in sorted(w) if "lora_B" in k]) for w in (a, b))
    assert moved_a.abs().max() > 1e-3  # training changed the adapter (lora_B starts at 0)
    assert torch.nn.functional.cosine_similarity(moved_a, moved_b, dim=0) > 0.95


def _targets(n=5, r=4, k=3):
    out = []
    for i in range(n):
        out.append(Targets(sampled_ids=torch.arange(r), topk_ids=torch.zeros(r, k, dtype=torch.int32),
                           topk_logprobs=torch.full((r, k), -1.5), tail_logprob=torch.full((r,), -2.0)))
    return out


def test_round_trip_and_key_mismatch(tmp_path):
    store = TargetStore(tmp_path, shard_size=2)
    store.write(_targets(), "k1")
    back = store.read("k1")
    assert back is not None and len(back) == 5
    torch.testing.assert_close(back[3].topk_logprobs, torch.full((4, 3), -1.5))
    assert back[0].sampled_ids.dtype == torch.long
    assert store.read("k2") is None


@pytest.mark.parametrize("damage", ["truncate", "delete", "garble"])
def test_damaged_shards_are_not_trusted(tmp_path, damage):
    store = TargetStore(tmp_path, shard_size=2)
    store.write(_targets(), "k")
    shard = tmp_path / "shard-00001.safetensors"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(b"\0" * len(data))
    assert store.read("k") is None
    # Without an index (a bake stopped before writing it), each shard is checked on its own.
    (tmp_path / "index.json").unlink()
    assert store.read_shard(1, "k", 2) is None
    assert store.read_shard(0, "k", 2) is not None
    assert store.read_shard(0, "other", 2) is None and store.read_shard(0, "k", 1) is None


def test_generation_chunks_round_trip_and_are_checked(tmp_path):
    from promptbake.core.types import Trajectory
    from promptbake.run.chunks import ChunkStore

    trajs = [Trajectory("q", i, [1, 2, 3], [2, 3], response_len=1, text="x") for i in range(5)]
    store = ChunkStore(tmp_path, "train")
    store.write(0, "k", trajs, _targets())
    got = store.read(0, "k")
    assert got is not None and got[0] == trajs and len(got[1]) == 5
    torch.testing.assert_close(got[1][3].topk_logprobs, _targets()[3].topk_logprobs)
    assert store.read(0, "other") is None and store.read(1, "k") is None
    lines = tmp_path / "train-00000.jsonl"
    lines.write_text("\n".join(lines.read_text().splitlines()[:-1]) + "\n")  # a trajectory lost
    assert store.read(0, "k") is None
    store.write(0, "k", trajs, _targets())
    next((tmp_path / "train-00000.targets").glob("shard-*")).write_bytes(b"\0" * 16)  # targets garbled
    assert store.read(0, "k") is None
    store.write(1, "k", trajs[:2], None)  # samples without targets (a teacher that scores later)
    assert store.read(1, "k") == (trajs[:2], None)


def test_top_k_storage_is_within_the_bound(tmp_path):
    k, r, n = 20, 64, 64
    store = TargetStore(tmp_path)
    targets = [Targets(sampled_ids=torch.arange(r), topk_ids=torch.zeros(r, k, dtype=torch.int32),
                       topk_logprobs=torch.zeros(r, k), tail_logprob=torch.zeros(r)) for _ in range(n)]
    store.write(targets, "k")
    per_token = store.bytes() / (n * r)
    assert 8 * k + 8 <= per_token <= 8 * k + 8 + 1, per_token  # 8K + 8, and one header per shard


def test_chunk_keys_change_with_anything_that_changes_the_samples():
    from promptbake.builtin.hf import HFTeacher
    from promptbake.core.interfaces import SamplingConfig
    from promptbake.core.types import Prefix
    from promptbake.stages.generate import chunk_key, chunk_seed

    prefixes = [Prefix(ids=[1, 2, 3], messages=({"role": "user", "content": "hi"},))]
    base = chunk_key(HFTeacher(), "m", SamplingConfig(seed=1), prefixes, 1)
    assert base == chunk_key(HFTeacher(), "m", SamplingConfig(seed=1), prefixes, 1)
    assert base != chunk_key(HFTeacher(), "other-model", SamplingConfig(seed=1), prefixes, 1)
    assert base != chunk_key(HFTeacher(), "m", SamplingConfig(seed=2), prefixes, 1)
    assert base != chunk_key(HFTeacher(), "m", SamplingConfig(seed=1, temperature=0.5), prefixes, 1)
    assert base != chunk_key(HFTeacher(), "m", SamplingConfig(seed=1), [Prefix(ids=[1, 2, 4], messages=())], 1)
    seeds = {chunk_seed(s, split, c) for s in (0, 1) for split in ("train", "heldout") for c in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**31 for s in seeds)
