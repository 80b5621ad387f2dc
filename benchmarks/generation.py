"""Sampling speed: shared-prefix decoding against ``model.generate`` with a copied prompt.

Run with ``python benchmarks/generation.py`` (``make bench`` runs it after bake_speed.py).
One process, the embedded SmolLM2-135M and the bake benchmark's generation workload: a
≈600-token system prompt, 32 queries x 2 samples x 64 new tokens (greedy, so every
configuration decodes the same tokens and the same amount of work). Configurations:

* ``generate``: the hf teacher as it was before -- ``model.generate`` with the system
  prompt's KV computed once, then copied to every row of every batch;
* ``shared``: the hf teacher now -- shared-prefix decoding, where every step attends to
  the one cached prompt (:func:`promptbake.sampling.decode_shared`);
* ``unprompted``: ``model.generate`` without a system prompt or prompt cache, as the
  student samples.

each at 16 rows (the old default ``generate_batch_size``) and 64 (the new one). The passes
go round the configurations in turn and the fastest of ``--repeats`` counts. Prints a
table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from bake_speed import system_prompt

from promptbake import BakeConfig
from promptbake.builtin import prefix_cache
from promptbake.builtin.hf import HFTeacher
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Prefix
from promptbake.stages.queries import load_queries
from promptbake.stages.render import Renderer


@contextlib.contextmanager
def copied_prefix() -> Iterator[None]:
    """Decode as for an architecture outside the shared-prefix list: ``model.generate``
    with the cached prompt copied per row."""
    before = prefix_cache.SHARED_PREFIX_MODELS
    prefix_cache.SHARED_PREFIX_MODELS = set()
    try:
        yield
    finally:
        prefix_cache.SHARED_PREFIX_MODELS = before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--batch-sizes", default="16,64", help="Rows per batch to time, comma-separated.")
    ap.add_argument("--repeats", type=int, default=2, help="Passes per configuration; the fastest counts.")
    ap.add_argument("--json", default="benchmarks/results/generation.json")
    args = ap.parse_args()
    torch.manual_seed(0)

    teacher = HFTeacher()
    teacher.setup(BakeConfig(prompt="x", model="smollm2-135m", dtype="float32", device="cpu", progress=False))
    tok = teacher.tokenizer
    queries = load_queries(None, "train", args.queries)
    prompted = Renderer(tok, system_prompt(tok, args.prompt_tokens), max_length=args.prompt_tokens + 512)
    unprompted = Renderer(tok, "", max_length=512)
    sides = {"prompted": [Prefix(prompted.prefix(q, True), tuple(prompted.messages(q, True))) for q in queries],
             "unprompted": [Prefix(unprompted.prefix(q, False), tuple(unprompted.messages(q, False)))
                            for q in queries]}
    sampling = SamplingConfig(n=args.samples, temperature=0, max_new_tokens=args.tokens,
                              min_new_tokens=args.tokens, stop_ids=[tok.eos_token_id])
    configs = [(path, size) for path in ("generate", "shared", "unprompted")
               for size in (int(x) for x in args.batch_sizes.split(","))]

    def run(path: str, size: int) -> tuple[float, list[list[int]]]:
        teacher.generate_batch_size = size
        side = "unprompted" if path == "unprompted" else "prompted"
        caches = teacher.prefixes
        if path == "unprompted":
            teacher.prefixes = None  # no prompt cache, as a student samples
        try:
            with copied_prefix() if path == "generate" else contextlib.nullcontext():
                start = time.perf_counter()
                groups = teacher.generate(sides[side], sampling)
                seconds = time.perf_counter() - start
        finally:
            teacher.prefixes = caches
        return seconds, [s.token_ids for g in groups for s in g]

    run("shared", 64)  # builds the prompt's cache, warms the kernels
    assert teacher.prefixes is not None
    cached = len(teacher.prefixes["prompted"].ids)
    rows = {f"{p}_b{s}": {"path": p, "rows_per_batch": s, "passes_s": []} for p, s in configs}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for path, size in configs:
            seconds, tokens[f"{path}_b{size}"] = run(path, size)
            rows[f"{path}_b{size}"]["passes_s"].append(seconds)
    n_rows = args.queries * args.samples
    for key, row in rows.items():
        row["seconds"] = min(row["passes_s"])
        row["ms_per_token"] = 1000 * row["seconds"] / (n_rows * args.tokens)
    first = f"generate_b{configs[0][1]}"  # the old default, which the prompted configurations are compared to
    same = {key: sum(a == b for a, b in zip(tokens[first], got)) / n_rows for key, got in tokens.items()
            if rows[key]["path"] != "unprompted"}
    ratios = {}
    for path in ("generate", "unprompted"):  # each side's first configuration over the others
        base = f"{path}_b{configs[0][1]}"
        ratios.update({f"{base}_over_{key}": rows[base]["seconds"] / row["seconds"] for key, row in rows.items()
                       if key != base and (row["path"] == "unprompted") == (path == "unprompted")})
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": torch.get_num_threads()},
              "torch": torch.__version__, "settings": vars(args),
              "prompt_tokens_cached": cached,
              "configs": rows, "greedy_rows_equal_to_baseline": same, "ratios": ratios}
    print(f"{'configuration':<22}{'seconds':>9}{'ms/token':>10}")
    for key, row in rows.items():
        print(f"{key:<22}{row['seconds']:>9.1f}{row['ms_per_token']:>10.2f}")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    print(f"greedy rows equal to {first}'s:", same)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
