"""The ``openai`` teacher: any OpenAI-compatible chat endpoint, through the official client.

What a hosted API can give a bake (see docs/hosted.md):

* samples from the prompted model, with ``logprobs`` and up to 20
  ``top_logprobs`` per generated token, so ``topk_kl`` (K <= 20) and ``ce``
  work on its own samples;
* no teacher-forced scoring of other text, no full vocabulary: ``full_kl`` is
  refused, and held-out evaluation uses the teacher's own held-out samples.

Tokens come back as text; they are mapped to the student's ids (tokenmap.py).
Requests run ``concurrency`` at a time per endpoint; the openai client retries
408/409/429, 5xx, timeouts and connection errors with exponential backoff.
``base_url`` may list several endpoints of one model: requests are spread over
them, and the work of one that stops answering moves to the others
(``promptbake.EndpointPool``). Every completed response is appended to a cache
on disk first, so a re-run resumes for free.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from promptbake import (
    BackendError,
    BakeConfig,
    CapabilityError,
    ConfigError,
    Endpoint,
    EndpointDown,
    EndpointPool,
    MissingDependencyError,
    Prefix,
    Sample,
    SamplingConfig,
    Teacher,
    TeacherCapabilities,
    endpoint_urls,
    http_failure,
    progress,
    server_detail,
)

from .responses import ResponseCache, default_cache_dir, request_key
from .tokenmap import Mapped, Piece, TokenMap

log = logging.getLogger("promptbake")

# Below these shares the teacher's tokens are not the student's vocabulary.
MIN_ENTRY_MAP_RATE = 0.97
MIN_ENTRIES_TO_JUDGE = 50


class OpenAITeacher(Teacher):
    """A prompted model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Options (``teacher_options``):
        model: the endpoint's model name (default: ``teacher_model``, then ``model``).
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (default: OpenAI's), or a list of
            roots serving the same model: requests are spread over them, and an endpoint that stops
            answering (its retries spent) hands its work to the others.
        api_key_env: the environment variable holding the key (default ``OPENAI_API_KEY``), the
            same for every endpoint. Loopback endpoints need no key.
        concurrency: requests in flight at once, per endpoint (default 8).
        max_retries, timeout: passed to the openai client (defaults 6 and 120 s).
        cache_dir: where completed responses are kept (default ``~/.cache/promptbake/responses``).
        tokenizer: ``"student"`` to declare the teacher uses the student's tokenizer, or an
            HF name/path of the teacher's tokenizer; unset, a KL loss checks the mapping rate.
        extra_body: more JSON fields for every request.
    """

    name = "openai"
    capabilities = TeacherCapabilities(
        can_generate=True, can_score=False, max_top_k=20, full_logits=False, token_ids=False,
        sample_logprobs=True,
    )
    default_base_url: str | None = None
    default_key_env = "OPENAI_API_KEY"

    def __init__(self, model: str | None = None, base_url: str | Sequence[str] | None = None,
                 api_key_env: str | None = None,
                 concurrency: int = 8, max_retries: int = 6, timeout: float = 120.0,
                 cache_dir: str | None = None, tokenizer: str | None = None,
                 extra_body: dict[str, Any] | None = None, http_client: Any = None):
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"teacher option concurrency must be a positive integer, got {concurrency!r}.")
        self.model_name = model
        base_url = self.default_base_url if base_url in (None, "") else base_url  # [] is refused below
        self.base_urls: list[str | None] = [None] if base_url is None else list(endpoint_urls(base_url))
        self.base_url = self.base_urls[0]  # None: the openai client's default (OpenAI's API)
        self.api_key_env = api_key_env or self.default_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.cache_dir = cache_dir
        self.tokenizer_spec = tokenizer
        self.extra_body = dict(extra_body or {})
        self.http_client = http_client  # tests inject an httpx client with a mock transport
        self.client: Any = None  # the first endpoint's
        self.pool: EndpointPool[Any] | None = None
        self.cache: ResponseCache | None = None
        self.tokenmap: TokenMap | None = None
        self._tokenizer: Any = None
        self.show_progress = True
        self.stats: dict[str, int] = {}

    # -- setup ---------------------------------------------------------------

    def check(self, config: BakeConfig) -> None:
        """The model name and the key, before any weights load or request goes out."""
        self.model_name = self.model_name or self._default_model(config)
        self._api_key()

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if not all(_is_loopback(url) for url in self.base_urls):
            raise ConfigError(
                f"Teacher '{self.name}' needs an API key in the environment variable "
                f"{self.api_key_env}, which is not set; export it (keys are read from the "
                f"environment only), or name another variable with teacher_options.api_key_env.")
        return "not-needed"  # a local server does not check it

    def setup(self, config: BakeConfig) -> None:
        try:
            import openai
        except ImportError:
            raise MissingDependencyError(
                f"Teacher '{self.name}' needs the openai package; run: pip install promptbake-openai") from None
        self.check(config)
        key = self._api_key()
        clients = [openai.OpenAI(
            api_key=key, base_url=url, max_retries=self.max_retries, timeout=self.timeout,
            default_headers=self.headers() or None, http_client=self.http_client,
        ) for url in self.base_urls]
        self.client = clients[0]
        self.pool = EndpointPool([(str(c.base_url), c) for c in clients], self.concurrency, error=BackendError)
        if len(clients) > 1:
            self._check_models()
        self.cache = ResponseCache(Path(self.cache_dir) if self.cache_dir else default_cache_dir())
        self.show_progress = config.progress
        if self.tokenizer_spec not in (None, "student"):
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_spec)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"Cannot load the teacher tokenizer '{self.tokenizer_spec}': "
                                  f"{str(exc).splitlines()[0]}") from None

    def _default_model(self, config: BakeConfig) -> str:
        return config.teacher_model or config.model

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for every request (attribution for OpenRouter)."""
        return {}

    def request_extra(self, sampling: SamplingConfig) -> dict[str, Any]:
        """Provider-specific JSON fields added to every request body."""
        return dict(self.extra_body)

    def use_student_tokenizer(self, tokenizer: Any) -> None:
        self.tokenmap = TokenMap(tokenizer)
        if self.tokenizer_spec == "student":
            self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any | None:
        """The teacher's declared tokenizer (None: undeclared, checked from its tokens)."""
        return self._tokenizer

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url) if self.client is not None else (self.base_url or "")

    def _check_models(self) -> None:
        """Several endpoints must serve one model: compare what each lists at ``/models``.

        An endpoint without ``/models`` is not compared; one that does not answer is dropped."""
        assert self.pool is not None
        served = {e.url: ids for e, ids in self.pool.each(self._served) if ids is not None}
        having = sum(self.model_name in ids for ids in served.values())
        # Some list the model and some do not; or none does (a server that answers any name) and
        # their listings differ.
        if (0 < having < len(served)) or (not having and len({frozenset(ids) for ids in served.values()}) > 1):
            listing = "; ".join(f"{url} lists {', '.join(ids) or 'none'}" for url, ids in served.items())
            raise ConfigError(f"The endpoints in teacher_options.base_url serve different models ({listing}); "
                              f"every one must serve model '{self.model_name}'.")

    def _served(self, endpoint: Endpoint[Any]) -> list[str] | None:
        """The model ids an endpoint lists, or None where it has no ``/models``."""
        import openai

        try:
            return [m.id for m in endpoint.client.models.list()]
        except openai.APIStatusError as exc:
            if http_failure(exc.status_code) == "retried":
                raise EndpointDown(self._status_sentence(exc, endpoint.url)) from None
            return None
        except openai.APIConnectionError:
            raise EndpointDown(self._unreachable(endpoint.url)) from None

    # -- generation ----------------------------------------------------------

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        if self.pool is None or self.cache is None or self.tokenmap is None:
            raise RuntimeError("OpenAITeacher.setup() and use_student_tokenizer() must be called first")
        bodies = [[self._body(p, sampling, j) for j in range(sampling.n)] for p in prefixes]
        responses: dict[str, dict[str, Any]] = {}
        todo: dict[str, dict[str, Any]] = {}
        for group in bodies:
            for body in group:
                key = request_key(self.endpoint, body)
                hit = self._cached(body)
                if hit is not None:
                    responses[key] = hit
                else:
                    todo[key] = body
        if todo:
            responses.update(self._fetch(todo, sampling.logprobs is not None))
        stop = sampling.stop_ids[0] if sampling.stop_ids else (self.tokenmap.tokenizer.eos_token_id or 0)
        samples: list[list[Sample]] = []
        mapped_all: list[Mapped] = []
        for group in bodies:
            row = []
            for body in group:
                mapped = self._map(responses[request_key(self.endpoint, body)], stop, sampling.logprobs is not None)
                mapped_all.append(mapped)
                row.append(Sample(token_ids=mapped.ids, finished=mapped.finished,
                                  targets=mapped.targets() if sampling.logprobs is not None else None,
                                  extra={"canonical": mapped.canonical, "excluded": mapped.excluded}))
            samples.append(row)
        self._report(mapped_all, sampling.logprobs is not None)
        return samples

    def score(self, trajectories: Sequence[Any], *, top_k: int | None, full: bool, side: str = "prompted") -> list[Any]:
        raise CapabilityError(
            f"Teacher '{self.name}' cannot score given text (hosted APIs return log-probs only for "
            f"their own samples); use loss topk_kl or ce on its samples.")

    def _body(self, prefix: Prefix, sampling: SamplingConfig, sample: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [dict(m) for m in prefix.messages],
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": _seed(sampling.seed, prefix.messages, sample),
        }
        if sampling.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = sampling.logprobs
        body.update(self.request_extra(sampling))
        return body

    def _cached(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """A kept response to this request from any of the endpoints (each is stored under its own)."""
        assert self.cache is not None and self.pool is not None
        for endpoint in self.pool.endpoints:
            hit = self.cache.get(request_key(endpoint.url, body))
            if hit is not None:
                return hit
        return None

    def _fetch(self, todo: dict[str, dict[str, Any]], want_logprobs: bool) -> dict[str, dict[str, Any]]:
        """Send the requests ``concurrency`` at a time per endpoint; each result is cached as it lands."""
        assert self.cache is not None and self.pool is not None
        keys, bodies = list(todo), list(todo.values())
        out: dict[str, dict[str, Any]] = {}
        answers = self.pool.run(lambda endpoint, body: self._request(endpoint, body, want_logprobs), bodies)
        for i, response, endpoint in progress(answers, f"generate ({self.name})", self.show_progress,
                                              total=len(bodies), unit="request", leave=False):
            out[keys[i]] = response
            self.cache.put(request_key(endpoint.url, bodies[i]), response)
        return out

    def _request(self, endpoint: Endpoint[Any], body: dict[str, Any], want_logprobs: bool) -> dict[str, Any]:
        import openai

        fields = {k: v for k, v in body.items() if k in _TOP_LEVEL}
        extra = {k: v for k, v in body.items() if k not in _TOP_LEVEL}
        url = endpoint.url
        try:
            completion = endpoint.client.chat.completions.create(**fields, extra_body=extra or None)
        except openai.APIStatusError as exc:
            # Statuses the client retries (408/409/429/5xx), still failing: the endpoint is down.
            error = EndpointDown if http_failure(exc.status_code) == "retried" else BackendError
            raise error(self._status_sentence(exc, url)) from None
        except openai.APIConnectionError:  # timeouts included
            raise EndpointDown(self._unreachable(url)) from None
        if not completion.choices:
            raise BackendError(f"{url} returned a completion with no choices for model '{self.model_name}'.")
        choice = completion.choices[0]
        content = choice.message.content or ""
        tokens = choice.logprobs.content if choice.logprobs is not None else None
        if want_logprobs and not tokens and content:
            raise CapabilityError(
                f"Model '{self.model_name}' at {url} returned no logprobs (the provider "
                f"ignores logprobs/top_logprobs); choose a model or provider that returns them, or use loss ce.")
        return {
            "content": content,
            "finish_reason": choice.finish_reason,
            "logprobs": None if not tokens else [
                [t.token, t.bytes, t.logprob, [[e.token, e.bytes, e.logprob] for e in (t.top_logprobs or [])]]
                for t in tokens
            ],
        }

    def _unreachable(self, url: str) -> str:
        return (f"Could not reach {url} after {self.max_retries} retries; check base_url and "
                f"the network (completed responses are kept, so a re-run resumes).")

    def _status_sentence(self, exc: Any, url: str) -> str:
        """One sentence for an HTTP error status (the wording is this backend's; the kinds are core's)."""
        code = exc.status_code
        detail = server_detail(getattr(exc, "body", None), getattr(exc, "message", "") or str(exc),
                               secret=os.environ.get(self.api_key_env))
        kind = http_failure(code)
        if kind == "key":
            return (f"{url} refused the API key from {self.api_key_env} (HTTP {code}); "
                    f"check that the key is valid for this endpoint.")
        if kind == "missing":
            return f"{url} has no model '{self.model_name}' (HTTP 404): {detail}."
        if kind == "retried":
            return (f"{url} kept failing after {self.max_retries} retries (HTTP {code}): {detail}; "
                    f"completed responses are kept, so a re-run resumes.")
        return f"{url} rejected the request (HTTP {code}): {detail}."

    # -- mapping -------------------------------------------------------------

    def _map(self, response: dict[str, Any], stop_id: int, want_logprobs: bool) -> Mapped:
        assert self.tokenmap is not None
        pieces = [
            Piece(token=t, bytes=_bytes(b), logprob=lp, top=[(et, _bytes(eb), elp) for et, eb, elp in top])
            for t, b, lp, top in (response.get("logprobs") or [])
        ]
        finished = response.get("finish_reason") == "stop"
        return self.tokenmap.map(pieces, response.get("content") or "", finished, stop_id, with_targets=want_logprobs)

    def _report(self, mapped: list[Mapped], want_logprobs: bool) -> None:
        """Say how many positions could not be mapped; refuse a foreign vocabulary for KL."""
        rows = sum(len(m.ids) for m in mapped)
        excluded = sum(m.excluded for m in mapped)
        entries = sum(m.entries for m in mapped)
        entries_mapped = sum(m.entries_mapped for m in mapped)
        self.stats = {"samples": len(mapped), "rows": rows, "excluded_rows": excluded,
                      "non_canonical_samples": sum(not m.canonical for m in mapped),
                      "entries": entries, "entries_mapped": entries_mapped}
        if not want_logprobs:
            return
        if self.tokenizer_spec is None and entries >= MIN_ENTRIES_TO_JUDGE \
                and entries_mapped / entries < MIN_ENTRY_MAP_RATE:
            raise CapabilityError(
                f"Only {entries_mapped / entries:.0%} of the top-K tokens teacher '{self.name}' returned "
                f"exist in the student's vocabulary, so it uses another tokenizer (a different model "
                f"family) and a KL loss cannot compare them token by token; use loss ce, or set "
                f"teacher_options.tokenizer='student' if they really share one.")
        if excluded:
            log.warning("Teacher '%s': %d of %d response positions (%.1f%%) could not be mapped to the "
                        "student's tokenizer and are excluded from the loss (%d of %d samples were not "
                        "the canonical tokenisation of their text).", self.name, excluded, rows,
                        100.0 * excluded / max(rows, 1), self.stats["non_canonical_samples"], len(mapped))


# Fields the openai client takes as keyword arguments; the rest go in extra_body.
_TOP_LEVEL = {"model", "messages", "max_tokens", "temperature", "top_p", "seed", "logprobs", "top_logprobs", "n"}


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def _seed(seed: int, messages: Sequence[dict[str, str]], sample: int) -> int:
    """A per-request seed: same query and sample index, same seed, run after run."""
    digest = hashlib.sha256(json.dumps([seed, list(messages), sample]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
