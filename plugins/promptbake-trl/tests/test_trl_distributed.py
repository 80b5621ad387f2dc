"""Under torchrun every process does its share of the teacher's work, and the bake equals one process's.

Run by pytest, this file launches itself as the bake script (``python -m torch.distributed.run
--nproc_per_node 2 THIS_FILE ...``, gloo on CPU); run as a script, it bakes once with chunks
of 2 queries and target shards of 4 trajectories (so a tiny bake has several of each), counts
the prefixes the hf teacher sampled and the trajectories it scored in each process up to
training, and writes them to ``CALLS/rank-R.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROMPT = "Always answer like a pirate, matey."
# 8 training queries in 4 chunks and 4 held-out ones in 2, 2 samples a query: 16 training
# trajectories in 4 target shards; 4 optimizer steps of 4 trajectories.
SETTINGS = {"max_queries": 8, "max_heldout": 4, "samples_per_query": 2, "max_new_tokens": 6, "epochs": 1,
            "batch_size": 4, "lr": 3e-3, "loss": "topk_kl", "progress": False, "device": "cpu"}
CHUNK_QUERIES, SHARD_SIZE = 2, 4


def bake(model: str, out: str, calls: str, resume: str = "") -> None:
    """One bake in this process (under torchrun: one rank of it), counting the teacher's calls;
    with ``resume`` it continues the bake in ``out``."""
    from promptbake import Baker
    from promptbake.builtin.hf import HFTeacher
    from promptbake.run import cache
    from promptbake.stages import generate, train

    generate.CHUNK_QUERIES, cache.SHARD_SIZE = CHUNK_QUERIES, SHARD_SIZE
    counts = {"sampled": 0, "scored": 0}

    def counting(method, field, size):  # type: ignore[no-untyped-def]
        def wrapped(self, items, *a, **k):  # type: ignore[no-untyped-def]
            counts[field] += size(items)
            return method(self, items, *a, **k)
        return wrapped

    HFTeacher.generate = counting(HFTeacher.generate, "sampled", len)
    HFTeacher.score = counting(HFTeacher.score, "scored", len)
    HFTeacher.score_hidden = counting(HFTeacher.score_hidden, "scored", len)
    real_train = train.train

    def training(*a, **k):  # type: ignore[no-untyped-def]
        # The teacher's work is done; the evaluation (rank 0's alone) calls it again afterwards.
        Path(calls, f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(counts))
        return real_train(*a, **k)

    train.train = training
    baker = Baker.resume(out, PROMPT) if resume else Baker(PROMPT, model=model, student="trl", out=out, **SETTINGS)
    baker.run()


def _launch(processes: int, model: Path, out: Path, calls: Path, *resume: str) -> None:
    calls.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": "trl", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*(launcher if processes > 1 else [sys.executable]), __file__, str(model), str(out),
                             str(calls), *resume], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def _records(run: Path, stage: str) -> list[dict]:
    return [r for line in (run / "metrics.jsonl").read_text().splitlines() if (r := json.loads(line))["stage"] == stage]


def test_two_processes_share_the_teachers_work_and_bake_one_process_adapter(tmp_path):
    """torchrun, 2 gloo processes: each samples half the queries and scores half the trajectories
    (chunk c and shard n go to rank c % 2, n % 2), both train on the whole in one process's order,
    and the adapter equals a one-process bake's on the same trajectories and targets."""
    import torch
    from helpers import save_tiny_model
    from safetensors.torch import load_file

    model = save_tiny_model(tmp_path)
    runs = {n: tmp_path / f"run{n}" for n in (1, 2)}
    for n, run in runs.items():
        _launch(n, model, run, tmp_path / f"calls{n}")

    one = json.loads((tmp_path / "calls1" / "rank-0.json").read_text())
    ranks = [json.loads((tmp_path / "calls2" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert one == {"sampled": 12, "scored": 16}  # 8 training and 4 held-out queries; 16 trajectories
    assert ranks == [{"sampled": 6, "scored": 8}] * 2  # half each
    generated = {r["split"]: r["sampled_by_rank"] for r in _records(runs[2], "generate")}
    assert generated == {"train": [[0, 2], [1, 3]], "heldout": [[0], [1]]}
    assert [r["scored_by_rank"] for r in _records(runs[2], "score")] == [[[0, 2], [1, 3]]]

    # Every chunk and shard under the one-process bake's names and keys, and the same trajectories.
    for name in ("generate", "targets"):
        assert sorted(p.name for p in (runs[1] / name).iterdir()) == sorted(p.name for p in (runs[2] / name).iterdir())
    for name in ("trajectories.jsonl", "heldout.jsonl", "targets/index.json"):
        assert (runs[1] / name).read_text() == (runs[2] / name).read_text(), name
    for n in range(4):
        shard = f"targets/shard-{n:05d}.safetensors"
        a, b = load_file(runs[1] / shard), load_file(runs[2] / shard)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), shard

    assert [r["step"] for r in _records(runs[2], "train")] == [1, 2, 3, 4]
    assert (runs[2] / "eval.json").is_file()  # rank 0 evaluated
    a = load_file(runs[1] / "adapter" / "adapter_model.safetensors")
    b = load_file(runs[2] / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |adapter difference|, 1 vs 2 processes: {diff:.3g}")
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-4  # trained: LoRA's B starts at 0
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_a_two_process_resume_makes_only_the_missing_chunks_of_a_one_process_bake(tmp_path):
    """The one-process bake cut off with chunks 2 and 3 and target shards 2 and 3 missing, resumed
    under torchrun: each rank makes the missing chunk and shard that are its own (c % 2), reads
    the rest under the one-process bake's keys, and the adapter is the uninterrupted bake's."""
    import torch
    from helpers import save_tiny_model
    from safetensors.torch import load_file

    model = save_tiny_model(tmp_path)
    run = tmp_path / "run"
    _launch(1, model, run, tmp_path / "calls1")
    whole = load_file(run / "adapter" / "adapter_model.safetensors")
    trajectories = (run / "trajectories.jsonl").read_text()
    for name in ("adapter", "checkpoint"):
        shutil.rmtree(run / name)
    for name in ("generate/train-00002.jsonl", "generate/train-00003.jsonl", "targets/index.json",
                 "targets/shard-00002.safetensors", "targets/shard-00003.safetensors"):
        (run / name).unlink()
    _launch(2, model, run, tmp_path / "calls2", "resume")

    ranks = [json.loads((tmp_path / "calls2" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"sampled": 2, "scored": 4}] * 2  # chunk 2 and shard 2 on rank 0, 3 on rank 1
    generated = {r["split"]: r for r in _records(run, "generate")}  # the last of each split
    assert generated["train"]["sampled_by_rank"] == [[2], [3]] and generated["train"]["chunks_reused"] == 2
    assert generated["heldout"]["sampled_by_rank"] == [[], []] and generated["heldout"]["chunks_reused"] == 2
    assert _records(run, "score")[-1]["scored_by_rank"] == [[2], [3]]
    assert (run / "trajectories.jsonl").read_text() == trajectories
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == whole.keys()
    print(f"max |adapter difference|, whole vs resumed on 2 processes: "
          f"{max(float((resumed[k] - whole[k]).abs().max()) for k in whole):.3g}")
    for k in whole:
        assert torch.allclose(resumed[k], whole[k], rtol=1e-4, atol=1e-6), k


if __name__ == "__main__":
    bake(*sys.argv[1:])
