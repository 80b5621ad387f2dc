"""A local stand-in for the Tinker service, backed by a tiny transformers model.

Duck-typed ServiceClient / TrainingClient / SamplingClient / RestClient that
take and return the REAL tinker types (ModelInput, Datum, TensorData,
SamplingParams, SampleResponse, ForwardBackwardOutput, AdamParams, ...).
``forward_backward_custom`` runs the SDK's own client-side conversion
(``TrainingClient._compute_custom_loss``: logprobs as leaves, loss.backward,
weights = -grad) and then a cross_entropy forward_backward, as 0.38 does.
"""

from __future__ import annotations

import concurrent.futures
import copy
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tinker
import torch
from tinker import types
from tinker.lib.public_interfaces.training_client import TrainingClient
from tinker.types.topk_logprobs import TopkLogprobs


class Done:
    """A finished future: ``.result(timeout=...)`` as tinker.APIFuture."""

    def __init__(self, value: Any):
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class Failed:
    """A future that raises ``error``."""

    def __init__(self, error: BaseException):
        self.error = error

    def result(self, timeout: float | None = None) -> Any:
        raise self.error


class Hung:
    """A future that never completes (the SDK's silent hang)."""

    def result(self, timeout: float | None = None) -> Any:
        return concurrent.futures.Future().result(timeout=timeout)


def _ids(model_input: tinker.ModelInput) -> torch.Tensor:
    return torch.tensor([model_input.to_ints()], dtype=torch.long)


class FakeSampling:
    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.calls: list[dict[str, Any]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    @torch.no_grad()
    def sample(self, prompt: tinker.ModelInput, num_samples: int, sampling_params: tinker.SamplingParams,
               include_prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0, **_: Any) -> Done:
        assert isinstance(prompt, tinker.ModelInput) and isinstance(sampling_params, tinker.SamplingParams)
        self.calls.append({"n": num_samples, "topk": topk_prompt_logprobs, "len": prompt.length})
        ids = _ids(prompt)
        topk = None
        if topk_prompt_logprobs:
            assert include_prompt_logprobs and topk_prompt_logprobs <= 20
            lp = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
            v, i = lp.topk(topk_prompt_logprobs, dim=-1)  # row j: distribution of token j+1
            tid = np.zeros((ids.shape[1], topk_prompt_logprobs), dtype=np.int32)
            tlp = np.full((ids.shape[1], topk_prompt_logprobs), -99999.0, dtype=np.float32)
            tid[1:], tlp[1:] = i[:-1].numpy(), v[:-1].numpy()  # entry 0 is empty (None)
            topk = TopkLogprobs(token_ids=tid, logprobs=tlp)
        stop = list(sampling_params.stop or []) or [self.tokenizer.eos_token_id]
        seqs = []
        for s in range(num_samples):
            torch.manual_seed((sampling_params.seed or 0) * 31 + s)
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=sampling_params.temperature, top_p=sampling_params.top_p, top_k=0,
                max_new_tokens=sampling_params.max_tokens or 16, eos_token_id=stop,
                pad_token_id=self.tokenizer.pad_token_id or 0,
            )[0, ids.shape[1]:].tolist()
            cut = next((j for j, t in enumerate(out) if t in stop), None)
            tokens = out if cut is None else out[: cut + 1]  # the stop token is returned, as the cookbook expects
            seqs.append(types.SampledSequence(stop_reason="length" if cut is None else "stop",
                                              sequence_id=f"s{s}", tokens_np=np.array(tokens, dtype=np.int64)))
        return Done(types.SampleResponse(sequences=seqs, topk_prompt_logprobs_np=topk))


class FakeTraining:
    """LoRA on a copy of the tiny model; AdamW steps with the AdamParams sent."""

    def __init__(self, model: Any, tokenizer: Any, rank: int, folder: Path, seed: int | None = None,
                 states: dict[str, Any] | None = None):
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng():  # the service seeds the LoRA initialisation with ``seed``
            torch.manual_seed(seed or 0)
            self.model = get_peft_model(copy.deepcopy(model),
                                        LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear"))
        self.base, self.rank = model, rank
        self.tokenizer = tokenizer
        self.folder = folder
        self.states = {} if states is None else states  # the service's saved training states, by path
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer: torch.optim.Optimizer | None = None
        self.requests: list[tuple[str, int]] = []  # (kind, datums) per request sent
        self.last_grads: list[torch.Tensor] | None = None
        self.hang = False

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def _run(self, data: list[tinker.Datum], loss_fn: str, backward: bool) -> types.ForwardBackwardOutput:
        assert loss_fn == "cross_entropy"
        self.requests.append(("forward_backward" if backward else "forward", len(data)))
        outputs, total = [], 0.0
        with torch.set_grad_enabled(backward):
            for d in data:
                assert isinstance(d, tinker.Datum)
                tt = d.loss_fn_inputs["target_tokens"].to_torch().long()
                w = d.loss_fn_inputs["weights"].to_torch().float()
                assert tt.shape == w.shape and tt.shape[0] == d.model_input.length
                lp_all = torch.log_softmax(self.model(input_ids=_ids(d.model_input)).logits[0].float(), dim=-1)
                lp = lp_all.gather(-1, tt.unsqueeze(-1) if tt.dim() == 1 else tt)
                lp = lp.squeeze(-1) if tt.dim() == 1 else lp
                loss = (-lp * w).sum()
                if backward:
                    loss.backward()
                total += float(loss.detach())
                outputs.append({"logprobs": types.TensorData.from_torch(lp.detach())})
        return types.ForwardBackwardOutput("ArrayRecord", outputs, {"loss:sum": total})

    def forward(self, data, loss_fn, loss_fn_config=None):  # type: ignore[no-untyped-def]
        return Done(self._run(data, loss_fn, False))

    def forward_backward(self, data, loss_fn, loss_fn_config=None):  # type: ignore[no-untyped-def]
        if self.hang:
            return Hung()
        return Done(self._run(data, loss_fn, True))

    def forward_backward_custom(self, data, loss_fn):  # type: ignore[no-untyped-def]
        # The SDK's steps: a forward with zero weights, the user's loss on leaf logprobs,
        # then a cross_entropy forward_backward with weights = -dLoss/dlogprobs.
        fwd = [tinker.Datum(model_input=d.model_input,
                            loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"],
                                            "weights": np.zeros(d.loss_fn_inputs["target_tokens"].shape, np.float32)})
               for d in data]
        custom = TrainingClient._compute_custom_loss(data, loss_fn, self._run(fwd, "cross_entropy", False))
        out = self._run(custom.data, "cross_entropy", True)
        out.metrics["surrogate_loss:sum"] = out.metrics.pop("loss:sum")
        out.metrics.update(custom.metrics)
        out.metrics["loss:sum"] = custom.loss_sum
        return Done(out)

    def optim_step(self, optim_params: types.AdamParams | None = None, *, adam_params=None):  # type: ignore[no-untyped-def]
        a = optim_params or adam_params
        assert isinstance(a, types.AdamParams)
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.params, lr=a.learning_rate, betas=(a.beta1, a.beta2),
                                               eps=a.eps, weight_decay=a.weight_decay)
        for g in self.optimizer.param_groups:
            g.update(lr=a.learning_rate, betas=(a.beta1, a.beta2), eps=a.eps, weight_decay=a.weight_decay)
        self.last_grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if a.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, a.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.requests.append(("optim_step", 0))
        return Done(types.OptimStepResponse(metrics={}))

    def save_state(self, name, ttl_seconds=None, overwrite=False, user_metadata=None):  # type: ignore[no-untyped-def]
        path = f"tinker://fake:train:0/weights/{name}"
        assert path not in self.states or overwrite
        self.states[path] = {"lora": copy.deepcopy({k: v for k, v in self.model.state_dict().items() if "lora_" in k}),
                             "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None,
                             "ttl_seconds": ttl_seconds}
        return Done(types.SaveWeightsResponse(path=path))

    def restored(self, state: dict[str, Any]) -> FakeTraining:
        """A new client with this one's base, holding ``state``'s weights and Adam moments."""
        fresh = FakeTraining(self.base, self.tokenizer, self.rank, self.folder, states=self.states)
        fresh.model.load_state_dict(state["lora"], strict=False)
        if state["optimizer"] is not None:
            fresh.optimizer = torch.optim.AdamW(fresh.params)
            fresh.optimizer.load_state_dict(state["optimizer"])
        return fresh

    def save_weights_for_sampler(self, name, ttl_seconds=None, user_metadata=None):  # type: ignore[no-untyped-def]
        return Done(types.SaveWeightsForSamplerResponse(path=f"tinker://fake:train:0/sampler_weights/{name}"))

    def save_weights_external(self, name, ttl_seconds=None):  # type: ignore[no-untyped-def]
        out = self.folder / "external" / name
        self.model.save_pretrained(str(out), save_embedding_layers=False)
        return Done(types.SaveWeightsExternalResponse(path=f"tinker://fake:train:0/external_weights/{name}"))


class FakeRest:
    def __init__(self, folder: Path):
        self.folder = folder

    def get_external_weights_urls(self, tinker_path: str) -> Done:
        src = self.folder / "external" / tinker_path.rsplit("/", 1)[-1]
        urls = {p.relative_to(src).as_posix(): p.resolve().as_uri() for p in src.rglob("*") if p.is_file()}
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return Done(types.ExternalWeightsUrlsResponse(urls=urls, expires=expires))


class FakeService:
    """``tinker.ServiceClient`` stand-in: ``models`` maps a base model name to (model, tokenizer)."""

    def __init__(self, models: dict[str, tuple[Any, Any]], folder: Path):
        self.models = models
        self.folder = folder
        self.trainings: list[FakeTraining] = []
        self.samplers: list[FakeSampling] = []
        self.states: dict[str, Any] = {}

    def create_lora_training_client(self, base_model: str, rank: int = 32, seed: int | None = None,
                                    train_mlp: bool = True, train_attn: bool = True, train_unembed: bool = True,
                                    user_metadata=None, optimizer=None) -> Done:  # type: ignore[no-untyped-def]
        model, tok = self.models[base_model]
        self.trainings.append(FakeTraining(model, tok, rank, self.folder, seed=seed, states=self.states))
        return Done(self.trainings[-1])  # 0.38: a future of the client

    def create_training_client_from_state_with_optimizer(self, path: str, base_model: str | None = None,
                                                         user_metadata=None, weights_access_token=None) -> Done:  # type: ignore[no-untyped-def]
        if path not in self.states:
            return Failed(tinker.TinkerError(f"checkpoint {path} not found"))
        self.trainings.append(self.trainings[0].restored(self.states[path]))
        return Done(self.trainings[-1])

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None,
                               retry_config=None) -> Done:  # type: ignore[no-untyped-def]
        assert base_model is not None
        model, tok = self.models[base_model]
        self.samplers.append(FakeSampling(model, tok))
        return Done(self.samplers[-1])

    def create_rest_client(self) -> FakeRest:
        return FakeRest(self.folder)
