"""``promptbake eval RUN_DIR``: the evaluation of a finished bake, run again with other probes
or settings (the app layer: it assembles backends from the run's saved settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .baker import Baker
from .core.atomic import verified_dir, write_json
from .core.errors import ConfigError
from .core.probes import parse_probes
from .core.types import PromptMixture
from .run import files
from .run.rundir import RunDir
from .stages.evaluate import BEHAVIOUR_KEYS, behaviour_metrics
from .stages.evaluate.heldout import heldout_metrics
from .stages.queries import bake_queries
from .stages.render import MixtureRenderer
from .stages.report import write_report


def evaluate_run(run_dir: str | Path, prompt: str | PromptMixture | None = None, *, report: bool = True,
                 **settings: Any) -> dict[str, Any]:
    """Evaluate the finished bake in ``run_dir`` again (``promptbake eval``) and rewrite ``eval.json``.

    ``prompt`` is needed when the run kept only its sha256 (a mixture bake's: the PromptMixture). ``settings`` are evaluation
    settings (probes, strengths, reprompt, max_heldout, progress). The held-out KL is
    measured again where the teacher scores; otherwise (a hosted teacher, whose held-out
    targets came with its samples) the bake's own figures are kept.
    """
    if (Path(run_dir) / files.MIXTURE).is_file() and isinstance(prompt, str):
        raise ConfigError(f"{run_dir} is a mixture bake; evaluate it again with its prompts and weights: "
                          f"promptbake.reevaluate.evaluate_run(run_dir, PromptMixture(prompts, weights)).")
    baker = Baker.resume(run_dir, prompt, **settings)
    parse_probes(baker.config.probes)  # before any model loads
    cfg, teacher, student = baker.config, baker.teacher, baker.student
    run = RunDir(run_dir)
    adapter = verified_dir(run.file(files.ADAPTER))
    if adapter is None:
        raise ConfigError(f"{run_dir} has no finished adapter; finish the bake first (promptbake bake --resume).")
    if not (student.capabilities.adapters and student.capabilities.can_generate):
        raise ConfigError(f"Student '{student.name}' cannot load and run a saved adapter, which promptbake "
                          f"eval needs.")
    try:
        student.setup(cfg, 1)
        student.load_adapter(str(adapter))
        teacher.setup(cfg)
        teacher.use_student_tokenizer(student.tokenizer)
        renderer = baker.make_renderer(cfg.length_limit(student.context_length))
        heldout = bake_queries(cfg, evaluate=True)[1]
        if isinstance(renderer, MixtureRenderer):  # each held-out query under the prompt it was baked with
            renderer.assign(heldout, cfg.seed, "heldout")
        old = run.file(files.EVAL)
        metrics: dict[str, Any] = json.loads(old.read_text(encoding="utf-8")) if old.is_file() else {}
        held_file = run.file(files.HELDOUT)
        held = run.read_trajectories(files.HELDOUT) if held_file.is_file() else []
        ids = {q.id for q in heldout}
        held = [t for t in held if t.query_id in ids]
        if held and teacher.capabilities.can_score:
            metrics.update(heldout_metrics(teacher, student, held, cfg.top_k, cfg.score_batch_size, cfg.progress))
        for key in BEHAVIOUR_KEYS:  # measured again below; a setting turned off must not leave old figures
            metrics.pop(key, None)
        metrics.update(behaviour_metrics(teacher, student, renderer, heldout, cfg, run.path, adapter, held))
        write_json(old, metrics)
    finally:
        baker.close()
    if report:
        write_report(run.path)
    return metrics
