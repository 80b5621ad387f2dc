"""Property tests (hypothesis) for the alignment contract and the losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import make_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptbake.builtin.losses import FullKLLoss, TopKKLLoss
from promptbake.core.errors import AlignmentError
from promptbake.core.interfaces import BatchTargets
from promptbake.core.targets import log1mexp
from promptbake.core.types import Query
from promptbake.stages.render import Renderer, check_alignment

TOKENIZERS = {style: make_tokenizer(style) for style in ("chatml", "smollm2", "llama3", "qwen3")}
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(style=st.sampled_from(sorted(TOKENIZERS)), prompt=text, question=text, answer=text,
       extra=st.integers(min_value=1, max_value=60), stop=st.booleans())
def test_rendering_keeps_identical_response_spans(style, prompt, question, answer, extra, stop):
    tok = TOKENIZERS[style]
    query = Query("q", ({"role": "user", "content": question},))
    unbounded = Renderer(tok, prompt, max_length=10**6)
    response = tok(answer, add_special_tokens=False)["input_ids"] + ([unbounded.eot_id] if stop else [])
    if not response:
        return
    full = unbounded.trajectory(query, response)
    longest = max(full.prompted_prefix_len, full.unprompted_prefix_len)
    r = Renderer(tok, prompt, max_length=longest + extra)
    try:
        traj = r.trajectory(query, response)
    except AlignmentError:
        return  # cannot happen with extra >= 1, but a refusal would be the correct outcome
    check_alignment(traj)
    # Truncation only ever removes the end of the response, on both sides alike.
    assert traj.response_ids == full.response_ids[: traj.response_len]
    assert traj.prompted_ids[: traj.prompted_prefix_len] == full.prompted_ids[: full.prompted_prefix_len]
    assert traj.unprompted_ids[: traj.unprompted_prefix_len] == full.unprompted_ids[: full.unprompted_prefix_len]
    assert max(len(traj.prompted_ids), len(traj.unprompted_ids)) <= longest + extra
    assert traj.finished == (stop and traj.response_len == full.response_len)


@st.composite
def distributions(draw):
    n = draw(st.integers(1, 6))
    v = draw(st.integers(2, 40))
    k = draw(st.integers(1, v))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(0.1, 8.0))
    g = torch.Generator().manual_seed(seed)
    t = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * scale, -1).float()
    s = (torch.randn(n, v, generator=g) * scale).float()
    values, ids = t.topk(k, -1)
    targets = BatchTargets(sampled_ids=ids[:, 0], topk_ids=ids, topk_logprobs=values,
                           tail_logprob=log1mexp(torch.logsumexp(values, -1)), full_logprobs=t)
    return t, s, targets


@settings(max_examples=150, deadline=None)
@given(distributions())
def test_losses_are_nonnegative_bounded_and_zero_at_the_teacher(data):
    t, s, targets = data
    full = FullKLLoss().per_token(s, targets)
    topk = TopKKLLoss().per_token(s, targets)
    renorm = TopKKLLoss(tail=False, renormalize=True).per_token(s, targets)
    reference = F.kl_div(torch.log_softmax(s, -1), t, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(full, reference, rtol=1e-4, atol=1e-4)
    assert torch.all(full >= -1e-4) and torch.all(topk >= -1e-4) and torch.all(renorm >= -1e-4)
    assert torch.all(topk <= full + 1e-3)  # the tail bucket keeps top-K a lower bound
    for loss in (FullKLLoss(), TopKKLLoss(), TopKKLLoss(tail=False, renormalize=True)):
        assert torch.all(loss.per_token(t.clone(), targets).abs() < 1e-4)
