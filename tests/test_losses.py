"""Losses against torch's own KL and cross-entropy, with gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptbake.builtin.losses import CELoss, FullKLLoss, TopKKLLoss
from promptbake.core.interfaces import BatchTargets
from promptbake.core.targets import log1mexp

N, V = 12, 50


def _teacher(seed: int = 0, k: int = 5) -> tuple[torch.Tensor, BatchTargets]:
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.randn(N, V, generator=g) * 3
    t_logp = torch.log_softmax(t_logits, -1)
    values, ids = t_logp.topk(k, -1)
    targets = BatchTargets(
        sampled_ids=torch.randint(0, V, (N,), generator=g), topk_ids=ids, topk_logprobs=values,
        tail_logprob=log1mexp(torch.logsumexp(values, -1)), full_logprobs=t_logp,
    )
    return t_logp, targets


def _student(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, V, generator=g) * 2).requires_grad_(True)


def _reference_kl(t_logp: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    # F.kl_div(input=log q, target=log p, log_target=True) = p (log p - log q)
    return F.kl_div(torch.log_softmax(s_logits, -1), t_logp, log_target=True, reduction="none").sum(-1)


def test_full_kl_matches_torch_kl_div_and_its_gradient():
    t_logp, targets = _teacher()
    s = _student()
    ours = FullKLLoss(chunk_size=5).per_token(s, targets)
    ref = _reference_kl(t_logp, s)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(ours.sum(), s)
    # d KL / d logits = softmax(student) - p_teacher
    torch.testing.assert_close(grad, torch.softmax(s, -1) - t_logp.exp(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_full_kl_gives_teacher_zeros_no_weight_and_no_nan(dtype):
    # A teacher with exactly zero probability on some tokens (log p = -inf, e.g. masked
    # tokens or fp16 underflow) contributes 0 * log 0 = 0 there.
    t_logp, targets = _teacher()
    t_logp = t_logp.clone()
    t_logp[:, :7] = float("-inf")
    t_logp = torch.log_softmax(t_logp, -1)
    t_logp = t_logp.to(dtype)
    targets.full_logprobs = t_logp.clone()
    s = _student()
    ours = FullKLLoss(chunk_size=5).per_token(s, targets)
    (grad,) = torch.autograd.grad(ours.sum(), s)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    p = t_logp.float().exp()
    ref = (p * (t_logp.float().nan_to_num(neginf=0.0) - torch.log_softmax(s, -1))).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(targets.full_logprobs, t_logp)  # the targets are not modified (reused every epoch)


def test_full_kl_chunking_does_not_change_values():
    _, targets = _teacher()
    s = _student()
    a = FullKLLoss(chunk_size=1).per_token(s, targets)
    b = FullKLLoss(chunk_size=1000).per_token(s, targets)
    torch.testing.assert_close(a, b)


def test_topk_kl_with_all_tokens_equals_full_kl():
    t_logp, targets = _teacher(k=V)
    s = _student()
    ours = TopKKLLoss().per_token(s, targets)
    torch.testing.assert_close(ours, _reference_kl(t_logp, s), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_topk_kl_with_tail_is_a_lower_bound_on_full_kl(k):
    t_logp, targets = _teacher(k=k)
    s = _student()
    ours = TopKKLLoss(tail=True).per_token(s, targets)
    full = _reference_kl(t_logp, s)
    assert torch.all(ours >= -1e-6)
    assert torch.all(ours <= full + 1e-5)
    # The tail term is the KL between the two (K+1)-bucket distributions.
    q = torch.softmax(s, -1)
    p = t_logp.exp()
    ids = targets.topk_ids
    pk, qk = p.gather(-1, ids), q.gather(-1, ids)
    p_b = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    q_b = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    ref = (p_b * (p_b.log() - q_b.log())).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_topk_kl_tail_computed_when_not_given():
    _, targets = _teacher(k=4)
    s = _student()
    a = TopKKLLoss().per_token(s, targets)
    targets.tail_logprob = None
    b = TopKKLLoss().per_token(s, targets)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_topk_kl_renormalised_matches_kl_div_over_topk():
    _, targets = _teacher(k=6)
    s = _student()
    ours = TopKKLLoss(tail=False, renormalize=True).per_token(s, targets)
    p = torch.log_softmax(targets.topk_logprobs, -1)
    q = torch.log_softmax(s.gather(-1, targets.topk_ids), -1)
    ref = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_topk_kl_gradient_matches_finite_differences():
    _, targets = _teacher(k=4)
    s = _student().detach().double()
    loss = TopKKLLoss()

    def f(x):
        return loss.per_token(x, targets).sum().double()

    s.requires_grad_(True)
    (grad,) = torch.autograd.grad(f(s), s)
    eps = 1e-3
    for idx in [(0, 0), (3, int(targets.topk_ids[3, 0])), (7, 11)]:
        plus, minus = s.detach().clone(), s.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (f(plus) - f(minus)) / (2 * eps)
        assert abs(float(numeric) - float(grad[idx])) < 2e-3


def test_ce_matches_cross_entropy():
    _, targets = _teacher()
    s = _student()
    torch.testing.assert_close(CELoss().per_token(s, targets), F.cross_entropy(s, targets.sampled_ids, reduction="none"))


@pytest.mark.parametrize("loss", [FullKLLoss(), TopKKLLoss(), TopKKLLoss(tail=False, renormalize=True)])
def test_kl_losses_are_zero_when_student_equals_teacher(loss):
    t_logp, targets = _teacher(k=8)
    values = loss.per_token(t_logp.clone(), targets)
    assert torch.all(values.abs() < 1e-5)


def test_loss_call_divides_by_the_step_token_count():
    _, targets = _teacher()
    s = _student()
    loss = FullKLLoss()
    torch.testing.assert_close(loss(s, targets, 100), loss.per_token(s, targets).sum() / 100)


def test_missing_targets_and_vocab_mismatch_are_reported():
    _, targets = _teacher()
    targets.topk_ids = None
    with pytest.raises(ValueError, match="top-K ids"):
        TopKKLLoss().per_token(_student(), targets)
    _, targets = _teacher()
    with pytest.raises(ValueError, match="vocabulary"):
        FullKLLoss().per_token(torch.zeros(N, V + 1), targets)


def test_tail_and_renormalize_are_exclusive():
    with pytest.raises(ValueError):
        TopKKLLoss(tail=True, renormalize=True)
