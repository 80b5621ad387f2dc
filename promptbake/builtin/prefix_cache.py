"""The system prompt's KV, computed once and shared by every batch (torch).

Two ways to use it:

- generation (and models without shared-prefix attention) gets an expanded copy
  of the cache per batch (:meth:`PrefixCache.expand`);
- scoring uses *shared-prefix attention* where the model allows it: each layer
  attends to the one cached prefix (batch dimension 1) and to the batch's own
  tokens separately, and the two softmax parts are merged exactly. Nothing of
  size batch x prompt is copied, so the prompt's cost per trajectory is only
  the attention arithmetic itself.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from . import hf_internals

ATTENTION_NAME = "promptbake_shared_prefix"
PREFIX_KWARG = "promptbake_prefix"
# Architectures whose attention is plain scaled dot-product over (RoPE'd) keys with a
# causal mask, so a separate prefix part merges exactly (each verified in the model-family
# matrix, tests/test_families.py). Others (sliding windows, soft-capping, attention sinks,
# ALiBi) keep the expanded cache. A model of these types is also checked once on a probe
# input (:func:`supports_shared_prefix`) before it is trusted.
SHARED_PREFIX_MODELS = {"llama", "qwen2", "qwen3", "mistral", "granite", "olmo2", "phi3", "smollm3"}
# torch's fused CPU attention kernel for the prefix part (tests turn it off to check the other path).
FUSED_CPU = True
SCORE_BLOCK = 1 << 26


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``seqs``."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in seqs):
            return i
    return n


class PrefixCache:
    """The KV cache of a token prefix that many sequences share (the rendered system prompt).

    Computed once; the prompt is never run through the model again (its tokens are
    still attended to).
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.cache: Any = None

    def usable(self, model: Any, seqs: Sequence[list[int]], limit: int, device: Any,
               min_len: int = 8) -> int:
        """Prepare a cached prefix for ``seqs`` (at most ``limit`` tokens); return its length."""
        shared = min(common_prefix(seqs), limit)
        if self.cache is not None:
            keep = common_prefix([self.ids[:shared], seqs[0][:shared]]) if shared else 0
            if keep >= min_len:
                if keep == len(self.ids):
                    return keep
                if not has_sliding_window(model):  # only ever shrinks towards the truly shared part
                    self.cache.crop(keep - len(self.ids))  # negative: tokens to drop (all versions)
                    self.ids = self.ids[:keep]
                    return keep
                shared = keep  # a sliding window's cache keeps no past to cut back to: computed again
        if shared < min_len:
            return 0
        ids = torch.tensor([seqs[0][:shared]], dtype=torch.long, device=device)
        with torch.no_grad():  # a prefix cache serves scoring and sampling only
            self.cache = hf_internals.output_cache(model(input_ids=ids, use_cache=True))
        self.ids = list(seqs[0][:shared])
        return shared

    def expand(self, batch: int) -> Any:
        """A copy of the cache repeated ``batch`` times, for ``generate`` and plain forwards."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache

    def layer(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [1, kv_heads, prefix, head_dim] of decoder layer ``idx``."""
        return hf_internals.cache_layer(self.cache, idx)


def unwrapped(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_shared_prefix(model: Any) -> bool:
    """Whether ``model`` (a transformers causal LM, possibly inside PEFT) can score with
    shared-prefix attention: an architecture of :data:`SHARED_PREFIX_MODELS` without a
    sliding window, on sdpa or eager attention, whose logits with a shared prefix equal its
    own on a probe input (checked once per model)."""
    base = unwrapped(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in SHARED_PREFIX_MODELS:
        return False
    if has_sliding_window(base):
        return False
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    if hf_internals.attn_implementation(base) not in ("sdpa", "eager"):
        return False
    if base not in _probed:
        _probed[base] = _matches_on_probe(base)
    return _probed[base]


def has_sliding_window(model: Any) -> bool:
    """Whether some layer of ``model`` attends over a sliding window (Mistral v0.1, Gemma, Phi-3)."""
    config = getattr(unwrapped(model), "config", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return any("sliding" in str(t) for t in layer_types)
    return bool(getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


_probed: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
PROBE_TOKENS = 8  # prefix and row length of the probe input


@torch.no_grad()
def _matches_on_probe(model: Any) -> bool:
    """Whether two rows after a shared 8-token prefix get the same logits from shared-prefix
    attention as from the model's own attention over the whole rows."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    n = PROBE_TOKENS
    ids = (torch.arange(3 * n) * 7 + 3) % vocab
    rows = torch.stack([ids[n: 2 * n], ids[2 * n:]])
    full = torch.cat([ids[:n].expand(2, -1), rows], 1)
    training = model.training
    model.eval()
    try:
        plain = model(input_ids=full.to(device)).logits[:, n:].float()
        prefix = PrefixCache()
        prefix.usable(model, full.tolist(), n, device, min_len=n)
        real = torch.ones(rows.shape, dtype=torch.bool, device=device)
        with shared_prefix_attention(model):
            shared = model(input_ids=rows.to(device), attention_mask=causal_mask(real),
                           position_ids=torch.arange(n, 2 * n, device=device).expand(2, -1),
                           **{PREFIX_KWARG: prefix}).logits.float()
    finally:
        model.train(training)
    return bool((plain - shared).abs().max() <= 1e-3 * (1 + plain.abs().max()))


@contextlib.contextmanager
def shared_prefix_attention(model: Any) -> Iterator[None]:
    """Route the model's attention through :func:`shared_prefix_forward` inside the block."""
    hf_internals.register_attention(ATTENTION_NAME, shared_prefix_forward)
    with hf_internals.attention(model, ATTENTION_NAME):
        yield


def causal_mask(real: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T] mask over a batch's own tokens from ``real`` [B, T] (True where a
    token is not padding): causal, and no padded keys."""
    width = real.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=real.device).tril()
    return (causal[None] & real[:, None, :])[:, None]


def shared_prefix_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of a batch's tokens to a shared prefix (batch 1) and to themselves, merged exactly.

    ``query`` is [B, H, T, D]; ``key``/``value`` are the batch's own [B, KV, T, D];
    the prefix's [1, KV, P, D] comes from ``kwargs[PREFIX_KWARG]``. Returns [B, T, H, D].
    """
    prefix: PrefixCache | None = kwargs.pop(PREFIX_KWARG, None)
    if prefix is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    pk, pv = prefix.layer(module.layer_idx)
    b, h, t, d = query.shape
    kv, s = key.shape[1], key.shape[2]  # S > T when decoding with a cache of the batch's own tokens
    g = h // kv
    scale = scaling if scaling is not None else d ** -0.5
    # Query heads grouped by the KV head they read (head i reads KV head i // g), with
    # batch and group folded into rows: one [KV, B*g*T] attention against the single prefix.
    q = query.reshape(b, kv, g, t, d).permute(1, 0, 2, 3, 4).reshape(kv, b * g * t, d)
    out_pre, lse_pre = prefix_attention(q, pk[0], pv[0], scale)
    # The batch's own tokens: small [KV, B, gT, T] scores under the causal/padding mask.
    s_own = torch.matmul(q.reshape(kv, b, g * t, d), key.permute(1, 0, 3, 2)).float().mul_(scale)
    if attention_mask is not None:
        allowed = attention_mask[:, 0].to(torch.bool)  # [B, T, S]
        allowed = allowed[None, :, None].expand(kv, b, g, t, s).reshape(kv, b, g * t, s)
        s_own = s_own.masked_fill(~allowed, float("-inf"))
    # Merge the two parts by their log-sum-exps (a padded query row has only the prefix part).
    lse = torch.logaddexp(lse_pre.view(kv, b, g * t), torch.logsumexp(s_own, -1))
    own = torch.matmul(torch.exp(s_own - lse[..., None]).to(value.dtype), value.permute(1, 0, 2, 3))
    out = out_pre.view(kv, b, g * t, d) * torch.exp(lse_pre.view(kv, b, g * t) - lse)[..., None].to(value.dtype)
    out = out + own
    # [KV, B, g, T, D] -> [B, T, KV, g, D] -> [B, T, H, D]
    return out.view(kv, b, g, t, d).permute(1, 3, 0, 2, 4).reshape(b, t, h, d), None


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention of rows ``q`` [KV, N, D] to ``k``/``v`` [KV, P, D]: the output
    [KV, N, D] and each row's log-sum-exp [KV, N] (float32).

    On CPU, torch's fused flash kernel (which returns the log-sum-exp) avoids writing
    the [N, P] scores to memory; elsewhere the scores are materialised.
    """
    fused = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if q.device.type == "cpu" and fused is not None and FUSED_CPU:
        out, lse = fused(q[None], k[None], v[None], scale=scale)
        return out[0], lse[0].float()
    # Row blocks keep the float32 scores near SCORE_BLOCK elements (256 MiB) at a time.
    step = max(1, SCORE_BLOCK // (k.shape[0] * k.shape[1]))
    outs, lses = [], []
    for rows in q.split(step, dim=1):
        s = torch.bmm(rows, k.transpose(1, 2)).float().mul_(scale)
        lse = torch.logsumexp(s, -1)
        outs.append(torch.bmm(s.sub_(lse[..., None]).exp_().to(v.dtype), v))
        lses.append(lse)
    return torch.cat(outs, 1), torch.cat(lses, 1)
