"""The held-out gap closed by each epoch's adapter of a finished bake (``save_epochs``, the default):
how much each epoch of training buys, measured on the bake's own held-out trajectories.

    python benchmarks/epoch_gap.py runs/french examples/prompts/french.txt

Each epoch's adapter is loaded into the student in turn; the held-out KL is measured exactly as
the evaluation stage does (full-vocabulary KL to the prompted teacher, base = the adapter off).
"""
import json
import sys
import time
from collections.abc import Iterator

from promptbake.baker import Baker
from promptbake.cli.base import read_prompt
from promptbake.run import files
from promptbake.run.rundir import RunDir
from promptbake.stages.evaluate import epoch_adapters
from promptbake.stages.evaluate.heldout import heldout_metrics


def epoch_gaps(run_dir, prompt: str) -> Iterator[dict]:
    """One row per saved epoch adapter of the bake in ``run_dir``, oldest first."""
    baker = Baker.resume(run_dir, prompt, progress=False)
    cfg, teacher, student = baker.config, baker.teacher, baker.student
    held = RunDir(run_dir).read_trajectories(files.HELDOUT)
    try:
        student.setup(cfg, 1)
        teacher.setup(cfg)
        teacher.use_student_tokenizer(student.tokenizer)
        for epoch, folder in epoch_adapters(run_dir):
            started = time.perf_counter()
            student.load_adapter(str(folder))
            m = heldout_metrics(teacher, student, held, cfg.top_k, cfg.score_batch_size, False)
            yield {"epoch": epoch, "gap_closed": m["gap_closed"], "kl_prompted_baked": m["kl_prompted_baked"],
                   "kl_prompted_base": m["kl_prompted_base"], "top1_agreement_baked": m["top1_agreement_baked"],
                   "seconds": round(time.perf_counter() - started, 1)}
    finally:
        baker.close()


if __name__ == "__main__":
    for row in epoch_gaps(sys.argv[1], read_prompt(sys.argv[2])):
        print(json.dumps(row), flush=True)
