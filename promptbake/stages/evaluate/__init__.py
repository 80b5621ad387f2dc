"""The evaluate stage, run at the end of every bake and by ``promptbake eval RUN_DIR``.

The held-out KL (:mod:`.heldout`) and what the models *do* (:mod:`.behaviour`):
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

from ...core import decoding
from ...core.atomic import write_text
from ...core.config import BakeConfig
from ...core.interfaces import Student, Teacher
from ...core.probes import parse_probes
from ...core.types import Query, Targets, Trajectory
from ...run import files
from ..render import Renderer
from . import behaviour
from .heldout import evaluate_heldout

# The keys of eval.json that behaviour_metrics writes.
BEHAVIOUR_KEYS = ("answers", "probes", "probes_by_turn", "probes_sampled", "probe_samples", "on_policy", "strengths", "epochs")


def evaluate(teacher: Teacher, student: Student, renderer: Renderer, held: Sequence[Trajectory],
             held_targets: Sequence[Targets] | None, queries: Sequence[Query], config: BakeConfig,
             run_dir: str | Path, adapter: str | Path) -> dict[str, Any] | None:
    """The stage: the held-out KL of the held-out trajectories, then answers, probes, the
    on-policy gap and the half-baking curves on the held-out ``queries``; what eval.json holds
    (None: nothing could be evaluated)."""
    if not held:
        return None
    metrics = evaluate_heldout(teacher, student, held, held_targets, config)
    found = behaviour_metrics(teacher, student, renderer, queries, config, run_dir, adapter, held)
    return {**(metrics or {}), **found} or None


def epoch_adapters(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The per-epoch adapters a bake saved, oldest first: ``[(epoch, folder)]``."""
    from ...core.atomic import verified_dir

    folder = Path(run_dir) / files.EPOCHS
    found = []
    for path in sorted(folder.glob("epoch-*")) if folder.is_dir() else []:
        suffix = path.name.removeprefix("epoch-")
        if suffix.isdigit() and verified_dir(path) == path:
            found.append((int(suffix), path))
    return sorted(found)


def behaviour_metrics(teacher: Teacher, student: Student, renderer: Renderer, queries: Sequence[Query],
                      config: BakeConfig, run_dir: str | Path | None = None,
                      adapter: str | Path | None = None, held: Sequence[Trajectory] = ()) -> dict[str, Any]:
    """Answers, statistics, probes, on-policy gap and half-baking curves; writes ``answers.jsonl``.

    ``adapter`` is the final adapter's folder, reloaded after per-epoch adapters were tried.
    ``held``: the bake's held-out trajectories, the prompted teacher's samples at the bake's
    settings, which stand for the prompted side's first sampled answer to each query.
    """
    if not queries or not student.capabilities.can_generate:
        return {}
    sides = behaviour.Sides(teacher, student, renderer, config.max_new_tokens, config.progress,
                            config.generate_batch_size, decoding.bake_extras(config, student))
    probes = parse_probes(config.probes)
    names = [*behaviour.SIDES, *(["reprompted"] if config.reprompt else [])]
    rows, stats = behaviour.answers(sides, queries, names)
    if run_dir is not None:
        write_text(Path(run_dir) / files.ANSWERS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    loglik = behaviour.loglik_for(sides) if any(p.needs_model for p in probes) else None
    out: dict[str, Any] = {"answers": stats}
    if probes:
        out["probes"] = behaviour.probe_scores(probes, rows, names, loglik)
        turns = sorted({r["turn"] for r in rows if "turn" in r})
        if len(turns) > 1:  # conversations: each turn's answers on their own
            out["probes_by_turn"] = {str(t): behaviour.probe_scores(probes, [r for r in rows if r["turn"] == t],
                                                                    names, loglik) for t in turns}
    sampling = decoding.bake_sampling(config, renderer.stop_ids, sides.extras, seed=config.seed + 1)
    text_probes = [p for p in probes if not p.needs_model]
    drawn: dict[str, list[list[Any]]] = {}
    # Sampled answers and the on-policy gap answer one last turn; conversations get the greedy
    # turn-by-turn answers above and the held-out KL per turn.
    single = all(q.user_turns <= 1 for q in queries)
    if text_probes and config.probe_samples and single:
        # Sampled answers at the bake's temperature; the on-policy gap reuses the first of each.
        many = replace(sampling, n=config.probe_samples)
        drawn = {side: behaviour.prompted_samples(sides, queries, many, held) if side == "prompted"
                 else sides.sample_groups(side, queries, many) for side in behaviour.SIDES}
        out["probes_sampled"] = behaviour.sampled_probe_scores(text_probes, sides, queries, drawn)
        out["probe_samples"] = config.probe_samples
    gap = behaviour.on_policy(sides, queries, sampling, config.top_k, config.score_batch_size,
                              {side: [g[0] for g in groups] for side, groups in drawn.items()}) if single else None
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
        curve, loaded = [], False
        for epoch, folder in saved:
            if _same_weights(folder, adapter):  # the last epoch's is the final adapter: answered above
                curve.append({"epoch": epoch, "probes": {p.label: out["probes"][p.label]["baked"] for p in text_probes}})
                continue
            student.load_adapter(str(folder))
            loaded = True
            curve.append({"epoch": epoch, "probes": _baked_scores(sides, queries, text_probes, 1.0)})
        if loaded:
            student.load_adapter(str(adapter))
        out["epochs"] = curve
    return out


def _same_weights(folder: str | Path, adapter: str | Path) -> bool:
    """Whether two saved adapter folders hold the same files, by their manifests' sha256s."""
    from ...core.atomic import MANIFEST

    def listed(path: str | Path) -> Any:
        file = Path(path) / MANIFEST
        return json.loads(file.read_text(encoding="utf-8")).get("files") if file.is_file() else None

    mine = listed(folder)
    return mine is not None and mine == listed(adapter)


def _baked_scores(sides: behaviour.Sides, queries: Sequence[Query], probes: Sequence[Any],
                  strength: float) -> dict[str, float]:
    rows, _ = behaviour.answers(sides, queries, ["baked"], strength=strength)
    return {label: scores["baked"] for label, scores in behaviour.probe_scores(probes, rows, ["baked"], None).items()}


