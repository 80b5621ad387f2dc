"""Held-out KL of promptbake's default against the naive loop, at several batch orders.

bake_speed.py compares the two at one batch order (its ``--seed``). The order alone moves
held-out KL by a few percent, so here each order seed is run: the naive loop trains on
exactly the micro-batches promptbake's Baker.train draws for that seed (same
trajectories, LoRA initialisation and batches), and the two differ only in how the
teacher's targets are made and matched. ``--top-k K`` runs topk_kl at K instead of the
default loss. Writes JSON
(``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bake_speed import naive_train, workload

from promptbake.stages.evaluate.heldout import heldout_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", default="0,1", help="Batch-order seeds (comma-separated).")
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--top-k", type=int, help="Run topk_kl at this K instead of the default loss.")
    ap.add_argument("--json", default="benchmarks/results/kl_spread.json")
    args = ap.parse_args()
    work = workload(queries=args.queries, heldout=args.heldout)  # seed 0: sampling and LoRA initialisation
    config = work.config if args.top_k is None else replace(work.config, loss="topk_kl", top_k=args.top_k)
    teacher, trajs, held = work.teacher, work.trajs, work.held
    scorer = work.baker if args.top_k is None else work.baker_for(config, student=work.baker.student)
    targets = scorer.cached_score(trajs)
    work.baker.student.close()
    rows: dict[str, dict[str, float]] = {"default": {}, "naive": {}}
    loss = None
    for order in [int(x) for x in args.orders.split(",")]:
        # The student is seed 0's LoRA initialisation every time: only the batch order moves.
        variant = work.baker_for(replace(config, seed=order), student=work.fresh_student())
        loss = f"{variant.config.loss} ({variant.target_kind()} targets, K {variant.config.top_k})"
        variant.train(trajs, targets)
        rows["default"][str(order)] = heldout_metrics(teacher, variant.student, held, 20, 8, False)["kl_prompted_baked"]
        variant.student.close()
        student = work.fresh_student()
        t0 = time.perf_counter()
        naive_train(student, trajs, variant.epoch_batches(trajs))
        rows["naive"][str(order)] = heldout_metrics(teacher, student, held, 20, 8, False)["kl_prompted_baked"]
        student.close()
        print(order, rows["default"][str(order)], rows["naive"][str(order)], f"({time.perf_counter() - t0:.0f} s naive)",
              flush=True)
    out = {"loss": loss, "heldout_kl": rows, "summary": {}}
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
