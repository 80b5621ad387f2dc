"""Rendering with the model's own chat template, and the alignment contract.

A trajectory is rendered twice: prompted = [system u, conversation, assistant y]
and unprompted = [conversation, assistant y], the latter exactly as a deployed
user would send it (template defaults included). Both renderings end with the
same response tokens y, closed by the end-of-turn token when y finished. Row j
of a model's logits predicts token j+1, so the row that predicts the first
response token is ``prefix_len - 1``; it is trained, and so is the end-of-turn
token (it teaches when to stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import AlignmentError, ConfigError
from ..core.tokenizers import require_chat_template
from ..core.types import PromptMixture, Query, Trajectory

_SENTINEL = "PROMPTBAKE-SENTINEL-7f3a"


def chat_ids(tokenizer: Any, messages: Sequence[dict[str, Any]], **kwargs: Any) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template."""
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kwargs)
    ids = out["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def template_kwargs(tokenizer: Any) -> dict[str, Any]:
    """Default template arguments: Qwen3-style thinking off where the template has the switch
    (the setting chat_template_kwargs, e.g. {"enable_thinking": true}, overrides them)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"enable_thinking": False} if "enable_thinking" in template else {}


def end_of_turn_id(tokenizer: Any, kwargs: dict[str, Any] | None = None) -> int:
    """The token that ends an assistant turn: the first special or added token the template
    puts after an assistant message's content, else the tokenizer's eos token.

    Not simply the first token after the content: Llama-2-style templates render
    ``' ' + content + ' ' + eos``, whose first token after the content is a space.
    """
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    kwargs = template_kwargs(tokenizer) if kwargs is None else kwargs
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    after = text[text.rfind(_SENTINEL) + len(_SENTINEL):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    marked = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    found = next((int(i) for i in ids if i in marked), None)
    if found is not None:
        return found
    if tokenizer.eos_token_id is None:
        raise ConfigError("Cannot tell where an assistant turn ends: the template puts no special token after "
                          "the reply and the tokenizer has no eos token.")
    return int(tokenizer.eos_token_id)


def accepts_system(tokenizer: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the template renders a system message (Gemma-2's raises; a template may also drop it)."""
    messages = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "hi"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception:  # noqa: BLE001 - jinja's TemplateError from raise_exception, or anything a template raises
        return False
    return _SENTINEL in text


def accepts_tools(tokenizer: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the template renders the tool schemas it is given."""
    name = _SENTINEL.replace("-", "_")
    tool = {"type": "function", "function": {"name": name, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[tool], tokenize=False,
                                             add_generation_prompt=True, **kwargs)
    except Exception:  # noqa: BLE001 - whatever a template raises
        return False
    return name in text


class Renderer:
    """Renders queries and responses for one tokenizer and one system prompt.

    Sampling stops at :attr:`stop_ids`: the end-of-turn token, the tokenizer's eos token
    and ``eos_ids`` (the model's generation_config lists more: Llama-3.1's <|eom_id|>,
    Qwen2.5's <|endoftext|>). A response that stops at any of them ends with the
    end-of-turn token, as the template renders a finished turn.
    """

    def __init__(self, tokenizer: Any, system_prompt: str, max_length: int = 1024, eos_ids: Sequence[int] = (),
                 chat_template_kwargs: dict[str, Any] | None = None):
        require_chat_template(tokenizer)
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.kwargs = {**template_kwargs(tokenizer), **(chat_template_kwargs or {})}
        # Without a system role (Gemma-2) the prompt opens the first user message, as Gemma-3's own
        # template does with a system message.
        self.system_role = accepts_system(tokenizer, self.kwargs)
        self._tools: bool | None = None  # whether the template renders tools, once asked
        self.eot_id = end_of_turn_id(tokenizer, self.kwargs)
        stop = {self.eot_id, *(int(i) for i in eos_ids)}
        if tokenizer.eos_token_id is not None:
            stop.add(int(tokenizer.eos_token_id))
        self.stop_ids = sorted(stop)

    def messages(self, query: Query, prompted: bool) -> list[dict[str, str]]:
        """The conversation sent to the model; the prompt is merged into any existing system turn,
        or, where the template has no system role, put before the first user message."""
        msgs = [dict(m) for m in query.messages]
        if prompted:
            if msgs and msgs[0]["role"] == "system":
                msgs[0]["content"] = self.system_prompt + "\n\n" + msgs[0]["content"]
            else:
                msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        if self.system_role or not msgs or msgs[0]["role"] != "system":
            return msgs
        system, rest = msgs[0]["content"], msgs[1:]
        first = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
        if first is None:
            raise ConfigError("This chat template has no system role and the conversation has no user message "
                              "to carry the system prompt.")
        rest[first] = {**rest[first], "content": system + "\n\n" + rest[first]["content"]}
        return rest

    def prefix(self, query: Query, prompted: bool) -> list[int]:
        """Token ids up to and including the assistant generation prompt."""
        return chat_ids(self.tokenizer, self.messages(query, prompted), add_generation_prompt=True,
                        **self._kwargs(query))

    def _kwargs(self, query: Query) -> dict[str, Any]:
        if query.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in query.messages):
            self.require_tools()
            return {**self.kwargs, "tools": list(query.tools) or None}
        return self.kwargs

    def require_tools(self) -> None:
        """Refuse a template that cannot render tools (checked once)."""
        if self._tools is None:
            self._tools = accepts_tools(self.tokenizer, self.kwargs)
        if not self._tools:
            raise ConfigError("The model's chat template does not render tools, so conversations with tool calls "
                              "or tool results cannot be rendered the way the model expects; use a model whose "
                              "template takes tools (Llama-3.1, Qwen2.5, Qwen3, Mistral, ...) or drop the tools.")

    def given(self, query: Query, message: dict[str, Any], sample: int = 0) -> Trajectory:
        """A trajectory whose response is an assistant ``message`` given in the data (a tool call,
        say) after the conversation ``query``: the tokens the template renders for it, up to and
        including its end of turn, on both sides."""
        sides = []
        for prompted in (True, False):
            prefix = self.prefix(query, prompted)
            whole = chat_ids(self.tokenizer, [*self.messages(query, prompted), message], **self._kwargs(query))
            if whole[: len(prefix)] != prefix:
                raise AlignmentError(f"Query '{query.id}': the chat template renders the conversation differently "
                                     f"once the given assistant message is appended, so its tokens cannot be "
                                     f"trained as a reply to it.")
            sides.append((prefix, whole[len(prefix):]))
        if sides[0][1] != sides[1][1]:
            raise AlignmentError(f"Query '{query.id}': the given assistant message renders differently with and "
                                 f"without the system prompt.")
        return self.trajectory(query, sides[0][1], sample, prefixes=(sides[0][0], sides[1][0]))

    def trajectory(
        self, query: Query, response_ids: Sequence[int], sample: int = 0,
        prefixes: tuple[list[int], list[int]] | None = None,
    ) -> Trajectory:
        """Pair a response with both renderings, applying the alignment contract.

        The response is cut after its first stop token (kept: it is trained).
        Truncation to ``max_length`` removes tokens from the end of the
        response, identically on both sides, so the longer rendering fits.
        """
        prompted, unprompted = prefixes or (self.prefix(query, True), self.prefix(query, False))
        response = list(response_ids)
        finished = False
        for i, tok in enumerate(response):
            if tok in self.stop_ids:
                response = response[: i] + [self.eot_id]
                finished = True
                break
        room = self.max_length - max(len(prompted), len(unprompted))
        if room < 1:
            side = "with the system prompt" if len(prompted) >= len(unprompted) else "without the system prompt"
            raise AlignmentError(
                f"Query '{query.id}' rendered {side} takes {max(len(prompted), len(unprompted))} tokens, which "
                f"leaves no room for a response within max_length={self.max_length}; raise "
                f"max_length or shorten the prompt."
            )
        if len(response) > room:
            response, finished = response[:room], False
        if not response:
            raise AlignmentError(f"Query '{query.id}' got an empty response.")
        traj = Trajectory(
            query_id=query.id, sample=sample,
            prompted_ids=prompted + response, unprompted_ids=unprompted + response,
            response_len=len(response), finished=finished,
            text=self.tokenizer.decode(response, skip_special_tokens=True),
        )
        check_alignment(traj)
        return traj

    def from_text(self, query: Query, text: str, sample: int = 0) -> Trajectory:
        """A trajectory from response text (datasets, hosted teachers): tokens plus end of turn."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.trajectory(query, [*ids, self.eot_id], sample)


def check_alignment(traj: Trajectory) -> None:
    """Assert the contract: both renderings end with the same response tokens."""
    r = traj.response_len
    if r < 1 or r > min(len(traj.prompted_ids), len(traj.unprompted_ids)):
        raise AlignmentError(f"Trajectory {traj.key}: response length {r} does not fit its renderings.")
    if traj.prompted_ids[-r:] != traj.unprompted_ids[-r:]:
        raise AlignmentError(
            f"Trajectory {traj.key}: the response tokens differ between the prompted and "
            f"unprompted renderings."
        )


class MixtureRenderer(Renderer):
    """The renderer of a mixture bake: the prompted side renders each query with the prompt of
    the mixture it was assigned (:meth:`assign`), so samples, scores, answers and the on-policy
    evaluation of a query all use the prompt it was baked with."""

    def __init__(self, tokenizer: Any, mixture: PromptMixture, max_length: int = 1024, eos_ids: Sequence[int] = (),
                 chat_template_kwargs: dict[str, Any] | None = None):
        super().__init__(tokenizer, mixture.text, max_length, eos_ids, chat_template_kwargs)
        self.mixture = mixture
        self.renderers = [Renderer(tokenizer, p, max_length, eos_ids, chat_template_kwargs) for p in mixture.prompts]
        self.assigned: dict[str, int] = {}
        self.counts: dict[str, list[int]] = {}  # queries per prompt, per split

    def assign(self, queries: Sequence[Query], seed: int, split: str) -> list[int]:
        """Each query's prompt (PromptMixture.assign), remembered for its later renderings."""
        assigned = self.mixture.assign(queries, seed)
        self.assigned.update((_query_key(q), a) for q, a in zip(queries, assigned))
        self.counts[split] = [assigned.count(i) for i in range(len(self.renderers))]
        return assigned

    def messages(self, query: Query, prompted: bool) -> list[dict[str, str]]:
        if not prompted:
            return super().messages(query, False)
        try:
            i = self.assigned[_query_key(query)]
        except KeyError:
            raise ConfigError(f"Query '{query.id}' was not assigned a prompt of the mixture.") from None
        return self.renderers[i].messages(query, True)


def _query_key(query: Query) -> str:
    import json

    return json.dumps([query.id, list(query.messages)], sort_keys=True)


def make_renderer(tokenizer: Any, prompt: str | PromptMixture, max_length: int, eos_ids: Sequence[int] = (),
                  chat_template_kwargs: dict[str, Any] | None = None) -> Renderer:
    """The renderer of a bake's prompt: one system prompt, or a mixture of them."""
    if isinstance(prompt, PromptMixture):
        return MixtureRenderer(tokenizer, prompt, max_length, eos_ids, chat_template_kwargs)
    return Renderer(tokenizer, prompt, max_length, eos_ids, chat_template_kwargs)
