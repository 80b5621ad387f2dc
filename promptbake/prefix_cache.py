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
from collections.abc import Iterator, Sequence
from typing import Any

import torch

ATTENTION_NAME = "promptbake_shared_prefix"
PREFIX_KWARG = "promptbake_prefix"
# Architectures whose attention is plain scaled dot-product over (RoPE'd) keys with a
# causal mask, so a separate prefix part merges exactly. Others (sliding windows,
# soft-capping, attention sinks, ALiBi) keep the expanded cache.
SHARED_PREFIX_MODELS = {"llama", "qwen2", "qwen3", "mistral"}
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
                if keep < len(self.ids):  # only ever shrinks towards the truly shared part
                    self.cache.crop(keep - len(self.ids))  # negative: tokens to drop (all versions)
                    self.ids = self.ids[:keep]
                return keep
        if shared < min_len:
            return 0
        ids = torch.tensor([seqs[0][:shared]], dtype=torch.long, device=device)
        with torch.no_grad():  # a prefix cache serves scoring and sampling only
            self.cache = model(input_ids=ids, use_cache=True).past_key_values
        self.ids = list(seqs[0][:shared])
        return shared

    def expand(self, batch: int) -> Any:
        """A copy of the cache repeated ``batch`` times, for ``generate`` and plain forwards."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache

    def layer(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [1, kv_heads, prefix, head_dim] of decoder layer ``idx``."""
        entry = self.cache.layers[idx]
        return entry.keys, entry.values


def unwrapped(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_shared_prefix(model: Any) -> bool:
    """Whether ``model`` (a transformers causal LM, possibly inside PEFT) can score with
    shared-prefix attention."""
    config = getattr(unwrapped(model), "config", None)
    if config is None or getattr(config, "model_type", None) not in SHARED_PREFIX_MODELS:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


@contextlib.contextmanager
def shared_prefix_attention(model: Any) -> Iterator[None]:
    """Route the model's attention through :func:`shared_prefix_forward` inside the block."""
    _register()
    config = unwrapped(model).config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


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


def _register() -> None:
    from transformers import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, shared_prefix_forward)
