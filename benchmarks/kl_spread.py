"""Held-out KL of promptbake's default against the naive loop on the very same batches.

The end-to-end benchmark (bake_speed.py) gives each its own batch order, and the order
alone moves held-out KL by a few percent. Here, for each order seed, the naive loop
trains on exactly the micro-batches promptbake's Baker.train used (same trajectories,
LoRA initialisation and batches), so the two differ only in how the teacher's targets
are made and matched. Writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from bake_speed import naive_train, system_prompt

from promptbake import BakeConfig, Baker, models
from promptbake.batching import bucketed
from promptbake.evaluate import heldout_metrics
from promptbake.queries import load_queries
from promptbake.render import Renderer
from promptbake.rundir import RunDir
from promptbake.students.peft import PeftStudent
from promptbake.teachers.hf import HFTeacher


def baker_plan(trajectories, config: BakeConfig, seed: int) -> list[list[list[int]]]:
    """The micro-batches of each epoch that Baker.train draws for ``seed`` (grad_accum 1)."""
    rng = random.Random(seed)
    lengths = [len(t.unprompted_ids) for t in trajectories]
    return [bucketed(lengths, config.batch_size, rng) for _ in range(config.epochs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", default="0,1", help="Batch-order seeds (comma-separated).")
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--json", default="benchmarks/results/kl_spread.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    handle = models.load("smollm2-135m", "float32", "cpu")
    prompt = system_prompt(handle.tokenizer, 600)
    config = BakeConfig(prompt=prompt, model="smollm2-135m", dtype="float32", device="cpu", samples_per_query=2,
                        max_new_tokens=64, min_new_tokens=64, epochs=4, batch_size=8, progress=False, lr=1e-3)
    steps = config.epochs * -(-args.queries * 2 // config.batch_size)
    teacher = HFTeacher()
    teacher.setup(config)
    renderer = Renderer(handle.tokenizer, prompt, config.length_limit(handle.model.config.max_position_embeddings))

    def fresh_student() -> PeftStudent:
        s = PeftStudent()
        s.setup(config, steps)  # seed 0: the same LoRA initialisation for every run
        return s

    student = fresh_student()
    baker = Baker(config=config, teacher=teacher, student=student)
    baker.run_dir = RunDir(tempfile.mkdtemp())
    trajs = baker.generate(renderer, load_queries(None, "train", args.queries), 2)
    held = baker.generate(renderer, load_queries(None, "heldout", args.heldout), 1, split="heldout")
    targets = baker.cached_score(trajs)
    student.close()
    rows: dict[str, dict[str, float]] = {"default": {}, "naive": {}}
    for order in [int(x) for x in args.orders.split(",")]:
        student = fresh_student()
        variant = Baker(config=replace(config, seed=order), teacher=teacher, student=student)
        variant.run_dir = RunDir(tempfile.mkdtemp())
        variant.train(trajs, targets)
        rows["default"][str(order)] = heldout_metrics(teacher, student, held, 20, 8, False)["kl_prompted_baked"]
        student.close()
        student = fresh_student()
        t0 = time.perf_counter()
        naive_train(student, trajs, config.epochs, config.batch_size, order, plan=baker_plan(trajs, config, order))
        rows["naive"][str(order)] = heldout_metrics(teacher, student, held, 20, 8, False)["kl_prompted_baked"]
        student.close()
        print(order, rows["default"][str(order)], rows["naive"][str(order)], f"({time.perf_counter() - t0:.0f} s naive)",
              flush=True)
    out = {"top_k": baker.config.top_k, "heldout_kl": rows, "summary": {}}
    for name, by_order in rows.items():
        values = list(by_order.values())
        out["summary"][name] = {"mean": statistics.mean(values),
                                "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}
    ratios = [rows["default"][k] / rows["naive"][k] for k in rows["default"]]
    out["summary"]["default_over_naive_per_order"] = ratios
    out["summary"]["default_over_naive_of_means"] = out["summary"]["default"]["mean"] / out["summary"]["naive"]["mean"]
    print(json.dumps(out["summary"], indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
