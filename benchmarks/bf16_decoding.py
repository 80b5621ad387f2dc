"""Decoding with float32 products against bfloat16 products (``generate_bf16``), in one process.

    python benchmarks/bf16_decoding.py examples/prompts/french.txt [--queries 32] [--repeats 2] [--json out.json]

The hf teacher (the embedded SmolLM2-135M, float32) answers ``--queries`` built-in training
queries with the prompt through shared-prefix decoding: 2 sampled answers each at temperature 1
and one greedy answer, 48 new tokens (the default bake's settings). The passes alternate
between float32 products and bfloat16 ones; the fastest of ``--repeats`` counts. Besides
seconds, how far apart the two are as models: on the float32 passes' sampled answers, the mean
per-token KL(float32 || bfloat16 products) of the next-token distributions, and the share of
positions whose most likely token is the same (scoring with the products made the same way).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from sampler import prompted_teacher

from promptbake.builtin.low_precision import bf16_products, linear_copies
from promptbake.core.interfaces import SamplingConfig


def main() -> None:
    args, teacher, renderer, queries, prefixes = prompted_teacher(__doc__.split("\n\n")[0])
    settings = {"sampled": SamplingConfig(n=2, temperature=1.0, max_new_tokens=48, min_new_tokens=1,
                                          stop_ids=list(renderer.stop_ids), seed=0),
                "greedy": SamplingConfig(n=1, temperature=0.0, max_new_tokens=48, min_new_tokens=1,
                                         stop_ids=list(renderer.stop_ids))}
    teacher.generate(prefixes[:4], settings["sampled"])  # the prompt's cache and the kernels, warm
    rows = {f"{kind}_{mode}": {"passes_s": []} for kind in settings for mode in ("float32", "bf16")}
    answers = []
    for _ in range(args.repeats):
        for kind, sampling in settings.items():
            for mode in ("float32", "bf16"):
                teacher.generate_bf16 = mode == "bf16"
                start = time.perf_counter()
                groups = teacher.generate(prefixes, sampling)
                row = rows[f"{kind}_{mode}"]
                row["passes_s"].append(time.perf_counter() - start)
                drawn = [s for g in groups for s in g]
                row["tokens"] = sum(len(s.token_ids) for s in drawn)
                row["mean_tokens"] = row["tokens"] / len(drawn)
                if kind == "sampled" and mode == "float32":
                    answers = [renderer.trajectory(q, g[0].token_ids) for q, g in zip(queries, groups)]
    for row in rows.values():
        row["seconds"] = min(row["passes_s"])
    ratios = {kind: rows[f"{kind}_float32"]["seconds"] / rows[f"{kind}_bf16"]["seconds"] for kind in settings}
    # The two as models, on the float32 sampled answers: the teacher's scoring with either products.
    plain = teacher.score(answers, top_k=None, full=True)
    with bf16_products(linear_copies(teacher.handle.model)):
        low = teacher.score(answers, top_k=None, full=True)
    kl, same, n = 0.0, 0, 0
    for a, b in zip(plain, low):
        p, q = a.full_logprobs.float(), b.full_logprobs.float()
        kl += float((p.exp() * (p - q)).sum())
        same += int((p.argmax(-1) == q.argmax(-1)).sum())
        n += p.shape[0]
    drift = {"kl_float32_bf16": kl / n, "top1_same": same / n, "positions": n}
    for name, row in rows.items():
        print(f"{name:<16}{row['seconds']:>8.1f} s  mean tokens {row['mean_tokens']:.1f}")
    print(" ".join(f"{kind}: {r:.2f}x" for kind, r in ratios.items()))
    print(f"KL(float32 || bf16 products) {drift['kl_float32_bf16']:.2e} per token, top-1 the same at "
          f"{drift['top1_same']:.4f} of {n} positions")
    if args.json:
        result = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                  "torch": torch.__version__, "settings": vars(args), "configs": rows, "ratios": ratios,
                  "drift": drift}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
