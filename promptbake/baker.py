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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from . import (
    __version__,
    capabilities,
    checkpoint,
    decoding,
    fidelity,
    generation,
    registry,
)
from .batching import batches, bucketed
from .cache import TargetStore, score_as_stored, targets_key
from .config import BakeConfig
from .distributed import Ranks
from .errors import ConfigError
from .evaluate import evaluate_heldout
from .fidelity import EPOCHS_DIR
from .interfaces import Loss, Student, Teacher
from .onpolicy import OnPolicySampler
from .progress import counter, progress
from .queries import bake_queries
from .render import Renderer
from .rundir import (
    RUNTIME_KEYS,
    RunDir,
    replace_dir,
    verified_dir,
    write_json,
    write_manifest,
)
from .types import Query, Targets, Trajectory


@dataclass
class BakeResult:
    """What a bake produced."""

    run_dir: Path
    adapter_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    main: bool = True  # False in the other processes of a distributed launch: rank 0 has the results


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
        # With no loss named the default is provisional until both are set up (see settle_default_loss).
        self.loss_chosen = config.loss is None and not isinstance(loss, Loss)
        if self.loss_chosen:  # recorded in the run's config
            self.config = config = replace(config, loss=capabilities.default_loss(self.teacher, self.student, config))
        self.loss: Loss = self._make_loss(loss if isinstance(loss, Loss) else None)
        if config.loss is None:  # a Loss instance was given
            self.config = config = replace(config, loss=self.loss.name)
        if config.top_k is None:  # the teacher's default K, recorded in the run's config
            self.config = config = replace(config, top_k=self.teacher.capabilities.default_top_k)
        self.run_dir: RunDir | None = None
        self.on_policy: OnPolicySampler | None = None  # set by run() when config.on_policy > 0

    def _make_loss(self, instance: Loss | None = None) -> Loss:
        """The loss of ``config.loss`` (or ``instance``), built with ``config.loss_options``."""
        cfg = self.config
        try:
            return registry.create("loss", instance if instance is not None else cfg.loss, **cfg.loss_options)
        except TypeError as exc:
            why = " (the default here, as no loss was named)" if self.loss_chosen else ""
            raise ConfigError(f"Loss '{cfg.loss}'{why} does not take loss_options "
                              f"{sorted(cfg.loss_options)}: {exc}; name the loss they are for.") from None

    def settle_default_loss(self) -> None:
        """With no loss named, keep the default full_kl only where its targets will be stored as
        the teacher's hidden states (2H bytes a token); where they would be full log-probs
        (2V bytes a token: the student cannot read hidden states, or the model's output layer
        does not split off its decoder), bake topk_kl instead. Call after both are set up."""
        if not self.loss_chosen or self.loss.needs != "full" or self.target_kind() == "hidden":
            return
        self.config = replace(self.config, loss="topk_kl")
        self.loss = self._make_loss()
        capabilities.check(self.teacher, self.student, self.loss, self.config)

    @classmethod
    def resume(cls, run_dir: str | Path, prompt: str | None = None, **settings: Any) -> Baker:
        """A Baker that continues the bake saved in ``run_dir``.

        The settings are the saved ones; ``prompt`` is needed when the run kept
        only its sha256. ``settings`` may change how the bake runs (progress,
        evaluation) but not what it computes.
        """
        saved = RunDir.saved_config(run_dir)
        digest = saved.pop("prompt_sha256", None)
        stored = saved.pop("prompt", None)
        prompt = prompt if prompt is not None else stored
        if prompt is None:
            raise ConfigError(f"{run_dir} keeps only the prompt's sha256; pass the same --prompt to resume it.")
        if digest is not None and prompt_sha256(prompt) != digest:
            raise ConfigError(f"The prompt differs from the one baked in {run_dir} (sha256 {digest[:12]}...); "
                              f"pass the same prompt to resume.")
        for key, value in settings.items():
            if key not in RUNTIME_KEYS and key in saved and saved[key] != value:
                raise ConfigError(f"{run_dir} was baked with {key}={saved[key]!r}; a resumed bake keeps its "
                                  f"settings, so {key}={value!r} needs a new --out.")
        return cls(prompt, config=BakeConfig.from_dict({**saved, "overwrite": False, **settings,
                                                        "out": str(run_dir), "resume": True}))

    # -- stages ---------------------------------------------------------------

    def check(self) -> None:
        """Validate settings and the teacher/student/loss combination; no work is done."""
        if not self.config.prompt.strip():
            raise ConfigError("The system prompt is empty; pass --prompt with text or a non-empty file.")
        capabilities.check(self.teacher, self.student, self.loss, self.config)
        if self.config.evaluate:
            from .probes import parse_probes

            parse_probes(self.config.probes)  # a misspelt probe fails now, not after training
        self.teacher.check(self.config)
        self.student.check(self.config)

    def run(self) -> BakeResult:
        """Run the whole bake and return where the adapter is, with metrics.

        With ``resume=True`` every stage first takes what the run directory
        already holds whole: sampled chunks, target shards, the base
        evaluation, the latest training checkpoint.
        """
        cfg = self.config
        self.check()
        queries, heldout = bake_queries(cfg.queries, cfg.heldout, cfg.max_queries, cfg.max_heldout, cfg.evaluate)
        out = cfg.out or _default_out()
        ranks = Ranks.from_env()
        if ranks.world > 1:
            self._check_distributed()
        if cfg.resume:
            done = self._finished(RunDir(out))
            if done is not None:
                return done
        elif ranks.main:  # the other ranks find rank 0's directory: it is theirs too
            RunDir.check_free(out, cfg.overwrite)
        started = time.perf_counter()
        if not cfg.progress:
            from .models import hide_loading_bars

            hide_loading_bars()
        try:
            # Load and check everything before the run directory exists, so a bad model
            # or template leaves nothing behind.
            n_traj = len(queries) * cfg.samples_per_query
            total_steps = cfg.epochs * math.ceil(math.ceil(n_traj / cfg.batch_size) / cfg.grad_accum)
            self.student.setup(cfg, total_steps)
            if not ranks.main:  # the teacher's work is rank 0's; train on what it wrote
                run = self.run_dir = RunDir(out)
                trajectories, targets = self._handed_over(ranks)
                self.train(trajectories, targets)
                return BakeResult(run_dir=run.path, adapter_path=run.file("adapter"), main=False)
            self.teacher.setup(cfg)
            self.teacher.use_student_tokenizer(self.student.tokenizer)
            self.settle_default_loss()
            cfg = self.config
            capabilities.check_tokenizers(self.teacher, self.student, self.loss)
            capabilities.check_sampling_extras(self.teacher, decoding.bake_extras(cfg, self.student))
            renderer = self.make_renderer(cfg.length_limit(self.student.context_length))
            if cfg.on_policy > 0:
                self.on_policy = OnPolicySampler(self.teacher, self.student, renderer, queries, cfg,
                                                 Path(out) / "on-policy", self.target_kind())
            run = self.run_dir = RunDir(out) if cfg.resume else RunDir.create(out, overwrite=cfg.overwrite)
            if cfg.resume:
                run.log({"stage": "resume"})
            else:
                write_json(run.file("config.json"), self._public_config())
            timings: dict[str, float] = {}

            t0 = time.perf_counter()
            trajectories, sample_targets = self.generate_with_targets(renderer, queries, cfg.samples_per_query)
            held, held_targets = (self.generate_with_targets(renderer, heldout, 1, split="heldout")
                                  if heldout else ([], None))
            run.write_trajectories(trajectories)
            if held:
                run.write_trajectories(held, "heldout.jsonl")
            timings["generate_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            targets = self.cached_score(trajectories, sample_targets)
            timings["score_s"] = time.perf_counter() - t0
            ranks.hand_over(run.path, {"targets": str(self._target_store(trajectories)[0].folder), "loss": cfg.loss})

            t0 = time.perf_counter()
            train = self.train(trajectories, targets)
            timings["train_s"] = time.perf_counter() - t0

            adapter = self.save()
            result = BakeResult(run_dir=run.path, adapter_path=adapter)
            t0 = time.perf_counter()
            result.eval = evaluate_heldout(self.teacher, self.student, held, held_targets, cfg) if held else None
            if cfg.evaluate and held:
                found = fidelity.behaviour_metrics(self.teacher, self.student, renderer, heldout, cfg,
                                                   run.path, adapter)
                result.eval = {**(result.eval or {}), **found} or None
            if result.eval is not None:
                timings["eval_s"] = time.perf_counter() - t0
                write_json(run.file("eval.json"), result.eval)
            timings["total_s"] = time.perf_counter() - started
            result.metrics = {**train, **timings, "trajectories": len(trajectories),
                              "response_tokens": sum(t.response_len for t in trajectories)}
            run.log({"stage": "done", **result.metrics})
            if cfg.evaluate:
                from .report import write_report

                write_report(run.path)
            return result
        finally:
            self.close()

    def make_renderer(self, max_length: int) -> Renderer:
        """The renderer of both sides (a mixture bake renders each query with its own prompt)."""
        return Renderer(self.student.tokenizer, self.config.prompt, max_length,
                        decoding.eos_ids(self.student.generation_config), self.config.chat_template_kwargs)

    def _check_distributed(self) -> None:
        """Refuse launches that would train several unsynchronised copies or race on the run directory."""
        if not self.student.capabilities.owns_loop:
            raise ConfigError(f"Student '{self.student.name}' trains in one process; under accelerate launch or "
                              f"torchrun use a distributed student such as trl.")
        if not self.config.out:
            raise ConfigError("Under accelerate launch or torchrun every process must name the same run "
                              "directory; pass --out.")

    def _handed_over(self, ranks: Ranks) -> tuple[list[Trajectory], list[Targets]]:
        """What rank 0 sampled and scored, read back once it says they are whole."""
        assert self.run_dir is not None
        info = ranks.wait(self.run_dir.path)
        if info.get("loss") not in (None, self.config.loss):  # rank 0 settled the default loss
            self.config = replace(self.config, loss=info["loss"])
            self.loss = self._make_loss()
        trajectories = self.run_dir.read_trajectories()
        store, key = self._target_store(trajectories)
        targets = store.read(key)
        if targets is None:
            raise ConfigError(f"Rank {ranks.rank} found no whole targets in {store.folder} after rank 0 handed "
                              f"over; is --out on a file system every process shares?")
        return trajectories, targets

    def _target_store(self, trajectories: list[Trajectory]) -> tuple[TargetStore, str]:
        """Where the targets of ``trajectories`` are kept, and their key."""
        cfg = self.config
        assert self.run_dir is not None
        need = self.target_kind()
        key = targets_key(model=cfg.teacher_model or cfg.model, teacher=self.teacher.name,
                          prompt_sha256=prompt_sha256(cfg.prompt), kind=need,
                          top_k=cfg.top_k if need == "topk" else None, trajectories=trajectories)
        folder = Path(cfg.target_cache) / key[:16] if cfg.target_cache else self.run_dir.file("targets")
        return TargetStore(folder), key

    def generate(self, renderer: Renderer, queries: list[Query], n: int, split: str = "train") -> list[Trajectory]:
        """Sample n responses per query from the prompted teacher and render both sides."""
        return self.generate_with_targets(renderer, queries, n, split)[0]

    def generate_with_targets(self, renderer: Renderer, queries: list[Query], n: int,
                              split: str = "train") -> tuple[list[Trajectory], list[Targets] | None]:
        """Like :meth:`generate`, plus the targets that came with the samples (hosted teachers), else None.

        Each chunk of queries is saved to the run directory as it completes (see generation.py).
        """
        cfg = self.config
        sampling = decoding.bake_sampling(cfg, renderer.stop_ids, decoding.bake_extras(cfg, self.student), n=n,
                                          logprobs=cfg.top_k if self._targets_from_samples() else None)
        run = self.run_dir
        store = generation.ChunkStore(run.file("generate"), split) if run is not None else None
        return generation.generate(self.teacher, renderer, queries, sampling, split, store, cfg.progress,
                                   run.log if run is not None else None, model=cfg.teacher_model or cfg.model)

    def cached_score(self, trajectories: list[Trajectory],
                     sample_targets: list[Targets] | None = None) -> list[Targets]:
        """Targets from the cache when its key matches, else scored shard by shard and written to it.

        Shards already written for the same key (a stopped bake) are read, not rescored.
        """
        cfg = self.config
        assert self.run_dir is not None
        need = self.loss.needs
        store, key = self._target_store(trajectories)
        cached = store.read(key)
        if cached is not None:
            self.run_dir.log({"stage": "score", "cache": "hit", "folder": str(store.folder)})
            return cached
        out: list[Targets] = []
        reused = 0
        size = store.shard_size
        with counter(len(trajectories), "score", cfg.progress and need != "tokens", unit="trajectory") as bar:
            for n, start in enumerate(range(0, len(trajectories), size)):
                part = trajectories[start: start + size]
                got = store.read_shard(n, key, len(part))
                if got is None:
                    got = self.score(part, sample_targets[start: start + size] if sample_targets else None,
                                     on_batch=bar.update)
                    store.write_shard(n, got, key)
                else:
                    reused += 1
                    bar.update(len(part))
                out.extend(got)
        store.write_index(len(out), key)
        self.run_dir.log({"stage": "score", "cache": "miss", "shards_reused": reused, "folder": str(store.folder),
                          "bytes": store.bytes()})
        return out

    def score(self, trajectories: list[Trajectory], sample_targets: list[Targets] | None = None,
              on_batch: Any = None) -> list[Targets]:
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
        kind = self.target_kind()
        for part in batches(trajectories, cfg.score_batch_size * 4):
            out.extend(score_as_stored(self.teacher, part, kind, cfg.top_k))
            if on_batch is not None:
                on_batch(len(part))
        return out

    def train(self, trajectories: list[Trajectory], targets: list[Targets]) -> dict[str, Any]:
        """Epochs of shuffled, length-bucketed micro-batches; grad_accum of them per optimizer step.

        The training state is checkpointed every ``checkpoint_every`` steps and at the
        end; a resumed bake restores the newest checkpoint and replays the same
        shuffle, skipping the steps already taken.
        """
        cfg = self.config
        run = self.run_dir
        assert run is not None
        plan = self.epoch_batches(trajectories)
        steps_per_epoch = math.ceil(math.ceil(len(trajectories) / cfg.batch_size) / cfg.grad_accum)
        total = cfg.epochs * steps_per_epoch
        _seed_torch(cfg.seed)  # training's randomness (dropout) must not depend on what ran before it
        # What a checkpoint was trained on: a resumed bake trusts only one for the same data.
        data_key = targets_key(model=cfg.model, teacher=self.teacher.name, prompt_sha256=prompt_sha256(cfg.prompt),
                               kind=self.target_kind(), top_k=cfg.top_k, trajectories=trajectories)
        can_save = self.student.capabilities.checkpoints
        if self.student.capabilities.owns_loop:  # a distributed trainer runs the same plan itself
            return self._fit(trajectories, targets, plan, data_key)
        start, first = self._restore(data_key)
        bar = progress(range(start, total), "train", cfg.progress, total=total, unit="step", initial=start)
        bar_iter = iter(bar)
        step = 0
        last = None
        for epoch, micro in enumerate(plan):
            epoch_trajs, epoch_targets = trajectories, targets
            if self.on_policy is not None and step + steps_per_epoch > start:
                epoch_trajs, epoch_targets, sampled = self.on_policy.for_epoch(epoch, trajectories, targets, data_key)
                run.log({"stage": "on_policy", "epoch": epoch, "sampled": sampled})
            for group in batches(micro, cfg.grad_accum):
                step += 1
                if step <= start:
                    continue  # taken before the checkpoint; the shuffle above is replayed all the same
                batch = [[(epoch_trajs[i], epoch_targets[i]) for i in mb] for mb in group]
                m = self.student.step(batch, self.loss)
                first = m["loss"] if first is None else first
                last = m["loss"]
                run.log({"stage": "train", "step": step, "epoch": epoch, **m})
                if can_save and (step % cfg.checkpoint_every == 0 or step == total):
                    checkpoint.save(run.file("checkpoint"), self.student,
                                    {"step": step, "data_key": data_key, "first_loss": first})
                next(bar_iter, None)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
            # Local adapters only (a hosted student's save is a remote export); at step == start the
            # weights are the checkpoint's, which is this epoch's end.
            if cfg.save_epochs and self.student.capabilities.adapters and step >= start:
                self._save_adapter(run.file(f"{EPOCHS_DIR}/epoch-{epoch + 1}"))
        for _ in bar_iter:
            pass
        if last is None:  # everything was done before the checkpoint
            last = next((r["loss"] for r in reversed(run.records()) if r.get("stage") == "train" and "loss" in r), None)
        return {"steps": step, "first_loss": first, "last_loss": last}

    def target_kind(self) -> str:
        """What the teacher hands the student: what the loss needs ("tokens", "topk", "full"),
        except that full targets travel as the teacher's final hidden states ("hidden") when
        the student holds the teacher's frozen output layer, at 2H bytes a token instead of
        2V. Call after both are set up."""
        need = self.loss.needs
        if need == "full" and self.teacher.capabilities.hidden_states and self.student.capabilities.hidden_targets:
            head = self.teacher.output_layer()
            if head is not None and self.student.reads_hidden_targets(head):
                return "hidden"
        return need

    def epoch_batches(self, trajectories: Sequence[Trajectory]) -> list[list[list[int]]]:
        """The micro-batches (lists of trajectory indices) of every epoch that :meth:`train` runs.

        Shuffled from ``config.seed`` and bucketed by the off-policy lengths (so the plan
        never depends on on-policy samples): a resumed bake, a distributed trainer and a
        benchmark that compares against another loop all see the same batches.
        """
        cfg = self.config
        rng = random.Random(cfg.seed)
        lengths = [len(t.unprompted_ids) for t in trajectories]
        return [bucketed(lengths, cfg.batch_size, rng) for _ in range(cfg.epochs)]

    def _fit(self, trajectories: list[Trajectory], targets: list[Targets], plan: list[list[list[int]]],
             data_key: str) -> dict[str, Any]:
        """Train with a student that owns its loop (a distributed trainer) on the same plan: it
        continues from the restored checkpoint and calls back when a checkpoint may be due."""
        cfg = self.config
        run = self.run_dir
        assert run is not None
        groups = [group for micro in plan for group in batches(micro, cfg.grad_accum)]
        if not self.student.capabilities.checkpoints:  # the plain interface, for students without checkpoints
            return self.student.fit(trajectories, targets, groups, self.loss,
                                    lambda record: run.log({"stage": "train", **record}))
        main = Ranks.from_env().main  # every process restores; only rank 0 writes
        start, first = self._restore(data_key, write=main)
        seen = {"first": first}

        def log(record: dict[str, Any]) -> None:
            if seen["first"] is None and "loss" in record:
                seen["first"] = record["loss"]
            run.log({"stage": "train", **record})

        def save(step: int) -> None:
            if step % cfg.checkpoint_every == 0 or step == len(groups):
                checkpoint.save(run.file("checkpoint"), self.student,
                                {"step": step, "data_key": data_key, "first_loss": seen["first"]})

        result = self.student.fit(trajectories, targets, groups, self.loss, log, start=start, checkpoint=save)
        return {**result, "steps": len(groups), "first_loss": seen["first"]}

    def _restore(self, data_key: str, write: bool = True) -> tuple[int, float | None]:
        """The step to continue after and the first loss, from the newest checkpoint (0, None: start).
        ``write``: this process keeps the run's records (rank 0 of a distributed launch)."""
        run = self.run_dir
        assert run is not None
        if not (self.config.resume and self.student.capabilities.checkpoints):
            return 0, None
        found = checkpoint.load(run.file("checkpoint"))
        if found is None or found[1].get("data_key") != data_key:
            step = 0
        else:
            self.student.load_state(str(found[0]))
            step = int(found[1]["step"])
        if write:
            # Steps logged after the checkpoint will be taken again: drop their records.
            run.keep_records(lambda r: r.get("stage") != "train" or r.get("step", 0) <= step)
            run.log({"stage": "train", "resumed_at": step})
        return step, (found[1].get("first_loss") if step else None)

    def save(self) -> Path:
        """Write the adapter to RUN/adapter atomically (temp folder with a manifest, then swapped in)."""
        assert self.run_dir is not None
        return self._save_adapter(self.run_dir.file("adapter"))

    def _save_adapter(self, final: Path) -> Path:
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        self.student.save(str(tmp), self._metadata())
        write_manifest(tmp)
        replace_dir(tmp, final)
        return final

    def _finished(self, run: RunDir) -> BakeResult | None:
        """The result of a run directory whose bake already completed (resume has nothing to do)."""
        import json

        done = next((r for r in reversed(run.records()) if r.get("stage") == "done"), None)
        adapter = run.file("adapter")
        if done is None or verified_dir(adapter) != adapter:
            return None
        result = BakeResult(run_dir=run.path, adapter_path=adapter, metrics={k: v for k, v in done.items()
                                                                                if k != "stage"})
        if run.file("eval.json").is_file():
            result.eval = json.loads(run.file("eval.json").read_text(encoding="utf-8"))
        return result

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
            **({"chat_template_kwargs": cfg.chat_template_kwargs} if cfg.chat_template_kwargs else {}),
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


def _seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _default_out() -> str:
    return str(Path("runs") / datetime.now().strftime("bake-%Y%m%d-%H%M%S"))
