"""How much a sampled probe score moves between draws: the prompted teacher's answers to a bake's
held-out queries, sampled as the sampling stage samples them, at several seeds.

    python benchmarks/probe_draws.py runs/french examples/prompts/french.txt language=fr [--seeds 0 1 2 3 4]

Seed 0 of the default bake reproduces its own held-out trajectories. Prints one line a seed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from promptbake.baker import Baker
from promptbake.cli.base import read_prompt
from promptbake.core import decoding
from promptbake.core.probes import parse_probes
from promptbake.stages.generate import sample_split
from promptbake.stages.queries import bake_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("prompt_file")
    parser.add_argument("probe", help="a text probe, e.g. language=fr")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    baker = Baker.resume(args.run_dir, read_prompt(args.prompt_file), progress=False)
    cfg, teacher, student = baker.config, baker.teacher, baker.student
    (probe,) = parse_probes([args.probe])
    try:
        student.setup(cfg, 1)
        teacher.setup(cfg)
        teacher.use_student_tokenizer(student.tokenizer)
        renderer = baker.make_renderer(cfg.length_limit(student.context_length))
        held = bake_queries(cfg)[1]
        extras = decoding.bake_extras(cfg, student)
        for seed in args.seeds:
            trajectories = sample_split(teacher, renderer, held, 1, replace(cfg, seed=seed), extras, None, "heldout")[0]
            rows = [{"question": "", "prompted": t.text} for t in trajectories]
            print(json.dumps({"seed": seed, "answers": len(rows), probe.label: probe.evaluate(rows, ["prompted"])["prompted"]}),
                  flush=True)
    finally:
        baker.close()


if __name__ == "__main__":
    main()
