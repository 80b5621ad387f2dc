"""Stand-ins for vLLM's structures, filled with a tiny HF model's real log-probabilities.

The shapes follow vLLM's own definitions (``vllm/logprobs.py``,
``vllm/outputs.py``, ``vllm/sampling_params.py`` and the OpenAI-compatible
server's ``/v1/completions``), so the plugin reads here exactly what it reads
from a real engine or server:

* a position's dict holds the actual token first, then the top-K in rank order
  (``append_logprobs_for_next_position``), so K+1 keys when the actual token is
  outside the top-K and K keys otherwise; prompt entry 0 is None;
* ``FlatLogprobs`` keeps the same order in flat lists, the actual token repeated
  when it is in the top-K, position 0 an empty range;
* the server writes dict keys as strings, ``Logprob`` as a JSON object and
  -inf as -9999.0; with ``return_tokens_as_token_ids`` tokens are "token_id:N".
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from promptbake.builtin import models
from promptbake.core.config import BakeConfig
from promptbake.core.types import Query, Trajectory
from promptbake.stages.render import Renderer

PROMPT = "You are a pirate. Answer in one line. " * 3


def bake_config(spec: str, **kw: Any) -> BakeConfig:
    """Settings for a teacher's setup on a tiny model."""
    return BakeConfig(prompt=PROMPT, model=spec, device="cpu", progress=False, **kw)


def trajectories(spec: str, n: int = 4) -> tuple[list[Trajectory], Renderer]:
    """n rendered trajectories of fixed responses on the tiny model ``spec``, and their renderer."""
    tok = models.load(spec, "auto", "cpu").tokenizer
    r = Renderer(tok, PROMPT)
    texts = ["Arr.", "Ahoy there, matey, the sea is wide!", "Yo ho.", "Plants need sun and water."]
    return [r.from_text(Query(f"q{i}", ({"role": "user", "content": f"Question number {i}?"},)), texts[i % 4], i)
            for i in range(n)], r


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FlatLogprobs:
    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    decoded_tokens: list[str | None] = field(default_factory=list)

    def append_position(self, ids: list[int], lps: list[float], ranks: list[int]) -> None:
        self.start_indices.append(len(self.logprobs))
        for tok, lp, rank in zip(ids, lps, ranks):
            self.token_ids.append(tok)
            self.logprobs.append(lp)
            self.ranks.append(rank)
            self.decoded_tokens.append(None)
        self.end_indices.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start_indices)


def position(lp_row: torch.Tensor, actual: int, k: int) -> tuple[list[int], list[float], list[int]]:
    """vLLM's layout for one position: the actual token with its rank, then ranks 1..K."""
    values, idx = lp_row.topk(k)
    rank = int((lp_row > lp_row[actual]).sum()) + 1
    return [actual, *idx.tolist()], [float(lp_row[actual]), *values.tolist()], [rank, *range(1, k + 1)]


def as_dict(ids: list[int], lps: list[float], ranks: list[int]) -> dict[int, Logprob]:
    return {tok: Logprob(lp, rank, f"<{tok}>") for tok, lp, rank in zip(ids, lps, ranks)}


def logprob_rows(logprobs: torch.Tensor, tokens: list[int], k: int, flat: bool, first_none: bool) -> Any:
    """Rows of ``logprobs`` [N, V] as vLLM reports them, each with its actual token."""
    out: Any = FlatLogprobs() if flat else []
    if first_none:
        out.append_position([], [], []) if flat else out.append(None)
    for row, tok in zip(logprobs, tokens):
        ids, lps, ranks = position(row, tok, k)
        out.append_position(ids, lps, ranks) if flat else out.append(as_dict(ids, lps, ranks))
    return out


def prompt_logprobs(model: Any, ids: list[int], k: int, flat: bool = False) -> Any:
    """``RequestOutput.prompt_logprobs`` for ``ids``: None, then one entry per later position."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return logprob_rows(lp[:-1], ids[1:], k, flat, first_none=True)


def server_json(rows: Any) -> Any:
    """Prompt log-probs as vLLM's server serializes them."""
    out = []
    for entry in rows:
        if entry is None:
            out.append(None)
            continue
        out.append({str(tok): {"logprob": max(v.logprob, -9999.0), "rank": v.rank, "decoded_token": v.decoded_token}
                    for tok, v in entry.items()})
    return out


def sample(model: Any, ids: list[int], *, n: int, seed: int, temperature: float, max_tokens: int,
           min_tokens: int, stop_ids: list[int], logprobs_k: int | None = None,
           flat: bool = False) -> list[dict[str, Any]]:
    """n samples like vLLM's: stop token kept, finish_reason/stop_reason set, child j seeded seed + j."""
    out = []
    for j in range(n):
        gen = torch.Generator().manual_seed(seed + j)
        tokens: list[int] = []
        rows = []
        finish, stop_reason = "length", None
        for _ in range(max_tokens):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + tokens])).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            rows.append(lp)
            scaled = logits / temperature if temperature > 0 else logits.clone()
            if len(tokens) < min_tokens:
                scaled[stop_ids] = -math.inf
            if temperature == 0:  # vLLM: temperature 0 is greedy decoding
                tok = int(scaled.argmax())
            else:
                tok = int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=gen))
            tokens.append(tok)
            if tok in stop_ids:
                finish, stop_reason = "stop", tok
                break
        logprobs = logprob_rows(torch.stack(rows), tokens, logprobs_k, flat, False) if logprobs_k else None
        out.append({"index": j, "token_ids": tokens, "finish_reason": finish, "stop_reason": stop_reason,
                    "logprobs": logprobs})
    return out


# -- a fake ``vllm`` module -------------------------------------------------------


@dataclass
class SamplingParams:
    """The SamplingParams fields the plugin uses (vllm/sampling_params.py)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    repetition_penalty: float = 1.0
    top_k: int = 0
    min_p: float = 0.0


# A SamplingParams from before flat_logprobs existed: the same fields less that one.
OldSamplingParams = dataclasses.make_dataclass(
    "OldSamplingParams",
    [(f.name, f.type, dataclasses.field(default=f.default)) for f in dataclasses.fields(SamplingParams)
     if f.name != "flat_logprobs"],
)


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None
    logprobs: Any = None
    text: str = ""


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]


class FakeLLM:
    """``vllm.LLM`` over a registered tiny model; records what it was asked."""

    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, model: str, **kwargs: Any):
        self.model_name = model
        self.kwargs = kwargs
        self.handle = models.load(model, "auto", "cpu")
        self.max_logprobs = kwargs.get("max_logprobs", 20)
        self.calls: list[tuple[list[dict[str, Any]], Any]] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self.handle.tokenizer

    def generate(self, prompts: list[dict[str, Any]], sampling_params: Any = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        self.calls.append((prompts, sampling_params))
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        return [self._one(p["prompt_token_ids"], sp) for p, sp in zip(prompts, params)]

    def _one(self, ids: list[int], sp: Any) -> RequestOutput:
        model = self.handle.model
        flat = getattr(sp, "flat_logprobs", False)
        for kind, k in (("prompt", sp.prompt_logprobs), ("sample", sp.logprobs)):
            if k is not None and k > self.max_logprobs:  # vLLM's own check and message
                raise ValueError(f"Requested {kind} logprobs of {k}, which is greater than max allowed: {self.max_logprobs}")
        pl = prompt_logprobs(model, ids, sp.prompt_logprobs, flat) if sp.prompt_logprobs is not None else None
        samples = sample(model, ids, n=sp.n, seed=sp.seed or 0, temperature=sp.temperature,
                         max_tokens=sp.max_tokens, min_tokens=sp.min_tokens, stop_ids=list(sp.stop_token_ids or []),
                         logprobs_k=sp.logprobs, flat=flat)
        return RequestOutput(ids, pl, [CompletionOutput(**s) for s in samples])


def fake_vllm_module(flat: bool = True) -> types.ModuleType:
    """A module that stands in for ``vllm`` (put it in sys.modules)."""
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams if flat else OldSamplingParams  # type: ignore[attr-defined]
    return module


def install(monkeypatch: Any, flat: bool = True) -> types.ModuleType:
    module = fake_vllm_module(flat)
    FakeLLM.instances.clear()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


# -- a fake ``vllm serve`` ---------------------------------------------------------


class FakeServer:
    """``vllm serve``'s /v1/models and /v1/completions over a tiny model, as an httpx handler.

    ``fail`` is a list of HTTP statuses returned (in order) before real answers;
    ``token_ids=False`` answers like servers without return_token_ids.
    """

    def __init__(self, httpx: Any, model_name: str, *, max_logprobs: int = 20, token_ids: bool = True,
                 api_key: str | None = None, fail: list[int] | None = None, bad_token: str | None = None):
        self.httpx = httpx
        self.model_name = model_name
        self.handle = models.load(model_name, "auto", "cpu")
        self.max_logprobs = max_logprobs
        self.token_ids = token_ids
        self.api_key = api_key
        self.fail = list(fail or [])
        self.bad_token = bad_token
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def transport(self) -> Any:
        return self.httpx.MockTransport(self.handle_request)

    def _error(self, status: int, message: str, kind: str = "BadRequestError") -> Any:
        return self.httpx.Response(status, json={"error": {"message": message, "type": kind, "param": None,
                                                           "code": status}},
                                   headers={"retry-after-ms": "1"})

    def handle_request(self, request: Any) -> Any:
        self.headers.append(dict(request.headers))
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self.httpx.Response(401, json={"error": "Unauthorized"})
        if self.fail:
            return self._error(self.fail.pop(0), "overloaded", "ServiceUnavailableError")
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            return self.httpx.Response(200, json={"object": "list", "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "vllm"}]})
        body = json.loads(request.content)
        self.requests.append(body)
        if body["model"] != self.model_name:
            return self._error(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
        k = body.get("prompt_logprobs")
        if k is not None and k > self.max_logprobs:
            return self._error(400, f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                                    f"{self.max_logprobs}")
        ids = body["prompt"]
        model = self.handle.model
        if k is not None:
            rows = prompt_logprobs(model, ids, k)
            choices = [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length", "stop_reason": None,
                        "prompt_logprobs": server_json(rows)}]
        else:
            samples = sample(model, ids, n=body.get("n", 1), seed=body.get("seed") or 0,
                             temperature=body["temperature"], max_tokens=body["max_tokens"],
                             min_tokens=body.get("min_tokens", 0), stop_ids=body.get("stop_token_ids") or [])
            choices = []
            for s in samples:
                tokens = [self.bad_token or f"token_id:{t}" for t in s["token_ids"]]
                choice = {"index": s["index"], "text": "...", "finish_reason": s["finish_reason"],
                          "stop_reason": s["stop_reason"], "prompt_logprobs": None,
                          "logprobs": {"text_offset": list(range(len(tokens))), "tokens": tokens,
                                       "token_logprobs": [-1.0] * len(tokens), "top_logprobs": None}}
                if self.token_ids and body.get("return_token_ids"):
                    choice["token_ids"] = s["token_ids"]
                choices.append(choice)
        return self.httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": self.model_name,
            "choices": choices, "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": 1},
        })


def httpx_module() -> Any:
    """The httpx the installed openai client uses (httpx2 for openai >= 3, else httpx)."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        import httpx

        return httpx
