"""The sampling stage's draw: ``torch.multinomial`` against ``sampling.draw``, in one process.

    python benchmarks/sampler.py examples/prompts/french.txt [--queries 32] [--repeats 2] [--json out.json]

The hf teacher samples ``--queries`` built-in training queries with the prompt, 2 answers
each, 48 new tokens at temperature 1 (the default bake's settings), through shared-prefix
decoding. The passes alternate between the two ways of drawing each token; the fastest of
``--repeats`` counts. Both draw from the same distribution, so the answers differ draw by draw
but not in kind: each pass's mean answer length and the share of answers that end in a stop
token are printed beside its time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from promptbake import BakeConfig
from promptbake.builtin import sampling as sampling_mod
from promptbake.builtin.hf import HFTeacher
from promptbake.cli.base import read_prompt
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Prefix
from promptbake.stages.queries import load_queries
from promptbake.stages.render import Renderer


def multinomial(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The draw before: one exponential variate per vocabulary entry and row."""
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


def prompted_teacher(description: str) -> tuple[argparse.Namespace, HFTeacher, Renderer, list, list[Prefix]]:
    """The command line (``prompt_file``, ``--queries``, ``--repeats``, ``--json``), the hf teacher on
    the embedded model in float32, the renderer with the prompt, the training queries and their
    prompted prefixes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("prompt_file")
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    prompt = read_prompt(args.prompt_file)
    teacher = HFTeacher()
    teacher.setup(BakeConfig(prompt=prompt, model="smollm2-135m", dtype="float32", device="cpu", progress=False))
    renderer = Renderer(teacher.tokenizer, prompt, max_length=1024)
    queries = load_queries(None, "train", args.queries)
    prefixes = [Prefix(renderer.prefix(q, True), tuple(renderer.messages(q, True))) for q in queries]
    return args, teacher, renderer, queries, prefixes


def main() -> None:
    args, teacher, renderer, _, prefixes = prompted_teacher(__doc__.split("\n\n")[0])
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=48, min_new_tokens=1,
                              stop_ids=list(renderer.stop_ids), seed=0)
    kept = sampling_mod.draw
    teacher.generate(prefixes[:4], sampling)  # the prompt's cache and the kernels, warm
    rows: dict[str, dict] = {"multinomial": {"passes_s": []}, "draw": {"passes_s": []}}
    try:
        for _ in range(args.repeats):
            for name, fn in (("multinomial", multinomial), ("draw", kept)):
                sampling_mod.draw = fn
                start = time.perf_counter()
                groups = teacher.generate(prefixes, sampling)
                rows[name]["passes_s"].append(time.perf_counter() - start)
                answers = [s for g in groups for s in g]
                rows[name]["mean_tokens"] = sum(len(s.token_ids) for s in answers) / len(answers)
                rows[name]["finished"] = sum(s.finished for s in answers) / len(answers)
    finally:
        sampling_mod.draw = kept
    for row in rows.values():
        row["seconds"] = min(row["passes_s"])
    ratio = rows["multinomial"]["seconds"] / rows["draw"]["seconds"]
    for name, row in rows.items():
        print(f"{name:<12}{row['seconds']:>8.1f} s  mean tokens {row['mean_tokens']:.1f}  finished {row['finished']:.2f}")
    print(f"draw: {ratio:.2f}x multinomial's speed")
    if args.json:
        result = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                  "torch": torch.__version__, "settings": vars(args), "configs": rows, "ratio": ratio}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
