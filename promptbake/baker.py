"""The Baker: sequences render -> generate -> score -> train -> save -> evaluate.

It knows nothing of plugins beyond asking the registry to build a backend from
a name; teacher, student and loss may also be passed as instances.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__, capabilities, registry
from .batching import batches, bucketed
from .cache import TargetStore, targets_key
from .config import BakeConfig
from .errors import ConfigError
from .evaluate import Evaluation
from .interfaces import Loss, SamplingConfig, Student, Teacher
from .progress import progress
from .queries import load_queries
from .render import Renderer
from .rundir import RunDir, write_json
from .types import Prefix, Query, Targets, Trajectory


@dataclass
class BakeResult:
    """What a bake produced."""

    run_dir: Path
    adapter_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class Baker:
    """Bake a system prompt into a model.

    >>> Baker("Always respond in French.", teacher="hf", student="peft", loss="topk_kl").run()

    ``teacher``, ``student`` and ``loss`` are registered names or instances;
    any other keyword is a :class:`BakeConfig` setting.
    """

    def __init__(self, prompt: str | None = None, *, teacher: str | Teacher | None = None,
                 student: str | Student | None = None, loss: str | Loss | None = None,
                 config: BakeConfig | None = None, **settings: Any):
        # Names given here override the config's; instances are used as they are.
        names = {k: v for k, v in (("teacher", teacher), ("student", student), ("loss", loss))
                 if isinstance(v, str)}
        base = config.to_dict() if config is not None else {}
        if prompt is not None:
            base["prompt"] = prompt
        config = BakeConfig.from_dict({**base, **names, **settings})
        self.config = config
        self.teacher: Teacher = registry.create(
            "teacher", config.teacher if teacher is None or isinstance(teacher, str) else teacher,
            **config.teacher_options)
        self.student: Student = registry.create(
            "student", config.student if student is None or isinstance(student, str) else student,
            **config.student_options)
        self.loss: Loss = registry.create(
            "loss", config.loss if loss is None or isinstance(loss, str) else loss, **config.loss_options)
        self.run_dir: RunDir | None = None

    # -- stages ---------------------------------------------------------------

    def check(self) -> None:
        """Validate settings and the teacher/student/loss combination; no work is done."""
        if not self.config.prompt.strip():
            raise ConfigError("The system prompt is empty; pass --prompt with text or a non-empty file.")
        capabilities.check(self.teacher, self.student, self.loss, self.config)
        self.teacher.check(self.config)
        self.student.check(self.config)

    def run(self) -> BakeResult:
        """Run the whole bake and return where the adapter is, with metrics."""
        cfg = self.config
        self.check()
        queries = load_queries(cfg.queries, "train", cfg.max_queries)
        heldout = load_queries(cfg.heldout, "heldout", cfg.max_heldout) if cfg.evaluate else []
        out = cfg.out or _default_out()
        RunDir.check_free(out, cfg.overwrite)
        started = time.perf_counter()
        try:
            # Load and check everything before the run directory exists, so a bad model
            # or template leaves nothing behind.
            n_traj = len(queries) * cfg.samples_per_query
            total_steps = cfg.epochs * math.ceil(math.ceil(n_traj / cfg.batch_size) / cfg.grad_accum)
            self.student.setup(cfg, total_steps)
            self.teacher.setup(cfg)
            self.teacher.use_student_tokenizer(self.student.tokenizer)
            capabilities.check_tokenizers(self.teacher, self.student, self.loss)
            renderer = Renderer(self.student.tokenizer, cfg.prompt, cfg.max_length)
            run = self.run_dir = RunDir.create(out, overwrite=cfg.overwrite)
            write_json(run.file("config.json"), self._public_config())
            timings: dict[str, float] = {}

            t0 = time.perf_counter()
            trajectories, sample_targets = self.generate_with_targets(renderer, queries, cfg.samples_per_query)
            held, held_targets = (self.generate_with_targets(renderer, heldout, 1, seed_offset=1)
                                  if heldout else ([], None))
            run.write_trajectories(trajectories)
            if held:
                run.write_trajectories(held, "heldout.jsonl")
            timings["generate_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            targets = self.cached_score(trajectories, sample_targets)
            timings["score_s"] = time.perf_counter() - t0

            evaluation = Evaluation(self.teacher, self.student, held, held_targets, cfg)
            evaluation.before_training()

            t0 = time.perf_counter()
            train = self.train(trajectories, targets)
            timings["train_s"] = time.perf_counter() - t0

            adapter = self.save()
            result = BakeResult(run_dir=run.path, adapter_path=adapter)
            t0 = time.perf_counter()
            result.eval = evaluation.after_training()
            if result.eval is not None:
                timings["eval_s"] = time.perf_counter() - t0
                write_json(run.file("eval.json"), result.eval)
            timings["total_s"] = time.perf_counter() - started
            result.metrics = {**train, **timings, "trajectories": len(trajectories),
                              "response_tokens": sum(t.response_len for t in trajectories)}
            run.log({"stage": "done", **result.metrics})
            return result
        finally:
            self.close()

    def generate(self, renderer: Renderer, queries: list[Query], n: int, seed_offset: int = 0) -> list[Trajectory]:
        """Sample n responses per query from the prompted teacher and render both sides."""
        return self.generate_with_targets(renderer, queries, n, seed_offset)[0]

    def generate_with_targets(self, renderer: Renderer, queries: list[Query], n: int,
                              seed_offset: int = 0) -> tuple[list[Trajectory], list[Targets] | None]:
        """Like :meth:`generate`, plus the targets that came with the samples (hosted teachers), else None."""
        cfg = self.config
        rendered = [(renderer.prefix(q, True), renderer.prefix(q, False)) for q in queries]
        prefixes = [Prefix(ids=p, messages=tuple(renderer.messages(q, True))) for q, (p, _) in zip(queries, rendered)]
        sampling = SamplingConfig(
            n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens, seed=cfg.seed + seed_offset, stop_ids=renderer.stop_ids,
            logprobs=cfg.top_k if self._targets_from_samples() else None,
        )
        samples = self.teacher.generate(prefixes, sampling)
        out: list[Trajectory] = []
        targets: list[Targets] = []
        for q, pre, group in zip(queries, rendered, samples):
            for i, sample in enumerate(group):
                traj = renderer.trajectory(q, sample.token_ids, i, prefixes=pre)
                out.append(traj)
                if sample.targets is not None:
                    targets.append(_sample_targets(traj, sample.targets))
        return out, (targets if out and len(targets) == len(out) else None)

    def cached_score(self, trajectories: list[Trajectory],
                     sample_targets: list[Targets] | None = None) -> list[Targets]:
        """Targets from the cache when its key matches, else scored and written to it."""
        cfg = self.config
        assert self.run_dir is not None
        need = self.loss.needs
        key = targets_key(model=cfg.teacher_model or cfg.model, teacher=self.teacher.name,
                          prompt_sha256=prompt_sha256(cfg.prompt), kind=need,
                          top_k=cfg.top_k if need == "topk" else None, trajectories=trajectories)
        store = TargetStore(Path(cfg.target_cache) / key[:16] if cfg.target_cache else self.run_dir.file("targets"))
        cached = store.read(key)
        if cached is not None:
            self.run_dir.log({"stage": "score", "cache": "hit", "folder": str(store.folder)})
            return cached
        targets = self.score(trajectories, sample_targets)
        store.write(targets, key)
        self.run_dir.log({"stage": "score", "cache": "miss", "folder": str(store.folder), "bytes": store.bytes()})
        return targets

    def score(self, trajectories: list[Trajectory], sample_targets: list[Targets] | None = None) -> list[Targets]:
        """Teacher targets for every response position, computed once.

        A teacher that cannot score (hosted APIs) gives its targets with its
        samples; those are used as they are.
        """
        cfg = self.config
        need = self.loss.needs
        if need == "tokens":  # ce trains on the sampled tokens alone: no teacher pass needed
            import torch

            return [Targets(sampled_ids=torch.tensor(t.response_ids, dtype=torch.long)) for t in trajectories]
        if not self.teacher.capabilities.can_score:
            if sample_targets is None:
                raise ConfigError(f"Teacher '{self.teacher.name}' cannot score and returned no log-probs "
                                  f"with its samples; use loss ce.")
            return sample_targets
        out: list[Targets] = []
        for part in progress(batches(trajectories, cfg.score_batch_size * 4), "score", cfg.progress):
            out.extend(self.teacher.score(part, top_k=cfg.top_k if need == "topk" else None,
                                          full=need == "full"))
        return out

    def train(self, trajectories: list[Trajectory], targets: list[Targets]) -> dict[str, Any]:
        """Epochs of shuffled, length-bucketed micro-batches; grad_accum of them per optimizer step."""
        cfg = self.config
        assert self.run_dir is not None
        rng = random.Random(cfg.seed)
        lengths = [len(t.unprompted_ids) for t in trajectories]
        steps_per_epoch = math.ceil(math.ceil(len(lengths) / cfg.batch_size) / cfg.grad_accum)
        bar = progress(range(cfg.epochs * steps_per_epoch), "train", cfg.progress, unit="step")
        bar_iter = iter(bar)
        step = 0
        first = last = None
        for epoch in range(cfg.epochs):
            micro = bucketed(lengths, cfg.batch_size, rng)  # similar lengths: little padding
            for group in batches(micro, cfg.grad_accum):
                batch = [[(trajectories[i], targets[i]) for i in mb] for mb in group]
                m = self.student.step(batch, self.loss)
                step += 1
                first = m["loss"] if first is None else first
                last = m["loss"]
                self.run_dir.log({"stage": "train", "step": step, "epoch": epoch, **m})
                next(bar_iter, None)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
        for _ in bar_iter:
            pass
        return {"steps": step, "first_loss": first, "last_loss": last}

    def save(self) -> Path:
        """Write the adapter to RUN/adapter atomically (temp folder, then rename)."""
        assert self.run_dir is not None
        final = self.run_dir.file("adapter")
        tmp = self.run_dir.file(".adapter.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.student.save(str(tmp), self._metadata())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final

    def close(self) -> None:
        self.teacher.close()
        self.student.close()

    # -- helpers --------------------------------------------------------------

    def _targets_from_samples(self) -> bool:
        """Whether the loss's targets must come with the teacher's samples (hosted APIs)."""
        tc = self.teacher.capabilities
        return self.loss.needs != "tokens" and not tc.can_score and tc.sample_logprobs

    def _metadata(self) -> dict[str, Any]:
        cfg = self.config
        meta = {
            "promptbake_version": __version__,
            "base_model": cfg.model,
            "prompt_sha256": prompt_sha256(cfg.prompt),
            "teacher": self.teacher.name, "student": self.student.name, "loss": self.loss.name,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if self.config.include_prompt:
            meta["prompt"] = cfg.prompt
        return meta

    def _public_config(self) -> dict[str, Any]:
        data = self.config.to_dict()
        data["prompt_sha256"] = prompt_sha256(data.pop("prompt"))
        if self.config.include_prompt:
            data["prompt"] = self.config.prompt
        return data


def _sample_targets(traj: Trajectory, targets: Targets) -> Targets:
    """A sample's targets cut to the trajectory (which may end earlier), on its tokens."""
    import torch

    if len(targets) < traj.response_len:
        raise ConfigError(f"The teacher gave {len(targets)} target rows for a {traj.response_len}-token "
                          f"response ({traj.key}); a teacher must give one row per sampled token.")
    out = targets.head(traj.response_len)
    out.sampled_ids = torch.tensor(traj.response_ids, dtype=torch.long)
    return out


def _default_out() -> str:
    return str(Path("runs") / datetime.now().strftime("bake-%Y%m%d-%H%M%S"))
