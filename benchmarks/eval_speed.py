"""The evaluation stage of a finished bake, as it ran before this round's two savings and as it runs now.

    python benchmarks/eval_speed.py runs/french examples/prompts/french.txt [--json out.json]

Both variants run ``promptbake eval`` (the evaluation stage of a bake: held-out KL, greedy and
sampled answers of every side, the on-policy gap, the epoch curve) on a copy of the run, in one
process, one after the other:

* before: the prompted side draws all of its sampled answers, and ``model.generate`` runs the
  prefill of every one of a prefix's ``n`` rows (the rows copied before generation);
* now: each held-out trajectory is the prompted side's first sampled answer to its query, and
  the ``n`` rows of a prefix share one prefill (``promptbake/builtin/sampling.py``).

Besides seconds (noisy on a shared machine), each variant counts the tokens the model ran through
(a forward's rows times its width, summed): that ratio is the work saved, noise-free.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

from promptbake.builtin import sampling as sampling_mod
from promptbake.cli.base import read_prompt
from promptbake.reevaluate import evaluate_run
from promptbake.stages.evaluate import behaviour


@contextmanager
def as_before():
    """The evaluation as it was: prompted samples all drawn, each of ``n`` rows prefilled."""
    generate, prompted = sampling_mod._generate, behaviour.prompted_samples

    def rows_copied(model, prefixes, shared, prefix, sampling, *args, **kwargs):
        if sampling.n == 1:
            return generate(model, prefixes, shared, prefix, sampling, *args, **kwargs)
        rows = [p for p in prefixes for _ in range(sampling.n)]
        return generate(model, rows, shared, prefix, replace(sampling, n=1), *args, **kwargs)

    sampling_mod._generate = rows_copied
    behaviour.prompted_samples = lambda sides, queries, sampling, held: sides.sample_groups("prompted", queries, sampling)
    try:
        yield
    finally:
        sampling_mod._generate, behaviour.prompted_samples = generate, prompted


class TokenCount:
    """Tokens through the decoder (rows × width of each forward) while installed on a model."""

    def __init__(self):
        self.tokens = 0

    def add(self, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None:
            self.tokens += int(ids.shape[0] * ids.shape[1])


def measure(run_dir: Path, prompt: str, before: bool) -> dict:
    from transformers.models.llama.modeling_llama import LlamaModel

    copy = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(run_dir, copy)
    count = TokenCount()
    original = LlamaModel.forward

    def counted(self, *args, **kwargs):
        count.add(kwargs)
        return original(self, *args, **kwargs)

    LlamaModel.forward = counted
    started = time.perf_counter()
    try:
        with as_before() if before else nullcontext():
            metrics = evaluate_run(copy, prompt, report=False, progress=False)
    finally:
        LlamaModel.forward = original
        shutil.rmtree(copy.parent, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {"variant": "before" if before else "now", "seconds": round(seconds, 1), "tokens": count.tokens,
            "gap_closed": metrics.get("gap_closed"),
            "probes_sampled": metrics.get("probes_sampled"), "on_policy_gap": (metrics.get("on_policy") or {}).get("gap_closed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("prompt_file")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prompt = read_prompt(args.prompt_file)
    rows = [measure(args.run_dir, prompt, before=True), measure(args.run_dir, prompt, before=False)]
    for row in rows:
        print(json.dumps(row), flush=True)
    before, now = rows
    print(f"evaluation: {before['seconds']} s -> {now['seconds']} s ({before['seconds'] / now['seconds']:.2f}x); "
          f"tokens through the model {before['tokens']} -> {now['tokens']} ({now['tokens'] / before['tokens']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
