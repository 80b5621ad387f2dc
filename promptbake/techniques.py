"""The paper's composition techniques, built from bakes and merges.

* :func:`pursue`: Prompt Pursuit. Bake a prompt, merge the adapter, re-prompt the
  baked model with the same prompt and bake that, for several rounds.
* :func:`sequential`: sequential baking. Bake several prompts one after another,
  each into the model the previous bakes produced.
* :func:`mix`: one bake of a weighted mixture of prompts (:class:`PromptMixture`).

Half-baking (a partial bake) needs no function here: ``promptbake generate
--strength S`` scales a LoRA adapter at load time (see docs/techniques.md).

Each round of a chain is an ordinary run directory; the model the next round
starts from is the previous round's adapter merged into its base
(``ROUND/merged``, see builtin/merge.py), because the teacher of the next round must be
the baked model itself, re-prompted, and a teacher that merely disables the
student's adapter would be the original model again.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .baker import Baker, BakeResult
from .builtin import models
from .builtin.merge import merge_adapter
from .core import registry
from .core.atomic import verified_dir, write_json
from .core.config import BakeConfig
from .core.errors import ConfigError
from .core.types import PromptMixture, Query, prompt_sha256
from .run import files
from .run.distributed import Ranks
from .run.rundir import RunDir

EVAL_KEYS = ("kl_prompted_base", "kl_prompted_baked", "gap_closed", "top1_agreement_base", "top1_agreement_baked")


def pursue(prompt: str, rounds: int, out: str | Path, *, merge_last: bool = True,
           **settings: Any) -> list[BakeResult]:
    """Prompt Pursuit (the paper's name): bake ``prompt`` ``rounds`` times, each round into the last one's result.

    Round 1 bakes ``prompt`` into the configured model. Round r > 1 first merges
    round r-1's adapter into its base (``out/round-{r-1}/merged``) and bakes
    with that merged model as ``model``: the teacher is the baked model
    re-prompted with ``prompt``, the student the baked model plus a fresh LoRA.
    Run directories are ``out/round-{r}``; ``out/pursuit.json`` lists every
    round's run directory, merged model and held-out metrics. ``settings``
    (BakeConfig keys) apply to every round; ``resume=True`` continues a pursuit
    that stopped, keeping finished rounds and merges. With ``merge_last`` the
    last round is merged too, so the final model is a plain model folder. Each
    merged folder is a full copy of the model.

    Returns one BakeResult per round.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}.")
    return _chain([prompt] * rounds, Path(out), "round", "pursuit.json", "prompt pursuit", merge_last, settings)


def sequential(prompts: Sequence[str], out: str | Path, *, merge_last: bool = True,
               **settings: Any) -> list[BakeResult]:
    """Sequential baking (the paper's name): bake ``prompts[0]``, then ``prompts[1]`` into that result, and so on.

    Step i (1-based, run directory ``out/step-{i}``) bakes ``prompts[i-1]`` into
    the model of step i-1 merged with its adapter (``out/step-{i-1}/merged``):
    its teacher is that merged model prompted with ``prompts[i-1]``. Step 1 bakes
    into the configured model. ``out/sequence.json`` lists every step. Settings,
    ``resume`` and ``merge_last`` work as in :func:`pursue`.

    Returns one BakeResult per prompt.
    """
    if isinstance(prompts, str) or not prompts:
        raise ConfigError("sequential baking needs a list of one or more prompts.")
    return _chain(list(prompts), Path(out), "step", "sequence.json", "sequential baking", merge_last, settings)


def _chain(prompts: list[str], out: Path, label: str, summary_name: str, technique: str, merge_last: bool,
           settings: dict[str, Any]) -> list[BakeResult]:
    """Bake ``prompts`` in turn, each into the previous bake merged into its base."""
    settings = dict(settings)
    for key, why in (("prompt", "the prompts are arguments"), ("out", f"the {label}s go under the out argument"),
                     ("teacher_model", f"each {label}'s teacher is the model the previous {label}s made")):
        if key in settings:
            raise ConfigError(f"{technique} does not take the setting {key}: {why}.")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("The system prompt is empty; pass --prompt with text or a non-empty file.")
    student = settings.get("student", BakeConfig.student)
    if not registry.create("student", student, **settings.get("student_options", {})).capabilities.merges:
        raise ConfigError(f"{technique} merges each adapter into its model, and student '{student}''s adapter cannot "
                          f"be merged into the model's weights; use the peft student.")
    if Ranks.from_env().world > 1:
        raise ConfigError(f"{technique} runs in one process; run it without accelerate launch or torchrun.")
    resume = bool(settings.pop("resume", False))
    overwrite = bool(settings.pop("overwrite", False))
    if resume and overwrite:
        raise ConfigError("--resume continues a run directory and --overwrite replaces it; pass one of them.")
    config = BakeConfig.from_dict({**settings, "prompt": prompts[0]})  # every setting checked before any work
    if not resume:
        RunDir.check_free(out, overwrite)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)

    start_cached = models.is_loaded(config.model, config.dtype, config.device)  # someone else's: never released here
    summary: dict[str, Any] = {"technique": technique, "model": config.model, label + "s": []}
    if config.include_prompt and technique == "prompt pursuit":
        summary["prompt"] = prompts[0]
    model = config.model
    results: list[BakeResult] = []
    for i, prompt in enumerate(prompts, 1):
        run_dir = out / f"{label}-{i}"
        result = _bake(prompt, run_dir, resume, {**settings, "model": model})
        results.append(result)
        if (i > 1 or not start_cached) and models.release_spec(model, config.dtype, config.device):
            _free_memory()  # weights this chain loaded: freed before the merge loads its copy
        merged: Path | None = None
        if i < len(prompts) or merge_last:
            merged = (run_dir / files.MERGED).resolve()
            if not (resume and verified_dir(merged) == merged):
                merge_adapter(result.adapter_path, merged, model=model, dtype=config.dtype, device=config.device,
                              overwrite=True)
        record: dict[str, Any] = {label: i, "model": model, "prompt_sha256": prompt_sha256(prompt),
                                  "run_dir": str(result.run_dir), "adapter": str(result.adapter_path),
                                  "merged": str(merged) if merged is not None else None,
                                  "eval": {k: result.eval[k] for k in EVAL_KEYS if k in result.eval}
                                  if result.eval else None}
        if config.include_prompt and technique != "prompt pursuit":
            record["prompt"] = prompt
        summary[label + "s"].append(record)
        write_json(out / summary_name, summary)
        if merged is not None:
            model = str(merged)
    return results


def _bake(prompt: str, run_dir: Path, resume: bool, settings: dict[str, Any]) -> BakeResult:
    """One bake of a chain (a function, so the Baker and the weights it holds are dropped on return)."""
    if resume and (run_dir / files.CONFIG).is_file():
        baker = Baker.resume(run_dir, prompt, **settings)
    else:  # overwrite: a resumed chain may find a round that stopped before writing its config
        baker = Baker(prompt, out=str(run_dir), overwrite=True, **settings)
    return baker.run()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- mixtures -------------------------------------------------------------------


def mixture_prompt(prompts: Sequence[str], weights: Sequence[float]) -> str:
    """The canonical text that names a mixture (``PromptMixture(prompts, weights).text``)."""
    return PromptMixture(tuple(prompts), tuple(weights)).text


def parse_mixture(text: str) -> tuple[list[str], list[float]]:
    """The prompts and weights of a :func:`mixture_prompt` text."""
    mixture = PromptMixture.parse(text)
    return list(mixture.prompts), list(mixture.weights)


def assign_prompts(queries: Sequence[Query], weights: Sequence[float], seed: int) -> list[int]:
    """The prompt index of each query: i with probability weights[i] / sum(weights), drawn once per
    query in list order from ``random.Random(seed)`` (``PromptMixture.assign``)."""
    return PromptMixture(tuple(str(i) for i in range(len(weights))), tuple(weights)).assign(queries, seed)


class MixtureBaker(Baker):
    """A Baker of the mixture whose :func:`mixture_prompt` text is ``prompt``; 0.1's way to bake a
    mixture, kept for one release: ``Baker(PromptMixture(prompts, weights))`` is the same bake."""

    def __init__(self, prompt: str | PromptMixture | None = None, **kwargs: Any):
        if isinstance(prompt, str):
            prompt = PromptMixture.parse(prompt)
        super().__init__(prompt, **kwargs)


def mix(prompts: Sequence[str], weights: Sequence[float], out: str | Path, **settings: Any) -> BakeResult:
    """A mixture bake (one bake of several prompts): each query is answered under prompt i with
    probability weights[i] / sum(weights), so the baked model behaves like the prompted model
    under a randomly drawn prompt of the mixture (:class:`PromptMixture`).

    Assignment is deterministic given the ``seed`` setting. The run directory ``out`` is an
    ordinary one whose prompt sha256 is the mixture's; ``out/mixture.json`` records the weights,
    each prompt's sha256, the queries each prompt got and, with ``include_prompt``, the prompts'
    text. ``resume=True`` continues the bake in ``out``.
    """
    mixture = PromptMixture(tuple(prompts), tuple(weights))
    settings = dict(settings)
    for key in ("prompt", "out"):
        if key in settings:
            raise ConfigError(f"A mixture bake does not take the setting {key}; pass prompts, weights and out.")
    if settings.pop("resume", False):
        return Baker.resume(out, mixture, **settings).run()
    return Baker(mixture, out=str(out), **settings).run()
