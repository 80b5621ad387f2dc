"""The paper's composition techniques, built from bakes and merges.

* :func:`pursue`: Prompt Pursuit. Bake a prompt, merge the adapter, re-prompt the
  baked model with the same prompt and bake that, for several rounds.
* :func:`sequential`: sequential baking. Bake several prompts one after another,
  each into the model the previous bakes produced.
* :func:`mix`: one bake of a weighted mixture of prompts (:class:`MixtureBaker`).

Half-baking (a partial bake) needs no function here: ``promptbake generate
--strength S`` scales a LoRA adapter at load time (see docs/techniques.md).

Each round of a chain is an ordinary run directory; the model the next round
starts from is the previous round's adapter merged into its base
(``ROUND/merged``, see merge.py), because the teacher of the next round must be
the baked model itself, re-prompted, and a teacher that merely disables the
student's adapter would be the original model again.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import decoding, models
from .baker import Baker, BakeResult, prompt_sha256
from .config import BakeConfig
from .distributed import Ranks
from .errors import ConfigError
from .merge import merge_adapter
from .render import Renderer
from .rundir import RunDir, verified_dir, write_json
from .types import Query, Targets, Trajectory

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
    if settings.get("student") == "prefix":
        raise ConfigError(f"{technique} merges each adapter into its model, and a soft-prefix adapter cannot be "
                          f"merged; use the peft student.")
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

    def key(spec: str) -> tuple[str, str, str]:
        return spec, config.dtype, models.resolve_device(config.device)

    start_cached = key(config.model) in models._cache  # someone else's: never released here
    summary: dict[str, Any] = {"technique": technique, "model": config.model, label + "s": []}
    if config.include_prompt and technique == "prompt pursuit":
        summary["prompt"] = prompts[0]
    model = config.model
    results: list[BakeResult] = []
    for i, prompt in enumerate(prompts, 1):
        run_dir = out / f"{label}-{i}"
        result = _bake(prompt, run_dir, resume, {**settings, "model": model})
        results.append(result)
        if i > 1 or not start_cached:  # weights this chain loaded: free them before the merge loads its copy
            handle = models._cache.get(key(model))
            if handle is not None:
                models.release(handle)
                del handle
                _free_memory()
        merged: Path | None = None
        if i < len(prompts) or merge_last:
            merged = (run_dir / "merged").resolve()
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
    if resume and (run_dir / "config.json").is_file():
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
    """The canonical text that stands for a mixture in a bake's config (its sha256 names the mixture).

    Validates: at least two non-empty prompts, one positive weight per prompt.
    """
    if isinstance(prompts, str) or len(prompts) < 2:
        raise ConfigError("A mixture needs at least two prompts; bake a single prompt with promptbake bake.")
    if isinstance(weights, str) or len(weights) != len(prompts):
        raise ConfigError(f"A mixture needs one weight per prompt: got {len(prompts)} prompts and "
                          f"{len(weights)} weights.")
    clean: list[float] = []
    for w in weights:
        try:
            value = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"Mixture weights must be numbers, got {w!r}.") from None
        if isinstance(w, bool) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"Mixture weights must be positive numbers, got {w!r}.")
        clean.append(value)
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ConfigError("Every prompt of a mixture must be non-empty text.")
    return json.dumps({"mixture": [{"prompt": p, "weight": w} for p, w in zip(prompts, clean)]},
                      ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def parse_mixture(text: str) -> tuple[list[str], list[float]]:
    """The prompts and weights of a :func:`mixture_prompt` text."""
    try:
        items = json.loads(text)["mixture"]
        prompts = [item["prompt"] for item in items]
        weights = [item["weight"] for item in items]
    except (ValueError, TypeError, KeyError):
        raise ConfigError("The prompt of a mixture bake must be the text promptbake.techniques.mixture_prompt "
                          "writes; use promptbake.techniques.mix.") from None
    mixture_prompt(prompts, weights)  # validates
    return prompts, [float(w) for w in weights]


def assign_prompts(queries: Sequence[Query], weights: Sequence[float], seed: int) -> list[int]:
    """The prompt index of each query: i with probability weights[i] / sum(weights).

    Deterministic: ``random.Random(seed)`` draws once per query, in list order.
    """
    rng = random.Random(seed)
    indices = range(len(weights))
    return [rng.choices(indices, weights=weights)[0] for _ in queries]


def _query_key(query: Query) -> str:
    return json.dumps([query.id, list(query.messages)], sort_keys=True)


class _MixtureRenderer(Renderer):
    """A Renderer whose prompted side renders each query with the mixture prompt it was assigned,
    so the answers and on-policy evaluation of held-out queries use the prompt each query was
    baked with, never the mixture's canonical text."""

    def __init__(self, tokenizer: Any, prompts: Sequence[str], max_length: int, canonical: str,
                 eos_ids: Sequence[int] = (), chat_template_kwargs: dict[str, Any] | None = None):
        super().__init__(tokenizer, canonical, max_length, eos_ids, chat_template_kwargs)
        self.renderers = [Renderer(tokenizer, p, max_length, eos_ids, chat_template_kwargs) for p in prompts]
        self.assigned: dict[str, int] = {}

    def messages(self, query: Query, prompted: bool) -> list[dict[str, str]]:
        if not prompted:
            return super().messages(query, False)
        try:
            i = self.assigned[_query_key(query)]
        except KeyError:
            raise ConfigError(f"Query '{query.id}' was not assigned a prompt of the mixture.") from None
        return self.renderers[i].messages(query, True)


class MixtureBaker(Baker):
    """A Baker whose teacher answers and scores each query under one prompt of a weighted mixture.

    Its config's ``prompt`` is a :func:`mixture_prompt` text. Each query is
    assigned a prompt (:func:`assign_prompts`, seeded with the bake's seed); the
    trajectories carry that prompt's rendering, so scoring and the held-out KL
    need nothing else. Its renderer renders each query with its assigned prompt
    too (see :class:`_MixtureRenderer`), for the answers and on-policy evaluation
    that render held-out queries again.
    """

    def __init__(self, prompt: str | None = None, **kwargs: Any):
        super().__init__(prompt, **kwargs)
        self.prompts, self.weights = parse_mixture(self.config.prompt)
        self.counts: dict[str, list[int]] = {}

    def check(self) -> None:
        super().check()
        from .students.prefix import PrefixStudent

        if isinstance(self.student, PrefixStudent) and self.student.init == "prompt":
            raise ConfigError("A soft prefix that starts from the prompt's KV cache needs a single prompt; use "
                              "student option init='random' with a mixture.")

    def generate_with_targets(self, renderer: Renderer, queries: list[Query], n: int,
                              split: str = "train") -> tuple[list[Trajectory], list[Targets] | None]:
        """Sample each query under its assigned prompt (split ``{split}-p{i}`` for prompt i), in query order."""
        mixture = self._mixture_renderer(renderer)
        assigned = assign_prompts(queries, self.weights, self.config.seed)
        mixture.assigned.update((_query_key(q), a) for q, a in zip(queries, assigned))
        self.counts[split] = [assigned.count(i) for i in range(len(self.prompts))]
        if self.run_dir is not None:
            self.run_dir.log({"stage": "mixture", "split": split, "queries_per_prompt": self.counts[split]})
        slots: list[tuple[list[Trajectory], list[Targets] | None]] = [([], None) for _ in queries]
        all_targets = True
        for i in range(len(self.prompts)):
            positions = [j for j, a in enumerate(assigned) if a == i]
            if not positions:
                continue
            trajs, targets = super().generate_with_targets(mixture.renderers[i], [queries[j] for j in positions], n,
                                                           f"{split}-p{i}")
            all_targets = all_targets and targets is not None
            # Samples come query after query; hand each query its own run of them.
            k = 0
            for j in positions:
                start = k
                while k < len(trajs) and k - start < n and trajs[k].query_id == queries[j].id:
                    k += 1
                slots[j] = (trajs[start:k], targets[start:k] if targets is not None else None)
            if k != len(trajs):
                raise ConfigError(f"The teacher's samples for split {split} do not follow the queries' order.")
        out_trajs = [t for ts, _ in slots for t in ts]
        if not all_targets:
            return out_trajs, None
        return out_trajs, [tg for _, tgs in slots for tg in (tgs or [])]

    def make_renderer(self, max_length: int) -> Renderer:
        return _MixtureRenderer(self.student.tokenizer, self.prompts, max_length, self.config.prompt,
                                decoding.eos_ids(self.student.generation_config), self.config.chat_template_kwargs)

    def _mixture_renderer(self, renderer: Renderer) -> _MixtureRenderer:
        if not isinstance(renderer, _MixtureRenderer):
            raise TypeError("MixtureBaker renders with the renderer of its make_renderer()")
        return renderer

    def _metadata(self) -> dict[str, Any]:
        meta = super()._metadata()
        meta.pop("prompt", None)  # the canonical text is not a system prompt to show
        meta["mixture"] = self._describe()
        return meta

    def _describe(self) -> list[dict[str, Any]]:
        total = sum(self.weights)
        return [{"weight": w, "probability": w / total, "prompt_sha256": prompt_sha256(p),
                 **({"prompt": p} if self.config.include_prompt else {})}
                for p, w in zip(self.prompts, self.weights)]


def mix(prompts: Sequence[str], weights: Sequence[float], out: str | Path, **settings: Any) -> BakeResult:
    """A mixture bake (one bake of several prompts): each query is answered under prompt i with
    probability weights[i] / sum(weights), so the baked model behaves like the prompted model
    under a randomly drawn prompt of the mixture.

    Assignment is deterministic given the ``seed`` setting. The run directory
    ``out`` is an ordinary one whose prompt is the canonical :func:`mixture_prompt`
    text (sha256 only, unless ``include_prompt``); ``out/mixture.json`` records
    the weights, each prompt's sha256, the queries each prompt got and, with
    ``include_prompt``, the prompts' text. ``resume=True`` continues the bake in ``out``.
    """
    text = mixture_prompt(prompts, weights)
    settings = dict(settings)
    for key in ("prompt", "out"):
        if key in settings:
            raise ConfigError(f"A mixture bake does not take the setting {key}; pass prompts, weights and out.")
    if settings.pop("resume", False):
        baker = MixtureBaker.resume(out, text, **settings)
    else:
        baker = MixtureBaker(text, out=str(out), **settings)
    result = baker.run()
    if result.main:
        info: dict[str, Any] = {"prompts": baker._describe()}
        if baker.counts:
            info["queries_per_prompt"] = baker.counts
        write_json(result.run_dir / "mixture.json", info)
    return result
