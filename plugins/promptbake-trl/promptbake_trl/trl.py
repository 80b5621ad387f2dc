"""The ``trl`` student: LoRA trained by the transformers Trainer (which TRL's trainers extend), on accelerate.

The Trainer owns the loop, so DDP, FSDP, DeepSpeed, gradient checkpointing,
mixed precision and ``report_to`` logging come from its TrainingArguments (TRL's
``SFTConfig``), set through ``student_options``. What it trains on is the
Baker's: the cached teacher targets (never recomputed), in the Baker's order of
micro-batches, with the promptbake Loss.

Checkpoints: every ``checkpoint_every`` steps rank 0 writes the adapter's weights, the
Trainer's AdamW moments and LR schedule and the RNG state in promptbake's pickle-free format
(safetensors + JSON, as the ``peft`` student does), not the Trainer's own checkpoints, which
pickle them. A resumed bake builds the Trainer for the remaining steps, loads that state into
its optimizer and schedule when training begins, and replays the Baker's micro-batches from
there. Under FSDP the weights and the optimizer state are sharded across processes: when a
checkpoint is due every process takes part in gathering them whole to rank 0
(``torch.distributed.checkpoint.state_dict.get_state_dict``), which writes the same files, and a
resumed bake gives them back to the sharded model and optimizer with ``set_state_dict``. Under
DeepSpeed no checkpoints are written (a resumed bake starts its training again).

FSDP: the Trainer trains a copy of the model, which FSDP shards in place (the model handle is
shared with the teacher on rank 0, which scores and evaluates with it unsharded); when training
ends every process takes part in gathering the trained adapter whole into the model the student
saves and evaluates. The copy costs a second model's memory on each process while training.
accelerate (1.15) turns FSDP on only for GPU-like processes: on CPU it leaves the plugin out and the
Trainer would train with DDP, so there the student turns it on in accelerate's state itself. torch's
FSDP2 runs on CPU with gloo; FSDP1 does not (see ``FSDP1_ON_CPU``), and is refused there.

Normalisation: the loss of an optimizer step is a mean over every response
token of that step, across gradient-accumulation micro-batches and processes.
The token count of the step's micro-batches is gathered from all processes in
``get_batch_samples``; each process divides its token sum by that count and
multiplies by the number of processes, which DDP's gradient averaging undoes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback

from promptbake import (
    BakeConfig,
    BatchTargets,
    ConfigError,
    Loss,
    StudentCapabilities,
    Targets,
    Trajectory,
    load_torch_state,
    load_weights,
    save_torch_state,
)
from promptbake.builtin.peft import PeftStudent
from promptbake.builtin.scoring import response_logits

# Settings the Baker's own config decides; giving them as student options would split the truth.
OWNED = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay",
         "max_grad_norm", "num_train_epochs", "max_steps", "seed", "warmup_steps", "warmup_ratio",
         "remove_unused_columns", "output_dir")


class TRLStudent(PeftStudent):
    """LoRA via ``transformers.Trainer`` with ``trl.SFTConfig`` arguments.

    ``student_options`` are TrainingArguments fields, e.g. ``{"report_to": "wandb",
    "gradient_checkpointing": true, "bf16": true, "fsdp": "full_shard", "deepspeed": "ds.json"}``.
    """

    name = "trl"
    capabilities = StudentCapabilities(losses=None, can_score=True, checkpoints=True, owns_loop=True)

    def __init__(self, model: str | None = None, lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_dropout: float = 0.0, target_modules: str | list[str] = "all-linear", **training_args: Any):
        super().__init__(model, head_chunk=None, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         target_modules=target_modules)
        self.training_args = training_args
        self.trainer: Any = None
        self._restore_from: str | None = None  # a checkpoint to load once the Trainer has its optimizer
        self._rng_by_rank: dict[str, torch.Tensor] = {}  # every process's RNG state, gathered for a checkpoint
        self._optimizer_state: dict[str, Any] | None = None  # under FSDP: gathered whole to rank 0

    def check(self, config: BakeConfig) -> None:
        from trl import SFTConfig

        valid = {f.name for f in dataclasses.fields(SFTConfig)}
        for key in self.training_args:
            if key in OWNED:
                raise ConfigError(f"student option {key} is set by promptbake's own settings (batch_size, "
                                  f"grad_accum, lr, ...); set those instead.")
            if key not in valid:
                raise ConfigError(f"student option {key} is not a TrainingArguments/SFTConfig field.")

    def arguments(self, steps: int, output_dir: str, start: int = 0) -> Any:
        """The SFTConfig for optimizer steps ``start`` to ``steps`` (the warmup is of all ``steps``)."""
        from trl import SFTConfig

        cfg = self.config
        assert cfg is not None
        options: dict[str, Any] = {
            "bf16": False, "fp16": False,  # mixed precision only when asked (SFTConfig may default to bf16)
            "report_to": "none", "logging_steps": 1, "save_strategy": "no", "disable_tqdm": not cfg.progress,
            "lr_scheduler_type": "linear", "dataloader_num_workers": 0,
            "optim": "adamw_torch",  # the peft student's optimizer, so the two give the same curve
            **self.training_args,
        }
        return SFTConfig(
            output_dir=output_dir, per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, num_train_epochs=1, max_steps=steps - start, seed=cfg.seed,
            warmup_steps=math.ceil(cfg.warmup_ratio * steps), remove_unused_columns=False,
            use_cpu=self._handle.device == "cpu",
            # The Baker's micro-batch is the global batch: accelerate splits it across processes.
            accelerator_config={"split_batches": True}, **options,
        )

    def fit(self, trajectories: Sequence[Trajectory], targets: Sequence[Targets],
            steps: Sequence[Sequence[Sequence[int]]], loss: Loss, log: Callable[[dict[str, Any]], None], *,
            start: int = 0, checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        assert cfg is not None
        if any(len(step) != cfg.grad_accum for step in steps[:-1]):
            raise ConfigError(f"With the trl student every optimizer step takes grad_accum={cfg.grad_accum} "
                              f"micro-batches; choose batch_size and grad_accum so that an epoch's micro-batches "
                              f"divide evenly.")
        if start >= len(steps):  # cut off after the last checkpoint: its weights are the result
            if self._restore_from is not None:
                load_weights(self._restore_from, self._handle.peft_model)
                self._restore_from = None
            return {"steps": start, "first_loss": None, "last_loss": None}
        micro = [list(mb) for step in steps[start:] for mb in step]
        with tempfile.TemporaryDirectory(prefix="promptbake-trl-") as out:
            args = self.arguments(len(steps), out, start)
            fsdp = _fsdp_asked(args) and int(os.environ.get("WORLD_SIZE", "1")) > 1
            if fsdp and self._handle.device == "cpu" and _fsdp_version(args) != 2:
                raise ConfigError(FSDP1_ON_CPU)
            # FSDP shards the model it is given in place: it gets a copy (see the module's docstring).
            model = copy.deepcopy(self._handle.peft_model) if fsdp else self._handle.peft_model
            self.trainer = _BakeTrainer(
                model=model, args=args,
                bake=_Bake(list(trajectories), list(targets), micro, loss, self._handle.tokenizer.pad_token_id,
                           total_steps=len(steps), vocab=self._handle.vocab),
            )
            if self.trainer.is_fsdp_enabled != fsdp:
                raise ConfigError(f"FSDP was asked for on {os.environ.get('WORLD_SIZE', '1')} process(es) but "
                                  f"accelerate set up {self.trainer.accelerator.distributed_type}; the bake would "
                                  f"not train as asked.")
            if self._restore_from is not None and self.trainer.is_deepspeed_enabled:
                raise ConfigError("This bake's checkpoint cannot be restored under DeepSpeed, whose optimizer "
                                  "state the trl student does not gather; resume it without DeepSpeed.")
            curve = _Curve(self.trainer, log, start)
            self.trainer.add_callback(curve)  # before the checkpoints: a checkpoint follows its step's record
            self.trainer.add_callback(_Checkpoints(self, start, checkpoint))
            if not cfg.progress:  # with tqdm off the Trainer prints every log dict instead
                self.trainer.remove_callback(PrinterCallback)
            self.trainer.train()
            if fsdp:
                self._gather_adapter()
        return {"steps": start + len(curve.losses), "first_loss": curve.losses[0] if curve.losses else None,
                "last_loss": curve.losses[-1] if curve.losses else None}

    def save_state(self, path: str) -> None:
        """The adapter's weights, the Trainer's optimizer and schedule and the RNG, pickle-free (rank 0;
        under FSDP what :meth:`_gather_sharded` gathered)."""
        trainer = self.trainer
        if trainer is None or trainer.optimizer is None:
            raise RuntimeError("TRLStudent.save_state is called from fit, once the Trainer exists")
        optimizer = trainer.optimizer
        if trainer.is_fsdp_enabled:
            if self._optimizer_state is None:
                raise RuntimeError("under FSDP, TRLStudent.save_state follows _gather_sharded")
            optimizer, self._optimizer_state = _Held(self._optimizer_state), None
        save_torch_state(path, self._handle.peft_model, optimizer, trainer.lr_scheduler, extra=self._rng_by_rank)

    def load_state(self, path: str) -> None:
        """Remember ``path``: the Trainer that :meth:`fit` builds makes its optimizer and schedule
        only when training begins, and the state is loaded into them then."""
        self._restore_from = path

    def _restore(self) -> dict[str, torch.Tensor] | None:
        """Load the remembered checkpoint into the Trainer's optimizer and schedule; return this
        process's RNG states from it (None when there is nothing to restore)."""
        if self._restore_from is None:
            return None
        trainer = self.trainer
        if trainer.is_fsdp_enabled:
            by_rank = self._restore_sharded(self._restore_from)
        else:
            by_rank = load_torch_state(self._restore_from, self._handle.peft_model, trainer.optimizer,
                                       trainer.lr_scheduler)
        self._restore_from = None
        rank = trainer.accelerator.process_index
        # Each process draws its own dropout masks, so each gets its own state back (a launch with
        # more processes than the saved one reuses theirs: its batches are split differently anyway).
        # (a copy: set_rng_state reads a row view from the start of its storage)
        return {name: t[rank % t.shape[0]].clone() for name, t in by_rank.items() if name.startswith("rng.")}

    def _restore_sharded(self, path: str) -> dict[str, torch.Tensor]:
        """Under FSDP, every process: the checkpoint whole into tensors of its own and a holder, then
        sharded into the Trainer's model and optimizer by ``set_state_dict``; the stored RNG states back.
        (Not through the unsharded model: with accelerate's cpu_ram_efficient_loading only rank 0's has
        its weights, the others' are on the meta device.)"""
        from torch.distributed.checkpoint import state_dict as dcp

        trainer, held = self.trainer, _Held()
        weights = {name: torch.empty(p.shape, dtype=p.dtype)
                   for name, p in self._handle.peft_model.named_parameters() if p.requires_grad}
        by_rank = load_torch_state(path, _Params(weights), held, trainer.lr_scheduler)
        optimizer = _inner(trainer.optimizer)
        names = _optimizer_names(trainer.model_wrapped, optimizer)
        loaded = held.loaded
        optim = {"state": {names[int(i)]: v for i, v in loaded["state"].items()},
                 "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                  for g in loaded["param_groups"]]}
        dcp.set_state_dict(trainer.model_wrapped, optimizer, model_state_dict=weights, optim_state_dict=optim,
                           options=dcp.StateDictOptions(full_state_dict=True, strict=False))
        return by_rank

    def _gather_sharded(self) -> None:
        """Under FSDP (a collective call: every process makes it): the trainable weights into rank 0's
        unsharded model and the optimizer state, both whole, to rank 0, in the unsharded optimizer's
        format (parameters numbered in its order), so a checkpoint is the same files as without FSDP."""
        from torch.distributed.checkpoint import state_dict as dcp

        trainer = self.trainer
        whole = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        weights, optim = dcp.get_state_dict(trainer.model_wrapped, _inner(trainer.optimizer), options=whole)
        if not trainer.accelerator.is_main_process:
            return  # with cpu_offload only rank 0 holds the whole state
        _copy_into(self._handle.peft_model, weights)
        index = {name: i for i, name in enumerate(name for g in optim["param_groups"] for name in g["params"])}
        self._optimizer_state = {
            "state": {index[name]: entry for name, entry in optim["state"].items()},
            "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in optim["param_groups"]]}

    def _gather_adapter(self) -> None:
        """Under FSDP, once training ends (every process): the trained weights whole into rank 0's
        unsharded model, which saves and evaluates them; the sharded copy is let go."""
        from torch.distributed.checkpoint import state_dict as dcp

        trainer = self.trainer
        weights = dcp.get_model_state_dict(trainer.model_wrapped, options=dcp.StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        if trainer.accelerator.is_main_process:
            _copy_into(self._handle.peft_model, weights)
        trainer.accelerator.free_memory()
        trainer.model = trainer.model_wrapped = self._handle.peft_model
        trainer.optimizer = trainer.lr_scheduler = None

    def _gather_rng(self) -> None:
        """Every process's RNG states, to rank 0 (a collective call: every process makes it)."""
        accelerator = self.trainer.accelerator
        states = {"rng.cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            states["rng.cuda"] = torch.cuda.get_rng_state()
        gathered = {}
        for name, state in states.items():
            row = state.to(accelerator.device)[None]
            gathered[name] = (accelerator.gather(row) if accelerator.num_processes > 1 else row).cpu()
        self._rng_by_rank = gathered

    def save(self, path: str, metadata: dict[str, Any]) -> None:
        if self.trainer is None or self.trainer.accelerator.is_main_process:
            super().save(path, metadata)


@dataclasses.dataclass
class _Bake:
    trajectories: list[Trajectory]
    targets: list[Targets]
    micro_batches: list[list[int]]
    loss: Loss
    pad_id: int
    total_steps: int  # of the whole bake: the LR schedule's length when a resumed bake trains fewer
    vocab: int | None = None  # logits compared: the tokenizer's vocabulary


class _MicroBatches:
    """The Baker's micro-batches, in its order, as a batch sampler (accelerate reads ``batch_size``)."""

    def __init__(self, micro_batches: list[list[int]], batch_size: int):
        self.micro_batches, self.batch_size = micro_batches, batch_size

    def __iter__(self) -> Any:
        return iter(self.micro_batches)

    def __len__(self) -> int:
        return len(self.micro_batches)


class _BakeTrainer(Trainer):
    """The Trainer on the Baker's micro-batches, with the promptbake Loss normalised per step."""

    # compute_loss already divides by the tokens of the whole step: no further 1/GA.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, bake: _Bake, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bake = bake
        self.step_loss = 0.0

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType

        if (not self.is_fsdp_enabled and _fsdp_asked(self.args)
                and self.accelerator.distributed_type == DistributedType.MULTI_CPU):
            _fsdp_on_cpu(self)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        # The whole bake's schedule; a resumed bake loads its position in it from the checkpoint.
        return super().create_scheduler(self.bake.total_steps, optimizer)

    def get_train_dataloader(self) -> Any:
        from torch.utils.data import DataLoader

        bake = self.bake

        def collate(indices: list[int]) -> dict[str, torch.Tensor]:
            return {"index": torch.tensor(indices),
                    "num_tokens": torch.tensor([bake.targets[i].num_tokens for i in indices])}

        sampler = _MicroBatches(bake.micro_batches, self.args.per_device_train_batch_size)
        loader = DataLoader(range(len(bake.trajectories)), batch_sampler=sampler, collate_fn=collate)
        return self.accelerator.prepare(loader)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        count = torch.tensor([sum(int(b["num_tokens"].sum()) for b in batch_samples)], device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count)
        return batch_samples, count.sum()

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        bake = self.bake
        index = inputs["index"].tolist()
        device = inputs["index"].device
        trajectories = [bake.trajectories[i] for i in index]
        targets = BatchTargets.concat([bake.targets[i] for i in index], device=device)
        whole = _Whole(model) if self.is_fsdp_enabled else model
        logits, _ = response_logits(whole, trajectories, "unprompted", bake.pad_id, device, vocab=bake.vocab)
        value = bake.loss(logits, targets, int(num_items_in_batch))
        self.step_loss += float(value.detach())
        # DDP averages gradients over processes; the token mean over all of them needs the sum.
        value = value * self.accelerator.num_processes
        return (value, {"logits": logits}) if return_outputs else value


def _fsdp_asked(args: Any) -> bool:
    """Whether FSDP is asked for: by the Trainer's arguments or by ``accelerate launch``'s config."""
    return args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _fsdp_version(args: Any) -> int:
    """1 or 2: the Trainer's ``fsdp_config["version"]`` (default 2), else accelerate's ``FSDP_VERSION`` (default 1)."""
    if args.fsdp_plugin_args is not None:
        return int(args.fsdp_plugin_args.get("fsdp_version", 2))
    return int(os.environ.get("FSDP_VERSION", "1"))


# What stops FSDP1 on CPU processes (accelerate 1.15, torch 2.13), measured in the plugin's tests.
FSDP1_ON_CPU = (
    "FSDP1 does not run on CPU processes: accelerate's FullyShardedDataParallelPlugin refuses "
    "sync_module_states=True without a GPU-like device ('There are currently no available devices found'), "
    "and with it off torch's FullyShardedDataParallel refuses the device_id accelerate gives it "
    "('Inconsistent compute device and `device_id` on rank 0: cpu vs cpu:0'). Use FSDP2 "
    "(student_options.fsdp_config.version=2, the Trainer's default; fsdp_version: 2 in an accelerate config).")


def _fsdp_on_cpu(trainer: Trainer) -> None:
    """Turn FSDP on in accelerate's state for CPU processes, as accelerate does for GPUs (its
    ``AcceleratorState`` leaves the plugin out for ``MULTI_CPU``, and the Trainer would use DDP)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    args = trainer.args
    plugin = FullyShardedDataParallelPlugin(**(args.fsdp_plugin_args or {}))  # else: from accelerate's env
    state = trainer.accelerator.state
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # accelerate keeps the two in step (an AcceleratorState made later copies PartialState's).
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


# Wrapper modules' names in named_parameters() that a state dict's names leave out (FSDP1, activation
# checkpointing, torch.compile); FSDP2 adds none.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _optimizer_names(model: Any, optimizer: Any) -> list[str]:
    """The state-dict name of each of ``optimizer``'s parameters, in its order (its state dict's numbering)."""
    by_id = {}
    for name, p in model.named_parameters():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        by_id[id(p)] = name
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _copy_into(model: Any, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


class _Held:
    """An optimizer's state dict in hand: given to save_torch_state, or taken from load_torch_state."""

    def __init__(self, state: dict[str, Any] | None = None):
        self.loaded: dict[str, Any] = state or {}

    def state_dict(self) -> dict[str, Any]:
        return self.loaded

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = state


class _Params:
    """Named tensors standing in for a model's parameters (load_torch_state copies into them)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def named_parameters(self) -> Any:
        return iter(self.tensors.items())


class _Whole:
    """The model called only as a whole (no decoder/output-layer split): FSDP gathers the
    parameters outside the wrapped layers (embeddings, final norm, output layer) in the root
    module's forward (FSDP2's hooks, FSDP1's wrapper), which calling the decoder alone would skip."""

    def __init__(self, model: Any):
        self.model = model
        # Its signature says whether logits_to_keep is taken.
        self.forward = (model.get_base_model() if hasattr(model, "get_base_model") else model).forward

    def __call__(self, **kwargs: Any) -> Any:
        return self.model(**kwargs)


class _Curve(TrainerCallback):
    """Logs one record per optimizer step: the step's loss summed over processes, and the LR used."""

    def __init__(self, trainer: _BakeTrainer, log: Callable[[dict[str, Any]], None], start: int = 0):
        self.trainer, self.log_fn, self.losses = trainer, log, []
        self.start = start  # steps taken before a resumed bake's Trainer began
        self.lr = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        scheduler = kwargs.get("lr_scheduler")
        self.lr = scheduler.get_last_lr()[0] if scheduler is not None else 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        step = self.start + state.global_step
        total = torch.tensor([trainer.step_loss], device=trainer.accelerator.device)
        if trainer.accelerator.num_processes > 1:
            total = trainer.accelerator.reduce(total, reduction="sum")
        trainer.step_loss = 0.0
        loss = float(total[0])
        self.losses.append(loss)
        if trainer.accelerator.is_main_process:
            self.log_fn({"step": step, "loss": loss, "lr": self.lr})


class _Checkpoints(TrainerCallback):
    """Loads a resumed bake's state when training begins; offers rank 0 a checkpoint after each step."""

    def __init__(self, student: TRLStudent, start: int, checkpoint: Callable[[int], None] | None):
        self.student, self.start, self.checkpoint = student, start, checkpoint
        self.rng: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # After the Trainer made and prepared its optimizer and schedule (and seeded the RNG).
        self.rng = self.student._restore()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The RNG as the first step begins: opening the data loader drew from it, which the
        # uninterrupted bake did before its first step, not before this one.
        if self.rng is not None:
            if "rng.cpu" in self.rng:
                torch.set_rng_state(self.rng["rng.cpu"])
            if "rng.cuda" in self.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(self.rng["rng.cuda"])
            self.rng = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        student = self.student
        trainer = student.trainer
        step = self.start + state.global_step
        if self.checkpoint is None or trainer.is_deepspeed_enabled:
            return
        if not student.config.checkpoint_due(step, trainer.bake.total_steps):
            return  # every process knows when one is due: the collectives below are only then
        if trainer.is_fsdp_enabled:
            student._gather_sharded()
        student._gather_rng()
        if trainer.accelerator.is_main_process:
            self.checkpoint(step)
