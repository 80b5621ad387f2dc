"""The tinker student against the local stand-in: same losses and gradients as the peft student."""

from __future__ import annotations

import copy

import pytest
import torch
from promptbake_tinker import client
from promptbake_tinker.student import TinkerStudent
from tinker_fake import FakeService

from promptbake.builtin import models
from promptbake.builtin.losses import CELoss, TopKKLLoss
from promptbake.builtin.peft import PeftStudent
from promptbake.builtin.scoring import logits_to_targets, response_logits
from promptbake.core.config import BakeConfig
from promptbake.core.types import Trajectory


def _trajectories(vocab: int) -> list[Trajectory]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i, (pre, up, r) in enumerate([(12, 7, 6), (10, 5, 4), (14, 9, 8)]):
        head = torch.randint(5, vocab, (pre,), generator=g).tolist()
        resp = torch.randint(5, vocab, (r,), generator=g).tolist()
        out.append(Trajectory(query_id=f"q{i}", sample=0, prompted_ids=head + resp,
                              unprompted_ids=head[pre - up:] + resp, response_len=r))
    return out


@pytest.fixture
def setup(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(client.KEY_ENV, "tml-test-key")
    spec = tiny_model("smollm2")
    handle = models.load(spec)
    base = copy.deepcopy(handle.model)
    trajs = _trajectories(len(handle.tokenizer))
    with torch.no_grad():
        logits, lengths = response_logits(base, trajs, "prompted", handle.tokenizer.pad_token_id, "cpu")
        # sharpened, so the teacher is far from the (near-uniform) student and the KL is sizeable
        targets = logits_to_targets(logits * 30, lengths, trajs, top_k=5, full=False)
    targets[1].weight = torch.tensor([1.0, 0.0, 1.0, 1.0])  # one excluded position
    service = FakeService({spec: (base, handle.tokenizer)}, tmp_path)
    monkeypatch.setattr(client, "connect", lambda base_url=None: service)
    cfg = BakeConfig(model=spec, lora_rank=4, lr=1e-2, warmup_ratio=0.0, max_grad_norm=0.0, device="cpu")
    peft = PeftStudent()
    peft.setup(cfg, 3)
    # peft's AdamW betas/eps; the comparison is of gradients, which do not depend on them.
    tink = TinkerStudent(beta1=0.9, beta2=0.999, eps=1e-8)
    tink.setup(cfg, 3)
    fake = service.trainings[0]
    state = {k: v.clone() for k, v in peft.handle.peft_model.state_dict().items() if "lora_" in k}
    yield peft, tink, fake, state, list(zip(trajs, targets))
    peft.close()


def _peft_step(peft: PeftStudent, batch, loss):  # type: ignore[no-untyped-def]
    grads = {}
    params = [p for p in peft.handle.peft_model.parameters() if p.requires_grad]
    real = peft.optimizer.step

    def capture(*a, **k):  # type: ignore[no-untyped-def]
        grads["g"] = [p.grad.detach().clone() for p in params]
        return real(*a, **k)

    peft.optimizer.step = capture
    try:
        before = [p.detach().clone() for p in params]
        m = peft.step(batch, loss)
    finally:
        peft.optimizer.step = real
    return m, grads["g"], [p.detach() - b for p, b in zip(params, before)]


def _cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    x, y = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


@pytest.mark.parametrize("loss", [CELoss(), TopKKLLoss(), TopKKLLoss(tail=False, renormalize=True)],
                         ids=["ce", "topk_kl_tail", "topk_kl_renorm"])
def test_tinker_student_matches_peft(setup, loss):
    peft, tink, fake, state, pairs = setup
    fake.model.load_state_dict(state, strict=False)
    params = fake.params
    before = [p.detach().clone() for p in params]
    batch = [pairs[:2], pairs[2:]]  # two micro-batches: normalised by the whole step's tokens
    m_t = tink.step(batch, loss)
    delta_t = [p.detach() - b for p, b in zip(params, before)]
    m_p, g_p, delta_p = _peft_step(peft, batch, loss)
    # exactly one datum per example, in one forward/backward request per step
    fb = [n for kind, n in fake.requests if kind == "forward_backward"]
    assert fb == [3] and m_t["datums"] == 3
    assert m_t["tokens"] == m_p["tokens"] == 17
    assert m_t["loss"] == pytest.approx(m_p["loss"], rel=1e-4, abs=1e-5)
    assert m_t["lr"] == pytest.approx(m_p["lr"])
    assert _cos(fake.last_grads, g_p) > 0.999
    assert _cos(delta_t, delta_p) > 0.99
    print(f"{loss.name} tail={getattr(loss, 'tail', None)}: loss tinker={m_t['loss']:.7g} peft={m_p['loss']:.7g} "
          f"grad cos={_cos(fake.last_grads, g_p):.7f} delta cos={_cos(delta_t, delta_p):.7f}")


def test_tinker_student_soft_ce_is_cross_entropy_on_renormalised_targets(setup):
    _, _, fake, _, pairs = setup
    tink = TinkerStudent(soft_ce=True)
    tink.training, tink.config, tink.total_steps = fake, BakeConfig(device="cpu"), 1
    loss = TopKKLLoss(tail=False, renormalize=True)
    m = tink.step([pairs], loss)
    assert fake.requests[-2:] == [("forward_backward", 3), ("optim_step", 0)]  # no extra forward pass
    assert m["loss"] > 0


def test_tinker_student_schedule_matches_transformers(setup):
    from transformers import get_linear_schedule_with_warmup

    _, tink, _, _, _ = setup
    tink.config = BakeConfig(lr=1e-3, warmup_ratio=0.3, device="cpu")
    tink.total_steps = 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, 3, 10)
    for step in range(10):
        assert tink.learning_rate(step) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
