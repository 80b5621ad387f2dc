"""The evaluation stage of a finished bake without some of its savings ("before") and as it runs now.

    python benchmarks/eval_speed.py runs/french examples/prompts/french.txt [--undo SAVING ...] [--json out.json]

Both variants run ``promptbake eval`` (the evaluation stage of a bake: held-out KL, greedy and
sampled answers of every side, the on-policy gap, the epoch curve) on a copy of the run, in one
process, one after the other. "before" undoes the savings named with ``--undo`` (default: all):

* ``held_first``: each held-out trajectory is the prompted side's first sampled answer to its
  query (undone: the prompted side draws all of its sampled answers);
* ``one_prefill``: the ``n`` rows of a prefix share one prefill in ``model.generate``'s path
  (undone: every row is prefilled; ``promptbake/builtin/sampling.py``);
* ``student_start``: the student's rows of one call run what they all start with (the chat
  template's default system message) once (undone: every row runs it;
  ``PeftStudent._shared_start``).

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
from promptbake.builtin.peft import PeftStudent
from promptbake.cli.base import read_prompt
from promptbake.reevaluate import evaluate_run
from promptbake.stages.evaluate import behaviour

SAVINGS = ("held_first", "one_prefill", "student_start")


@contextmanager
def as_before(undo: tuple[str, ...] = SAVINGS):
    """The evaluation without the savings in ``undo``."""
    generate, prompted, start = sampling_mod._generate, behaviour.prompted_samples, PeftStudent._shared_start

    def rows_copied(model, prefixes, shared, prefix, sampling, *args, **kwargs):
        if sampling.n == 1:
            return generate(model, prefixes, shared, prefix, sampling, *args, **kwargs)
        rows = [p for p in prefixes for _ in range(sampling.n)]
        return generate(model, rows, shared, prefix, replace(sampling, n=1), *args, **kwargs)

    if "one_prefill" in undo:
        sampling_mod._generate = rows_copied
    if "held_first" in undo:
        behaviour.prompted_samples = lambda sides, queries, sampling, held: sides.sample_groups("prompted", queries,
                                                                                               sampling)
    if "student_start" in undo:
        PeftStudent._shared_start = lambda self: None
    try:
        yield
    finally:
        sampling_mod._generate, behaviour.prompted_samples, PeftStudent._shared_start = generate, prompted, start


class TokenCount:
    """Tokens through the decoder (rows × width of each forward) while installed on a model."""

    def __init__(self):
        self.tokens = 0

    def add(self, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None:
            self.tokens += int(ids.shape[0] * ids.shape[1])


def measure(run_dir: Path, prompt: str, before: bool, undo: tuple[str, ...] = SAVINGS) -> dict:
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
        with as_before(undo) if before else nullcontext():
            metrics = evaluate_run(copy, prompt, report=False, progress=False)
    finally:
        LlamaModel.forward = original
        shutil.rmtree(copy.parent, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {"variant": f"before (without {', '.join(undo)})" if before else "now", "seconds": round(seconds, 1), "tokens": count.tokens,
            "gap_closed": metrics.get("gap_closed"),
            "probes_sampled": metrics.get("probes_sampled"), "on_policy_gap": (metrics.get("on_policy") or {}).get("gap_closed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("prompt_file")
    parser.add_argument("--undo", nargs="+", choices=SAVINGS, default=list(SAVINGS),
                        help="the savings the 'before' variant runs without (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prompt = read_prompt(args.prompt_file)
    undo = tuple(args.undo)
    rows = [measure(args.run_dir, prompt, True, undo), measure(args.run_dir, prompt, False)]
    for row in rows:
        print(json.dumps(row), flush=True)
    before, now = rows
    print(f"evaluation: {before['seconds']} s -> {now['seconds']} s ({before['seconds'] / now['seconds']:.2f}x); "
          f"tokens through the model {before['tokens']} -> {now['tokens']} ({now['tokens'] / before['tokens']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
