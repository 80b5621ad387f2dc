"""The name of every file and folder a bake writes in its run directory, defined once.

::

    RUN/config.json          settings (the prompt's sha256; its text only with include_prompt)
    RUN/generate/            teacher samples, one file per chunk of queries (run/chunks.py)
    RUN/trajectories.jsonl   rendered trajectories
    RUN/heldout.jsonl        held-out trajectories for the evaluation
    RUN/targets/             teacher targets: safetensors shards + index.json (run/cache.py)
    RUN/on-policy/           each epoch's student samples and their targets (stages/onpolicy.py)
    RUN/checkpoint/          the latest training state (run/checkpoint.py)
    RUN/metrics.jsonl        one line per training step and per stage
    RUN/adapter/             the trained adapter (plus promptbake.json)
    RUN/epochs/epoch-N/      the adapter after each epoch
    RUN/eval.json            held-out evaluation
    RUN/answers.jsonl        greedy answers of every side, per held-out query
    RUN/report.html          the report (plots also in RUN/report/)
    RUN/mixture.json         a mixture bake's prompts and weights
    RUN/export/FORMAT/       the bake exported for a server (export.json says what each holds)
"""

CONFIG = "config.json"
GENERATE = "generate"
TRAJECTORIES = "trajectories.jsonl"
HELDOUT = "heldout.jsonl"
TARGETS = "targets"
ON_POLICY = "on-policy"
CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
ADAPTER = "adapter"
EPOCHS = "epochs"
EVAL = "eval.json"
ANSWERS = "answers.jsonl"
REPORT = "report.html"
REPORT_PLOTS = "report"
MIXTURE = "mixture.json"
MERGED = "merged"  # techniques: a chain step's adapter merged into its model
EXPORT = "export"  # RUN/export/FORMAT/: the bake written for a server (stages/export.py)
EXPORTS = "export.json"  # what each export wrote, how to serve it, what was measured


def epoch_adapter(epoch: int) -> str:
    """The folder of the adapter saved after ``epoch`` (counted from 1)."""
    return f"{EPOCHS}/epoch-{epoch}"
