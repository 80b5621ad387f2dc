"""Soft prefix vs LoRA on the embedded model: held-out KL gap closed at equal optimizer steps.

    .venv/bin/python benchmarks/students.py [--queries 48] [--epochs 3] [--out benchmarks/results/students.json]

Both bakes share one target cache, so they train on identical trajectories and
teacher targets; only the student (and its learning rate) differs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from promptbake import Baker

FRENCH = (Path(__file__).parents[1] / "examples" / "prompts" / "french.txt").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prefix-lr", type=float, default=1e-2)
    parser.add_argument("--virtual-tokens", type=int, default=None, help="default: the prompt's token count")
    parser.add_argument("--prefix-projection", action="store_true")
    parser.add_argument("--init", choices=["prompt", "random"], default="prompt")
    parser.add_argument("--only", choices=["peft", "prefix"], help="run one student only")
    parser.add_argument("--out", default="benchmarks/results/students.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="students-"))
    common = {"model": "smollm2-135m", "loss": "topk_kl", "top_k": 20, "max_queries": args.queries,
              "max_heldout": args.heldout, "samples_per_query": 2, "max_new_tokens": args.max_new_tokens,
              "epochs": args.epochs, "batch_size": 8, "target_cache": str(work / "targets"), "progress": False,
              "device": "cpu"}
    runs = {
        "peft (LoRA r=16, lr 1e-3)": {"student": "peft", "lr": 1e-3},
        f"prefix ({args.virtual_tokens or 'prompt-length'} virtual tokens, init {args.init}, lr {args.prefix_lr:g})": {
            "student": "prefix", "lr": args.prefix_lr,
            "student_options": {"num_virtual_tokens": args.virtual_tokens, "init": args.init,
                                "prefix_projection": args.prefix_projection}},
    }
    runs = {name: s for name, s in runs.items() if args.only in (None, s["student"])}
    results = {}
    for name, settings in runs.items():
        t0 = time.perf_counter()
        result = Baker(FRENCH, out=str(work / settings["student"]), **common, **settings).run()
        e = result.eval
        results[name] = {"steps": result.metrics["steps"], "kl_base": e["kl_prompted_base"],
                         "kl_baked": e["kl_prompted_baked"], "gap_closed": e["gap_closed"],
                         "top1_base": e["top1_agreement_base"], "top1_baked": e["top1_agreement_baked"],
                         "seconds": time.perf_counter() - t0}
        print(name, json.dumps(results[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": {**vars(args)}, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
