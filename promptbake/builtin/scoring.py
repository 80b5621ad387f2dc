"""Teacher-forced forward passes and turning logits into targets (torch).

Shared by the hf teacher and the peft student: both need the distribution at
every response position of a batch of trajectories, on one of the two sides.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ..core.interfaces import Side
from ..core.types import Targets, Trajectory
from . import hf_internals
from .prefix_cache import (
    PREFIX_KWARG,
    PrefixCache,
    causal_mask,
    shared_prefix_attention,
    supports_shared_prefix,
    unwrapped,
)


def _accepts(model: Any, name: str) -> bool:
    # A PEFT wrapper forwards extra keyword arguments to the model it wraps.
    try:
        return name in inspect.signature(unwrapped(model).forward).parameters
    except (TypeError, ValueError):
        return False


def response_logits(
    model: Any, trajectories: Sequence[Trajectory], side: Side, pad_id: int, device: Any,
    prefix: PrefixCache | None = None, hidden: bool = False, vocab: int | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Logits [N, V] at the rows that predict each response token, trajectory after trajectory.

    Sequences are right-padded; only the rows that predict response tokens go
    through the output layer, so prompts and padding cost no vocabulary-sized
    work. With ``prefix`` (no gradients), the shared leading tokens come from a
    KV cache computed once. With ``hidden=True`` the rows are final hidden
    states [N, H], for callers that apply the output layer in chunks. ``vocab``
    keeps the first ``vocab`` logits (the tokenizer's vocabulary: rows of the
    output layer past it are padding).
    """
    seqs = [t.prompted_ids if side == "prompted" else t.unprompted_ids for t in trajectories]
    lengths = [t.response_len for t in trajectories]
    # Row j predicts token j+1: response token i of a sequence of length L sits at
    # L - R + i, so it is predicted by row L - R - 1 + i.
    starts = [len(s) - r - 1 for s, r in zip(seqs, lengths)]
    shared, kwargs = 0, {}
    attention: Any = contextlib.nullcontext()
    if prefix is not None:
        shared = prefix.usable(model, seqs, limit=min(starts), device=device)
    rest = [s[shared:] for s in seqs]
    starts = [st - shared for st in starts]
    width = max(len(s) for s in rest)
    ids = torch.full((len(rest), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(rest):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    # Shared-prefix attention reads the one cached prompt; otherwise each row gets a copy.
    in_place = bool(shared) and prefix is not None and supports_shared_prefix(model)
    if in_place:
        real = torch.arange(width)[None, :] < torch.tensor([len(s) for s in rest])[:, None]  # right-padded
        mask = causal_mask(real.to(device))
        kwargs[PREFIX_KWARG] = prefix
        attention = shared_prefix_attention(model)
    else:
        mask = torch.zeros((len(rest), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, seq in enumerate(rest):
            mask[row, shared: shared + len(seq)] = 1
        if shared:
            kwargs.update(hf_internals.with_cache(model, prefix.expand(len(seqs))))  # type: ignore[union-attr]
    if shared:
        kwargs["position_ids"] = torch.arange(shared, shared + width, device=device).expand(len(rest), -1)
    # One gather for all rows: per-row slicing would make autograd zero-fill a
    # [B, T, V] gradient once per row in the backward pass.
    b_idx = torch.cat([torch.full((r,), b, dtype=torch.long) for b, r in enumerate(lengths)]).to(device)
    p_idx = torch.cat([torch.arange(s, s + r) for s, r in zip(starts, lengths)]).to(device)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
              "use_cache": bool(shared) and not in_place}
    split = split_head(model, vocab)
    with attention:
        if split is not None:  # hidden states of the response rows only, then the output layer
            decoder, head = split
            rows = decoder(**inputs, **kwargs).last_hidden_state[b_idx, p_idx]
            return (rows if hidden else head(rows)), lengths
        if hidden:
            raise ValueError("this model's output layer cannot be split from its decoder")
        offset = 0
        if _accepts(model, "logits_to_keep"):
            lo, hi = int(p_idx.min()), int(p_idx.max()) + 1
            kwargs["logits_to_keep"] = torch.arange(lo, hi, device=device)
            offset = lo
        return model(**inputs, **kwargs).logits[b_idx, p_idx - offset, :vocab], lengths


class VocabHead(torch.nn.Module):
    """An output layer cut to the first ``vocab`` logits: the tokenizer's vocabulary, past
    which a model's rows are padding (Qwen2.5-7B has 152,064 rows for 151,665 tokens)."""

    def __init__(self, layer: Any, vocab: int):
        super().__init__()
        self.layer = layer
        self.vocab = vocab

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden)[..., : self.vocab]


def output_rows(head: Any) -> int:
    """How many logits ``head`` gives."""
    if isinstance(head, VocabHead):
        return head.vocab
    return int(head.weight.shape[0])


def same_output_layer(a: Any, b: Any) -> bool:
    """Whether two output layers (cut to a vocabulary or not) are one module giving the same logits."""
    def layer(h: Any) -> Any:
        return h.layer if isinstance(h, VocabHead) else h

    return layer(a) is layer(b) and output_rows(a) == output_rows(b)


def split_head(model: Any, vocab: int | None = None) -> tuple[Any, Any] | None:
    """(decoder, output layer) of a causal LM, or None where the output layer applied to the
    decoder's last hidden states is not the model's logits.

    Lets scoring take only the response rows through the output layer, a student compute
    logits chunk by chunk, and a teacher hand over hidden states. Whether the split holds
    is not read off the config (Gemma soft-caps logits, Granite divides them by
    ``logits_scaling``, FalconH1 multiplies them, and others may do what no list names):
    it is checked once per model on a probe input against ``model(...).logits``. With
    ``vocab`` the layer is cut to the first ``vocab`` logits.
    """
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None  # a soft prefix is added in the PEFT wrapper's forward, which the decoder alone skips
    base = unwrapped(model)
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base or not hasattr(head, "weight"):
        return None
    if base not in _split_checked:
        _split_checked[base] = _split_matches(base, decoder, head)
    if not _split_checked[base]:
        return None
    if vocab is not None and vocab < head.weight.shape[0]:
        head = VocabHead(head, vocab)
    return decoder, head


_split_checked: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@torch.no_grad()
def _split_matches(model: Any, decoder: Any, head: Any) -> bool:
    """Whether ``head(decoder(ids))`` equals ``model(ids).logits`` on a short probe input."""
    device = head.weight.device
    ids = ((torch.arange(8) * 7 + 3) % head.weight.shape[0])[None].to(device)
    training = model.training
    model.eval()
    try:
        whole = model(input_ids=ids).logits.float()
        split = head(decoder(input_ids=ids).last_hidden_state).float()
    finally:
        model.train(training)
    # The same output layer on the same hidden states gives the same numbers (to rounding); a model
    # that soft-caps or scales its logits differs by far more, even where its logits are small.
    tolerance = 8 * torch.finfo(head.weight.dtype).eps * (1 + float(whole.abs().max()))
    return whole.shape == split.shape and bool((whole - split).abs().max() <= tolerance)


SCORE_ROWS = 256  # rows taken through the output layer and log-softmax at a time


def logits_to_targets(
    logits: torch.Tensor, lengths: Sequence[int], trajectories: Sequence[Trajectory],
    *, top_k: int | None, full: bool, head: Any = None,
) -> list[Targets]:
    """Split flattened logits per trajectory into top-K and/or full log-prob targets.

    With ``head``, ``logits`` are final hidden states and go through the output
    layer ``SCORE_ROWS`` rows at a time, so no [rows, V] float32 tensor larger
    than that lives besides the full targets asked for.
    """
    fields: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, logits.shape[0], SCORE_ROWS):
        chunk = logits[lo: lo + SCORE_ROWS]
        lp = torch.log_softmax((head(chunk) if head is not None else chunk).float(), dim=-1)
        if top_k:
            values, indices = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
            fields.setdefault("topk_ids", []).append(indices.to(torch.int32).cpu())
            fields.setdefault("topk_logprobs", []).append(values.cpu())
            # Mass outside the top-K, summed directly (1 - sum(p_k) is imprecise near 1).
            fields.setdefault("tail_logprob", []).append(
                torch.logsumexp(lp.scatter(-1, indices, float("-inf")), dim=-1).cpu())
        if full:
            fields.setdefault("full_logprobs", []).append(lp.cpu())
    per_trajectory = {name: torch.cat(parts).split(list(lengths)) for name, parts in fields.items()}
    return [Targets(sampled_ids=torch.tensor(traj.response_ids, dtype=torch.long),
                    **{name: parts[i] for name, parts in per_trajectory.items()})
            for i, traj in enumerate(trajectories)]


def score_targets(
    model: Any, trajectories: Sequence[Trajectory], side: Side, pad_id: int, device: Any,
    *, top_k: int | None, full: bool, prefix: PrefixCache | None = None, hidden: bool = False,
    vocab: int | None = None,
) -> list[Targets]:
    """Targets of one batch: final hidden states of the response rows, then the output
    layer a few rows at a time where it splits off the decoder (else whole logits), over
    the first ``vocab`` tokens.

    With ``hidden=True`` the targets are those hidden states themselves (``Targets.hidden``).
    """
    head = split[1] if (split := split_head(model, vocab)) is not None else None
    if hidden and head is None:
        raise ValueError("hidden-state targets need a model whose output layer splits off its decoder")
    rows, lengths = response_logits(model, trajectories, side, pad_id, device, prefix, hidden=head is not None,
                                    vocab=vocab)
    if hidden:
        return [Targets(sampled_ids=torch.tensor(t.response_ids, dtype=torch.long), hidden=part.cpu())
                for t, part in zip(trajectories, rows.split(list(lengths)))]
    return logits_to_targets(rows, lengths, trajectories, top_k=top_k, full=full, head=head)
