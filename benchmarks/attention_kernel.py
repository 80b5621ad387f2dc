"""How fast the prefix part of shared-prefix attention runs, against plain matrix products.

``python benchmarks/attention_kernel.py`` (under a minute). The shape is the scoring
benchmark's at a 2,048-token prompt on SmolLM2-135M: 3 KV heads, 8 trajectories x 3 query
heads per KV head x ~77 tokens = 1,850 query rows, 2,048 cached keys, head size 64. If the
prefix part ran much slower per multiply-add than the model's linear layers, a faster
kernel could bring scoring time below the arithmetic ratio; this says whether it does.
Fastest of ``--repeats`` each; prints GFLOP/s and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from promptbake.builtin import prefix_cache


def fastest(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1850)
    ap.add_argument("--keys", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/attention_kernel.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    kv, d = 3, 64
    q, k, v = torch.randn(kv, args.rows, d), torch.randn(kv, args.keys, d), torch.randn(kv, args.keys, d)
    attention_flop = 2 * 2 * kv * args.rows * args.keys * d  # scores and weighted values

    def attention(fused: bool) -> Callable[[], object]:
        def run() -> object:
            prefix_cache.FUSED_CPU = fused
            return prefix_cache.prefix_attention(q, k, v, d ** -0.5)
        return run

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(616, 576), torch.randn(1536, 576)  # 8 trajectories' rows through an MLP projection
    cases = {
        "prefix_attention_fused": (attention(True), attention_flop),
        "prefix_attention_unfused": (attention(False), attention_flop),
        "matmul_2048_cubed": (lambda: a @ b, 2 * 2048 ** 3),
        "linear_616x576x1536": (lambda: x @ w.T, 2 * 616 * 576 * 1536),
    }
    out = {}
    for name, (fn, flop) in cases.items():
        seconds = fastest(fn, args.repeats)
        out[name] = {"ms": 1000 * seconds, "gflop_per_s": flop / seconds / 1e9}
        print(f"{name:<26}{out[name]['ms']:>9.2f} ms{out[name]['gflop_per_s']:>9.1f} GFLOP/s")
    prefix_cache.FUSED_CPU = True
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "settings": vars(args), "cases": out}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
