"""The Baker: assembles the backends, checks them, runs the stages in order, closes.

    queries -> render -> generate -> score -> train -> save -> evaluate -> report

Each stage is a module of ``promptbake.stages`` that takes what the stage before it produced;
the run directory (``promptbake.run``) keeps what each one wrote, so a resumed bake takes
whatever is whole. The Baker knows no concrete backend: teacher, student and loss are
registered names (plugins, built-ins included) or instances. docs/architecture.md has the map.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .core import capabilities, decoding, registry
from .core.atomic import write_json
from .core.config import BakeConfig
from .core.errors import ConfigError, PromptbakeWarning
from .core.interfaces import ExportResult, Loss, Student, Teacher
from .core.probes import parse_probes
from .core.progress import timed
from .core.types import PromptMixture
from .run import files
from .run.distributed import DDP_TIMEOUT, Ranks
from .run.rundir import (
    RunDir,
    adapter_metadata,
    default_out,
    finished,
    public_config,
    resumed_config,
)
from .stages import domain_queries, evaluate, export, generate, score, train
from .stages.onpolicy import OnPolicySampler
from .stages.queries import bake_queries
from .stages.render import Renderer, make_renderer
from .stages.report import write_report


@dataclass
class BakeResult:
    """What a bake produced."""

    run_dir: Path
    adapter_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    main: bool = True  # False in the other processes of a distributed launch: rank 0 has the results
    exports: list[ExportResult] = field(default_factory=list)  # what the ``export`` setting wrote


class Baker:
    """Bake a system prompt (or a :class:`PromptMixture`) into a model.

    >>> Baker("Always respond in French.", teacher="hf", student="peft", loss="topk_kl").run()

    ``teacher``, ``student`` and ``loss`` are registered names or instances; any other keyword
    is a :class:`BakeConfig` setting.
    """

    def __init__(self, prompt: str | PromptMixture | None = None, *, teacher: str | Teacher | None = None,
                 student: str | Student | None = None, loss: str | Loss | None = None,
                 config: BakeConfig | None = None, **settings: Any):
        names = {k: v for k, v in (("teacher", teacher), ("student", student), ("loss", loss)) if isinstance(v, str)}
        base = {**(config.to_dict() if config is not None else {}), **({"prompt": prompt} if prompt is not None else {})}
        self.config = cfg = BakeConfig.from_dict({**base, **names, **settings})
        self.teacher: Teacher = registry.create("teacher", teacher if isinstance(teacher, Teacher) else cfg.teacher,
                                                **cfg.teacher_options)
        self.student: Student = registry.create("student", student if isinstance(student, Student) else cfg.student,
                                                **cfg.student_options)
        # With no loss named the default is provisional until both are set up (settle_default_loss).
        self.loss_chosen = cfg.loss is None and not isinstance(loss, Loss)
        if self.loss_chosen:
            self.config = cfg = replace(cfg, loss=capabilities.default_loss(self.teacher, self.student, cfg))
        self.loss: Loss = self._make_loss(loss if isinstance(loss, Loss) else None)
        self.config = replace(cfg, loss=self.loss.name if cfg.loss is None else cfg.loss,  # recorded in the run
                              top_k=self.teacher.capabilities.default_top_k if cfg.top_k is None else cfg.top_k)

    @classmethod
    def resume(cls, run_dir: str | Path, prompt: str | PromptMixture | None = None, **settings: Any) -> Baker:
        """A Baker that continues the bake saved in ``run_dir`` with its saved settings (``prompt``:
        where the run kept only its sha256; ``settings``: how it runs, never what it computes)."""
        return cls(config=resumed_config(run_dir, prompt, **settings))

    def _make_loss(self, instance: Loss | None = None) -> Loss:
        cfg = self.config
        try:
            return registry.create("loss", instance if instance is not None else cfg.loss, **cfg.loss_options)
        except ConfigError as exc:
            why = " (the default here, as no loss was named)" if self.loss_chosen else ""
            raise ConfigError(f"Loss '{cfg.loss}'{why} does not take loss_options {sorted(cfg.loss_options)}: "
                              f"{exc} Name the loss they are for.") from None

    def settle_default_loss(self) -> None:
        """With no loss named, keep the default full_kl only where its targets will be stored as the
        teacher's hidden states (2H bytes a token); where they would be full log-probs (2V bytes a
        token: the student cannot read hidden states, or the model's output layer does not split
        off its decoder), bake topk_kl instead. Called once both are set up."""
        if self.loss_chosen and self.loss.needs == "full" and \
                score.target_kind(self.teacher, self.student, self.loss) != "hidden":
            self.config = replace(self.config, loss="topk_kl")
            self.loss = self._make_loss()
            capabilities.check(self.teacher, self.student, self.loss, self.config)

    def check(self) -> None:
        """Validate settings and the teacher/student/loss combination; no work is done."""
        prompt = self.config.prompt
        if isinstance(prompt, str) and not prompt.strip():
            raise ConfigError("The system prompt is empty; pass --prompt with text or a non-empty file.")
        capabilities.check(self.teacher, self.student, self.loss, self.config)
        if self.config.evaluate:
            parse_probes(self.config.probes)  # a misspelt probe fails now, not after training
        self.teacher.check(self.config)
        self.student.check(self.config)
        for warning in export.check(self.config):  # a format that could not serve this bake refuses it now
            warnings.warn(warning, PromptbakeWarning, stacklevel=2)

    def make_renderer(self, max_length: int) -> Renderer:
        """The renderer of both sides, with the student's tokenizer and end ids (after setup)."""
        cfg = self.config
        return make_renderer(self.student.tokenizer, cfg.prompt, max_length,
                             decoding.eos_ids(self.student.generation_config), cfg.chat_template_kwargs)

    def run(self) -> BakeResult:
        """Run the whole bake and return where the adapter is, with metrics. With ``resume`` every
        stage first takes what the run directory already holds whole."""
        cfg = self.config
        self.check()
        written = domain_queries.count_of(cfg.queries)  # queries = "generate:N": the teacher writes them below
        queries, heldout = ([], []) if written else bake_queries(cfg)
        out, ranks = cfg.out or default_out(), Ranks.from_env()
        if ranks.world > 1:
            capabilities.check_distributed(self.student, cfg)
        if cfg.resume and (done := finished(RunDir(out))) is not None:
            return BakeResult(RunDir(out).path, RunDir(out).file(files.ADAPTER), *done)
        if not cfg.resume and ranks.main:  # the other ranks find rank 0's directory: it is theirs too
            RunDir.check_free(out, cfg.overwrite)
        started, timings = time.perf_counter(), {}
        try:  # everything loads and is checked before the run directory exists
            planned = generate.planned_trajectories(queries, cfg, written)
            # Every process sets up both sides and does its share of the teacher's work.
            ranks.start(float(cfg.student_options.get("ddp_timeout", DDP_TIMEOUT)))  # a Trainer's, where given
            self.student.setup(cfg, cfg.epochs * train.steps_per_epoch(planned, cfg))
            self.teacher.setup(cfg)
            self.teacher.use_student_tokenizer(self.student.tokenizer)
            self.settle_default_loss()
            cfg = self.config
            extras = decoding.bake_extras(cfg, self.student)
            capabilities.check_tokenizers(self.teacher, self.student, self.loss)
            capabilities.check_sampling_extras(self.teacher, extras)
            renderer = self.make_renderer(cfg.length_limit(self.student.context_length))
            kind = score.target_kind(self.teacher, self.student, self.loss)
            run = RunDir.create(out, overwrite=cfg.overwrite) if ranks.main and not cfg.resume else RunDir(out)
            if ranks.main and cfg.resume:
                run.log({"stage": "resume"})
            elif ranks.main:
                write_json(run.file(files.CONFIG), public_config(cfg))
            ranks.gather(None)  # rank 0 made the run directory: now every process writes to it
            if written:
                self.config = cfg = domain_queries.generated(cfg, self.teacher, renderer, run.path, ranks)
                queries, heldout = bake_queries(cfg)
            with timed(timings, "generate_s"):
                logprobs = generate.sample_logprobs(self.teacher, kind, cfg)
                trajectories, sample_targets = generate.sample_split(
                    self.teacher, renderer, queries, cfg.samples_per_query, cfg, extras, run, "train", logprobs, ranks)
                held, held_targets = generate.sample_split(self.teacher, renderer, heldout, 1, cfg, extras, run,
                                                           "heldout", logprobs, ranks) if heldout else ([], None)
                if ranks.main:
                    run.write_trajectories(trajectories)
                    run.write_trajectories(held, files.HELDOUT)
            with timed(timings, "score_s"):
                targets = score.score(self.teacher, trajectories, kind, cfg, run, sample_targets, ranks)
            with timed(timings, "train_s"):
                on_policy = OnPolicySampler(self.teacher, self.student, renderer, queries, cfg,
                                            run.file(files.ON_POLICY), kind) if cfg.on_policy > 0 else None
                trained = train.train(self.student, self.loss, trajectories, targets, cfg, run,
                                      score.bake_key(cfg, self.teacher, kind, trajectories),
                                      on_policy=on_policy, metadata=self.metadata)
            if not ranks.main:  # rank 0 saves, evaluates and reports
                return BakeResult(run_dir=run.path, adapter_path=run.file(files.ADAPTER), main=False)
            adapter = train.save_adapter(self.student, run.file(files.ADAPTER), self.metadata())
            result = BakeResult(run_dir=run.path, adapter_path=adapter)
            if cfg.evaluate and held:
                with timed(timings, "eval_s"):
                    result.eval = evaluate.evaluate(self.teacher, self.student, renderer, held, held_targets,
                                                    heldout, cfg, run.path, adapter)
                if result.eval is not None:
                    write_json(run.file(files.EVAL), result.eval)
            result.exports = [export.export(run.path, e, overwrite=True)
                              for e in export.exporters(cfg.export, cfg.export_options)]
            if isinstance(cfg.prompt, PromptMixture):
                write_json(run.file(files.MIXTURE), {"prompts": cfg.prompt.describe(cfg.include_prompt),
                                                     "queries_per_prompt": getattr(renderer, "counts", {})})
            result.metrics = {**trained, **timings, "total_s": time.perf_counter() - started,
                              "trajectories": len(trajectories),
                              "response_tokens": sum(t.response_len for t in trajectories)}
            run.log({"stage": "done", **result.metrics})
            if cfg.evaluate:
                write_report(run.path)
            return result
        finally:
            self.close()

    def metadata(self) -> dict[str, Any]:
        """What promptbake.json holds next to the adapter."""
        return adapter_metadata(self.config, self.teacher.name, self.student.name, self.loss.name)

    def close(self) -> None:
        self.teacher.close()
        self.student.close()
