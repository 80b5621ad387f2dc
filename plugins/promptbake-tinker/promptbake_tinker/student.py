"""The ``tinker`` student: a LoRA adapter trained on the Tinker service.

Every example is ONE ``Datum`` on the unprompted rendering (``model_input =
ids[:-1]``, ``target_tokens = ids[1:]``); one optimizer step is one
forward/backward request (two passes for the custom losses, see below) and
one ``optim_step``, submitted together before either is waited on.

* ``ce``: ``loss_fn="cross_entropy"``, target_tokens (N,), weights 1/T on the
  response positions (times ``Targets.weight``), 0 elsewhere, where T is the
  response-token count of the whole step; the service's sum is then the
  step-normalised mean, as in the peft student.
* ``topk_kl``: target_tokens (N, K) = the teacher's top-K ids at each response
  position, through ``forward_backward_custom``: the service returns the
  student's log-probs of those K ids per position and the KL is computed here,
  exactly as :class:`promptbake.losses.TopKKLLoss` computes it, except the
  student's tail: peft sums the student's mass outside the top-K over the
  vocabulary; here only the K log-probs exist, so it is log(1 - sum q_k)
  (log1mexp of their logsumexp) -- equal mathematically, clamped at
  log(1e-7) when the top-K holds nearly all the student's mass.
  With ``renormalize=True`` the renormalised KL is computed the same way.
  Student option ``soft_ce=True`` sends the renormalised case as
  ``cross_entropy`` with (N, K) soft targets instead (tinker-cookbook sdft.py:
  one forward pass cheaper); that optimises -sum p_k log q_k, which is NOT the
  renormalised KL: besides the teacher entropy it lacks +log sum_K q_k, so it
  also pulls student mass into the top-K.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptbake import (
    METADATA_FILE,
    BackendError,
    BakeConfig,
    CapabilityError,
    ConfigError,
    Loss,
    Student,
    StudentCapabilities,
    Targets,
    Trajectory,
)

from . import client

TINKER_FILE = "tinker.json"
STATE_FILE = "tinker_state.json"  # in a checkpoint folder: where the service keeps the training state
STATE_TTL = 7 * 24 * 3600  # checkpoints only serve a resume; the service bills storage by the month


class TinkerStudent(Student):
    """LoRA training on the Tinker service.

    Options (``student_options``):
        model: the Tinker base model (default: ``model``).
        base_url: the service root (default: the SDK's, or ``TINKER_BASE_URL``).
        timeout: seconds to wait for any one request (default 600).
        train_mlp, train_attn, train_unembed: which layers get LoRA (all True by default).
        beta1, beta2, eps: Adam settings (default 0.9, 0.95, 1e-8, the cookbook's).
        soft_ce: ``topk_kl`` with ``renormalize`` as cross_entropy on soft targets (see above).
        download: after training, fetch the adapter files into the adapter folder (default
            True); False writes only the ``tinker://`` paths.
        ttl_seconds: how long the service keeps the saved weights (default: forever).
        state_ttl_seconds: how long it keeps each training checkpoint (default 7 days; at
            least 3600, the service's minimum).

    Checkpoints: every ``checkpoint_every`` steps the Baker asks for :meth:`save_state`,
    which saves the LoRA weights and Adam moments on the service (``save_state``) and
    writes their ``tinker://`` path, the step count and the base model to the run's
    checkpoint folder. A resumed bake reads that file and continues in a training client
    created from the saved state with its optimizer
    (``create_training_client_from_state_with_optimizer``).
    """

    name = "tinker"
    capabilities = StudentCapabilities(losses=frozenset({"ce", "topk_kl"}), can_score=False, checkpoints=True)

    def __init__(self, model: str | None = None, base_url: str | None = None,
                 timeout: float = client.DEFAULT_TIMEOUT, train_mlp: bool = True, train_attn: bool = True,
                 train_unembed: bool = True, beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8,
                 soft_ce: bool = False, download: bool = True, ttl_seconds: int | None = None,
                 state_ttl_seconds: int | None = STATE_TTL, lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_dropout: float = 0.0, target_modules: str | list[str] = "all-linear"):
        """``lora_rank``: the service's LoRA rank; the other LoRA settings are the service's own and
        are refused unless left at their defaults (they are accepted as options only to say so)."""
        who = "Student 'tinker'"
        if target_modules != "all-linear":
            raise ConfigError("Student 'tinker' chooses LoRA layers with student_options train_mlp, "
                              "train_attn and train_unembed, not target_modules; leave it at 'all-linear'.")
        if lora_alpha is not None and lora_alpha != lora_rank:
            raise ConfigError("Student 'tinker' cannot set lora_alpha (the service fixes its LoRA scaling); "
                              "leave lora_alpha unset.")
        if lora_dropout:
            raise ConfigError("Student 'tinker' has no LoRA dropout; set lora_dropout to 0.")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
            raise ConfigError(f"lora_rank must be a positive integer, got {lora_rank!r}.")
        self.lora_rank = lora_rank
        if not (train_mlp or train_attn or train_unembed):
            raise ConfigError(f"{who} needs at least one of train_mlp, train_attn, train_unembed set.")
        for key, ttl in (("ttl_seconds", ttl_seconds), ("state_ttl_seconds", state_ttl_seconds)):
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 3600):
                raise ConfigError(f"{who} option {key} must be a whole number of seconds, at least 3600 "
                                  f"(the service's minimum), or null to keep forever; got {ttl!r}.")
        self.model_name = model
        self.base_url = base_url
        self.timeout = client.check_timeout(who, timeout)
        self.train = {"train_mlp": bool(train_mlp), "train_attn": bool(train_attn),
                      "train_unembed": bool(train_unembed)}
        self.adam = {"beta1": float(beta1), "beta2": float(beta2), "eps": float(eps)}
        self.soft_ce = bool(soft_ce)
        self.download = bool(download)
        self.ttl_seconds = ttl_seconds
        self.state_ttl_seconds = state_ttl_seconds
        self.service: Any = None
        self.training: Any = None
        self._tokenizer: Any = None
        self.config: BakeConfig | None = None
        self.total_steps = 1
        self.steps = 0
        self.datums_sent = 0  # examples sent as datums, for the record

    def check(self, config: BakeConfig) -> None:
        """The key and the options the service cannot honour, before anything is created."""
        self.model_name = self.model_name or config.model
        client.require_key("Student 'tinker'")

    def setup(self, config: BakeConfig, total_steps: int) -> None:
        self.check(config)
        client.import_tinker("Student 'tinker'")
        self.config = config
        self.total_steps = max(total_steps, 1)
        self.steps = 0
        self.service = client.connect(self.base_url)
        made = self.service.create_lora_training_client(
            base_model=self.model_name, rank=self.lora_rank, seed=config.seed, **self.train)
        self.training = client.resolve(made, self.timeout, "the LoRA training client")
        self._tokenizer = self.training.get_tokenizer()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("TinkerStudent.setup() was not called")
        return self._tokenizer

    def learning_rate(self, step: int) -> float:
        """Linear warmup then linear decay to 0, as transformers' get_linear_schedule_with_warmup."""
        assert self.config is not None
        warmup = math.ceil(self.config.warmup_ratio * self.total_steps)
        if step < warmup:
            factor = step / max(1, warmup)
        else:
            factor = max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))
        return self.config.lr * factor

    def step(self, micro_batches: Sequence[Sequence[tuple[Trajectory, Targets]]], loss: Loss) -> dict[str, float]:
        import tinker

        if self.training is None or self.config is None:
            raise RuntimeError("TinkerStudent.setup() was not called")
        pairs = [pair for mb in micro_batches for pair in mb]  # one request: no accumulation needed
        num_tokens = sum(tg.num_tokens for _, tg in pairs)
        scale = 1.0 / max(num_tokens, 1)
        tc = self.training
        if loss.name == "ce":
            data = [ce_datum(t, tg, scale) for t, tg in pairs]
            fb = tc.forward_backward(data, "cross_entropy")
        elif loss.name == "topk_kl":
            tail = bool(getattr(loss, "tail", True))
            renormalize = bool(getattr(loss, "renormalize", False))
            if renormalize and self.soft_ce:
                data = [topk_datum(t, tg, soft_scale=scale) for t, tg in pairs]
                fb = tc.forward_backward(data, "cross_entropy")
            else:
                data = [topk_datum(t, tg) for t, tg in pairs]
                targets = [tg for _, tg in pairs]
                starts = [t.unprompted_prefix_len - 1 for t, _ in pairs]
                fb = tc.forward_backward_custom(
                    data, TopKKLFn(targets, starts, num_tokens, tail=tail, renormalize=renormalize))
        else:
            raise CapabilityError(f"Student 'tinker' cannot train with loss '{loss.name}'; it supports: ce, topk_kl.")
        lr = self.learning_rate(self.steps)
        params = tinker.AdamParams(learning_rate=lr, weight_decay=self.config.weight_decay,
                                   grad_clip_norm=self.config.max_grad_norm, **self.adam)
        opt = tc.optim_step(params)  # submitted before waiting: the service runs them in order
        result = client.wait(fb, self.timeout, "a forward/backward request")
        client.wait(opt, self.timeout, "an optimizer step")
        self.steps += 1
        self.datums_sent += len(data)
        return {"loss": float(result.metrics.get("loss:sum", float("nan"))), "lr": lr,
                "tokens": float(num_tokens), "datums": float(len(data))}

    def save(self, path: str, metadata: dict[str, Any]) -> None:
        if self.training is None:
            raise RuntimeError("TinkerStudent.setup() was not called")
        os.makedirs(path, exist_ok=True)
        name = f"promptbake-{uuid.uuid4().hex[:12]}"
        sampler = client.wait(self.training.save_weights_for_sampler(name, ttl_seconds=self.ttl_seconds),
                              self.timeout, "saving the weights for sampling")
        record: dict[str, Any] = {"base_model": self.model_name, "sampler_path": sampler.path,
                                  "downloaded": False}
        if self.download:
            external = client.wait(self.training.save_weights_external(name, ttl_seconds=self.ttl_seconds),
                                   self.timeout, "exporting the adapter")
            record["external_path"] = external.path
            rest = self.service.create_rest_client()
            urls = client.wait(rest.get_external_weights_urls(external.path), self.timeout,
                               "the adapter download links").urls
            fetch_files(urls, Path(path), self.timeout, sampler.path)
            record["downloaded"] = True
            record["files"] = sorted(urls)
        with open(os.path.join(path, TINKER_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        with open(os.path.join(path, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump({**metadata, "tinker": record}, f, indent=2)

    def save_state(self, path: str) -> None:
        """Save the LoRA weights and Adam moments on the service; record where in ``path``."""
        if self.training is None:
            raise RuntimeError("TinkerStudent.setup() was not called")
        name = f"promptbake-step{self.steps}-{uuid.uuid4().hex[:8]}"
        saved = client.wait(self.training.save_state(name, ttl_seconds=self.state_ttl_seconds),
                            self.timeout, "saving the training state")
        record = {"state_path": saved.path, "base_model": self.model_name, "steps": self.steps,
                  "datums_sent": self.datums_sent}
        with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)

    def load_state(self, path: str) -> None:
        """Continue from what :meth:`save_state` recorded: a training client made from the saved
        weights and optimizer state (the client :meth:`setup` made is dropped)."""
        if self.service is None:
            raise RuntimeError("TinkerStudent.setup() was not called")
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            record = json.load(f)
        if record.get("base_model") != self.model_name:
            raise ConfigError(f"The checkpoint in {path} trained base model {record.get('base_model')!r} on "
                              f"Tinker, not {self.model_name!r}; resume with the same student model option.")
        made = self.service.create_training_client_from_state_with_optimizer(record["state_path"])
        self.training = client.resolve(
            made, self.timeout, f"a training client from the checkpoint {record['state_path']} (it may have "
                                f"expired: state_ttl_seconds)")
        self.steps = int(record["steps"])
        self.datums_sent = int(record.get("datums_sent", 0))

    def close(self) -> None:
        self.training = None


# -- data ---------------------------------------------------------------------


def _weights(targets: Targets) -> list[float]:
    return [1.0] * len(targets) if targets.weight is None else [float(w) for w in targets.weight.tolist()]


def ce_datum(traj: Trajectory, targets: Targets, scale: float) -> Any:
    """One datum: the unprompted rendering shifted by one, weight ``scale * w`` on the response."""
    import numpy as np
    import tinker

    ids = list(traj.unprompted_ids)
    start = traj.unprompted_prefix_len - 1  # input position that predicts response token 0
    weights = np.zeros(len(ids) - 1, dtype=np.float32)
    for i, w in enumerate(_weights(targets)[: traj.response_len]):
        weights[start + i] = w * scale if w > 0 else 0.0
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(ids[:-1]),
                        loss_fn_inputs={"target_tokens": np.asarray(ids[1:], dtype=np.int64), "weights": weights})


def topk_datum(traj: Trajectory, targets: Targets, soft_scale: float | None = None) -> Any:
    """One datum with (N, K) target_tokens: the teacher's top-K ids at response positions, 0 elsewhere.

    ``soft_scale`` set: weights are the teacher's top-K probabilities renormalised,
    times ``soft_scale * w`` (cross_entropy on soft targets); else all zero (the
    custom loss brings its own targets).
    """
    import numpy as np
    import tinker
    import torch

    if targets.topk_ids is None or targets.topk_logprobs is None:
        raise ValueError("loss 'topk_kl' needs top-K ids and log-probs in its targets")
    ids = list(traj.unprompted_ids)
    r = traj.response_len
    k = targets.topk_ids.shape[-1]
    start = traj.unprompted_prefix_len - 1
    tokens = np.zeros((len(ids) - 1, k), dtype=np.int64)
    tokens[start: start + r] = targets.topk_ids[:r].numpy().astype(np.int64)
    weights = np.zeros((len(ids) - 1, k), dtype=np.float32)
    if soft_scale is not None:
        t_logp = targets.topk_logprobs[:r].float()
        p = torch.softmax(t_logp, dim=-1)  # -inf pads get probability 0
        w = torch.tensor(_weights(targets)[:r]).clamp(min=0).unsqueeze(-1)
        weights[start: start + r] = (p * w * soft_scale).numpy()
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(ids[:-1]),
                        loss_fn_inputs={"target_tokens": tokens, "weights": weights})


class TopKKLFn:
    """The custom loss for ``forward_backward_custom``: TopKKLLoss from the K student log-probs.

    Called with the datums and, per datum, the student's log-probs of its
    target tokens, shape (N, K); returns (loss, metrics). The loss is the sum
    over response positions divided by the step's response tokens.
    """

    def __init__(self, targets: Sequence[Targets], starts: Sequence[int], num_tokens: int,
                 tail: bool = True, renormalize: bool = False):
        self.targets = list(targets)
        self.starts = list(starts)
        self.num_tokens = max(num_tokens, 1)
        self.tail = tail
        self.renormalize = renormalize

    def __call__(self, data: Sequence[Any], logprobs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        import torch

        total = None
        for tg, start, lp in zip(self.targets, self.starts, logprobs, strict=True):
            r = len(tg)
            per_token = topk_kl_from_logprobs(lp[start: start + r].float(), tg, self.tail, self.renormalize)
            if tg.weight is not None:
                w = tg.weight.float()
                per_token = torch.where(w > 0, per_token * w, torch.zeros_like(per_token))
            part = per_token.sum()
            total = part if total is None else total + part
        assert total is not None
        value = total / self.num_tokens
        return value, {"topk_kl": float(value.detach())}


def topk_kl_from_logprobs(s_logp: Any, targets: Targets, tail: bool, renormalize: bool) -> Any:
    """Per-position forward KL over the teacher's top-K from the student's log-probs of those ids."""
    import torch

    from promptbake import log1mexp

    assert targets.topk_logprobs is not None
    t_logp = targets.topk_logprobs.float()
    valid = torch.isfinite(t_logp)  # -inf marks padding of rows with fewer than K entries
    neg_inf = torch.full_like(s_logp, float("-inf"))
    s_valid = torch.where(valid, s_logp, neg_inf)
    if renormalize:
        t_logp = t_logp - torch.logsumexp(t_logp, dim=-1, keepdim=True)
        s_logp = s_valid - torch.logsumexp(s_valid, dim=-1, keepdim=True)
        s_valid = torch.where(valid, s_logp, neg_inf)
    p = t_logp.exp()
    zero = torch.zeros_like(p)
    kl = torch.where(valid, p * (torch.where(valid, t_logp, zero) - torch.where(valid, s_logp, zero)), zero).sum(-1)
    if tail:
        t_tail = (targets.tail_logprob.float() if targets.tail_logprob is not None
                  else log1mexp(torch.logsumexp(t_logp, dim=-1)))
        s_tail = log1mexp(torch.logsumexp(s_valid, dim=-1))
        p_tail = t_tail.exp()
        kl = kl + torch.where(p_tail > 0, p_tail * (t_tail - s_tail), torch.zeros_like(p_tail))
    return kl


# -- download -----------------------------------------------------------------


def fetch_files(urls: dict[str, str], folder: Path, timeout: float, sampler_path: str) -> None:
    """Download each ``{relative path: signed url}`` into ``folder`` (paths stay inside it)."""
    root = folder.resolve()
    for rel, url in sorted(urls.items()):
        target = (root / rel).resolve()
        if root not in target.parents or re.search(r"(^|/)\.\.(/|$)", rel):
            raise BackendError(f"Tinker returned an adapter file path outside the folder: {rel!r}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(target, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
        except OSError as exc:
            raise BackendError(
                f"Downloading the adapter file {rel} failed ({exc}); the trained weights stay on "
                f"the service at {sampler_path}.") from None
