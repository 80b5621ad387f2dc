"""The fidelity evaluation of a bake, run at the end of every bake and by ``promptbake eval RUN_DIR``.

It adds to the held-out KL of :mod:`promptbake.evaluate` what the models *do*:
greedy answers of base, prompted and baked models (``answers.jsonl``), their
length and distinct-n, probe scores, the on-policy gap, and the half-baking
curves (probe scores across adapter strengths and per-epoch adapters).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import behaviour, decoding
from .config import BakeConfig
from .errors import ConfigError
from .interfaces import Student, Teacher
from .probes import parse_probes
from .render import Renderer
from .rundir import write_text
from .types import Query

ANSWERS_FILE = "answers.jsonl"
EPOCHS_DIR = "epochs"
# The keys of eval.json that behaviour_metrics writes.
BEHAVIOUR_KEYS = ("answers", "probes", "probes_sampled", "probe_samples", "on_policy", "strengths", "epochs")


def epoch_adapters(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The per-epoch adapters a bake saved, oldest first: ``[(epoch, folder)]``."""
    from .rundir import verified_dir

    folder = Path(run_dir) / EPOCHS_DIR
    found = []
    for path in sorted(folder.glob("epoch-*")) if folder.is_dir() else []:
        suffix = path.name.removeprefix("epoch-")
        if suffix.isdigit() and verified_dir(path) == path:
            found.append((int(suffix), path))
    return sorted(found)


def behaviour_metrics(teacher: Teacher, student: Student, renderer: Renderer, queries: Sequence[Query],
                      config: BakeConfig, run_dir: str | Path | None = None,
                      adapter: str | Path | None = None) -> dict[str, Any]:
    """Answers, statistics, probes, on-policy gap and half-baking curves; writes ``answers.jsonl``.

    ``adapter`` is the final adapter's folder, reloaded after per-epoch adapters were tried.
    """
    if not queries or not student.capabilities.can_generate:
        return {}
    sides = behaviour.Sides(teacher, student, renderer, config.max_new_tokens, config.progress,
                            config.generate_batch_size, decoding.bake_extras(config, student))
    probes = parse_probes(config.probes)
    names = [*behaviour.SIDES, *(["reprompted"] if config.reprompt else [])]
    rows, stats = behaviour.answers(sides, queries, names)
    if run_dir is not None:
        write_text(Path(run_dir) / ANSWERS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    loglik = behaviour.loglik_for(sides) if any(p.needs_model for p in probes) else None
    out: dict[str, Any] = {"answers": stats}
    if probes:
        out["probes"] = behaviour.probe_scores(probes, rows, names, loglik)
    sampling = decoding.bake_sampling(config, renderer.stop_ids, sides.extras, seed=config.seed + 1)
    text_probes = [p for p in probes if not p.needs_model]
    drawn: dict[str, list[list[Any]]] = {}
    if text_probes and config.probe_samples:
        # Sampled answers at the bake's temperature; the on-policy gap reuses the first of each.
        many = replace(sampling, n=config.probe_samples)
        drawn = {side: sides.sample_groups(side, queries, many) for side in behaviour.SIDES}
        out["probes_sampled"] = behaviour.sampled_probe_scores(text_probes, sides, queries, drawn)
        out["probe_samples"] = config.probe_samples
    gap = behaviour.on_policy(sides, queries, sampling, config.top_k, config.score_batch_size,
                              {side: [g[0] for g in groups] for side, groups in drawn.items()})
    if gap is not None:
        out["on_policy"] = gap
    if text_probes and config.strengths and student.capabilities.adapters:
        # Strength 0 is the base side and 1 the baked side, both already answered above.
        known = {0: "base", 1: "baked"}
        out["strengths"] = [{"strength": s, "probes": {p.label: out["probes"][p.label][known[s]] for p in text_probes}
                             if s in known else _baked_scores(sides, queries, text_probes, s)}
                            for s in config.strengths]
    saved = epoch_adapters(run_dir) if run_dir is not None else []
    if text_probes and saved and student.capabilities.adapters and adapter is not None:
        curve = []
        for epoch, folder in saved:
            student.load_adapter(str(folder))
            curve.append({"epoch": epoch, "probes": _baked_scores(sides, queries, text_probes, 1.0)})
        student.load_adapter(str(adapter))
        out["epochs"] = curve
    return out


def _baked_scores(sides: behaviour.Sides, queries: Sequence[Query], probes: Sequence[Any],
                  strength: float) -> dict[str, float]:
    rows, _ = behaviour.answers(sides, queries, ["baked"], strength=strength)
    return {label: scores["baked"] for label, scores in behaviour.probe_scores(probes, rows, ["baked"], None).items()}


def evaluate_run(run_dir: str | Path, prompt: str | None = None, *, report: bool = True,
                 **settings: Any) -> dict[str, Any]:
    """Evaluate the finished bake in ``run_dir`` again (``promptbake eval``) and rewrite ``eval.json``.

    ``prompt`` is needed when the run kept only its sha256. ``settings`` are evaluation
    settings (probes, strengths, reprompt, max_heldout, progress). The held-out KL is
    measured again where the teacher scores; otherwise (a hosted teacher, whose held-out
    targets came with its samples) the bake's own figures are kept.
    """
    from .baker import Baker
    from .evaluate import heldout_metrics
    from .queries import bake_queries
    from .rundir import RunDir, verified_dir, write_json

    if (Path(run_dir) / "mixture.json").is_file():
        raise ConfigError(f"{run_dir} is a mixture bake, which promptbake eval cannot evaluate again yet; "
                          f"its eval.json and report come from the bake itself.")
    baker = Baker.resume(run_dir, prompt, **settings)
    parse_probes(baker.config.probes)  # before any model loads
    cfg, teacher, student = baker.config, baker.teacher, baker.student
    run = RunDir(run_dir)
    adapter = verified_dir(run.file("adapter"))
    if adapter is None:
        raise ConfigError(f"{run_dir} has no finished adapter; finish the bake first (promptbake bake --resume).")
    if not (student.capabilities.adapters and student.capabilities.can_generate):
        raise ConfigError(f"Student '{student.name}' cannot load and run a saved adapter, which promptbake "
                          f"eval needs.")
    try:
        if not cfg.progress:
            from .models import hide_loading_bars

            hide_loading_bars()
        student.setup(cfg, 1)
        student.load_adapter(str(adapter))
        teacher.setup(cfg)
        teacher.use_student_tokenizer(student.tokenizer)
        renderer = baker.make_renderer(cfg.length_limit(student.context_length))
        heldout = bake_queries(cfg.queries, cfg.heldout, cfg.max_queries, cfg.max_heldout)[1]
        old = run.file("eval.json")
        metrics: dict[str, Any] = json.loads(old.read_text(encoding="utf-8")) if old.is_file() else {}
        held_file = run.file("heldout.jsonl")
        held = run.read_trajectories("heldout.jsonl") if held_file.is_file() else []
        ids = {q.id for q in heldout}
        held = [t for t in held if t.query_id in ids]
        if held and teacher.capabilities.can_score:
            metrics.update(heldout_metrics(teacher, student, held, cfg.top_k, cfg.score_batch_size, cfg.progress))
        for key in BEHAVIOUR_KEYS:  # measured again below; a setting turned off must not leave old figures
            metrics.pop(key, None)
        metrics.update(behaviour_metrics(teacher, student, renderer, heldout, cfg, run.path, adapter))
        write_json(old, metrics)
    finally:
        baker.close()
    if report:
        from .report import write_report

        write_report(run.path)
    return metrics
