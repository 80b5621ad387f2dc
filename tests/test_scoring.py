"""Teacher-forced scoring: positions, prefix KV reuse and targets."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_llama, make_tiny_qwen3, make_tokenizer

from promptbake.builtin.prefix_cache import PrefixCache, common_prefix
from promptbake.builtin.scoring import logits_to_targets, response_logits
from promptbake.core.types import Prefix, Query, Targets
from promptbake.stages.render import Renderer

LONG_PROMPT = "You are a pirate. " * 20


def _trajectories(tok, n=5):
    r = Renderer(tok, LONG_PROMPT)
    texts = ["Arr.", "Ahoy there, matey, the sea is wide!", "Yo ho.", "Plants need sun and water.", "Aye"]
    return [r.from_text(Query(f"q{i}", ({"role": "user", "content": f"Question number {i}?"},)), texts[i % 5], i)
            for i in range(n)]


def _assert_rows_of_full_forwards(model, trajs, logits, lengths):
    """``logits`` are, trajectory after trajectory, the rows of a plain forward over each whole
    prompted rendering that predict its response tokens."""
    start = 0
    for t, r in zip(trajs, lengths):
        full = model(input_ids=torch.tensor([t.prompted_ids])).logits[0]
        p = t.prompted_prefix_len
        # The row before the first response token predicts it; the last row predicts end-of-turn.
        torch.testing.assert_close(logits[start: start + r], full[p - 1: p - 1 + r], rtol=1e-4, atol=1e-5)
        start += r


def test_response_rows_match_a_plain_full_forward():
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok)
    _assert_rows_of_full_forwards(model, trajs, *response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu"))


def test_prefix_reuse_gives_the_same_logits_and_computes_the_prefix_once():
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok, 10)
    plain, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu")
    cache = PrefixCache()
    first, _ = response_logits(model, trajs[:4], "prompted", tok.pad_token_id, "cpu", cache)
    assert len(cache.ids) >= len(tok(LONG_PROMPT)["input_ids"]) - 2
    cached_ids = list(cache.ids)
    second, _ = response_logits(model, trajs[4:], "prompted", tok.pad_token_id, "cpu", cache)
    assert cache.ids == cached_ids[: len(cache.ids)]
    torch.testing.assert_close(torch.cat([first, second]), plain, rtol=1e-4, atol=1e-5)


def test_prefix_cache_is_skipped_when_nothing_is_shared():
    tok = make_tokenizer("chatml")
    model = make_tiny_llama(tok)
    r = Renderer(tok, "x")
    trajs = [r.from_text(Query("a", ({"role": "user", "content": "Hi"},)), "ok")]
    cache = PrefixCache()
    # A single trajectory shares its whole prefix with itself, but the row before the
    # first response token must stay outside the cache.
    logits, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu", cache)
    assert len(cache.ids) <= trajs[0].prompted_prefix_len - 1
    plain, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu")
    torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-5)


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([[5], [6]]) == 0


def test_targets_hold_topk_tail_and_full():
    tok = make_tokenizer("chatml")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok, 2)
    logits, lengths = response_logits(model, trajs, "unprompted", tok.pad_token_id, "cpu")
    targets = logits_to_targets(logits, lengths, trajs, top_k=4, full=True)
    for t, tg in zip(trajs, targets):
        assert tg.topk_ids.dtype == torch.int32 and tg.topk_ids.shape == (t.response_len, 4)
        assert tg.sampled_ids.tolist() == t.response_ids
        total = tg.topk_logprobs.exp().sum(-1) + tg.tail_logprob.exp()
        torch.testing.assert_close(total, torch.ones_like(total), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tg.full_logprobs.topk(4, -1).values, tg.topk_logprobs)


def test_targets_from_hidden_states_a_few_rows_at_a_time_match_whole_logits(monkeypatch):
    from promptbake.builtin import scoring

    tok = make_tokenizer("chatml")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok, 3)
    logits, lengths = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu")
    whole = logits_to_targets(logits, lengths, trajs, top_k=3, full=True)
    monkeypatch.setattr(scoring, "SCORE_ROWS", 2)
    hidden, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu", hidden=True)
    chunked = logits_to_targets(hidden, lengths, trajs, top_k=3, full=True, head=model.get_output_embeddings())
    for a, b in zip(whole, chunked):
        for name in ("topk_ids", "topk_logprobs", "tail_logprob", "full_logprobs"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5)


def test_loss_from_hidden_states_in_chunks_matches_full_logits():
    from promptbake.builtin.losses import FullKLLoss, TopKKLLoss
    from promptbake.builtin.scoring import split_head
    from promptbake.core.interfaces import BatchTargets

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok, 4)
    teacher = make_tiny_llama(tok, seed=1)
    with torch.no_grad():
        t_logits, lengths = response_logits(teacher, trajs, "prompted", tok.pad_token_id, "cpu")
    targets = BatchTargets.concat(logits_to_targets(t_logits, lengths, trajs, top_k=5, full=True))
    _, head = split_head(model)
    for loss in (FullKLLoss(), TopKKLLoss()):
        model.zero_grad()
        logits, _ = response_logits(model, trajs, "unprompted", tok.pad_token_id, "cpu")
        whole = loss(logits, targets, 100)
        whole.backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        hidden, _ = response_logits(model, trajs, "unprompted", tok.pad_token_id, "cpu", hidden=True)
        assert hidden.shape == (sum(lengths), model.config.hidden_size)
        chunked = loss.from_hidden(hidden, head, targets, 100, chunk_size=7)
        chunked.backward()
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6)


def test_hidden_state_targets_give_the_teachers_full_log_probs():
    """Targets.hidden (float16, as cached) through the output layer: the full log-probs."""
    from promptbake.builtin.losses import FullKLLoss
    from promptbake.builtin.scoring import score_targets, split_head
    from promptbake.core.interfaces import BatchTargets

    tok = make_tokenizer("smollm2")
    teacher = make_tiny_llama(tok, seed=1)
    trajs = _trajectories(tok, 4)
    with torch.no_grad():
        full = score_targets(teacher, trajs, "prompted", tok.pad_token_id, "cpu", top_k=None, full=True)
        hidden = score_targets(teacher, trajs, "prompted", tok.pad_token_id, "cpu", top_k=None, full=False,
                               hidden=True)
    _, head = split_head(teacher)
    for f, h in zip(full, hidden):
        assert h.full_logprobs is None and h.hidden.shape == (len(f), teacher.config.hidden_size)
        torch.testing.assert_close(torch.log_softmax(head(h.hidden.half().float()), -1), f.full_logprobs,
                                   rtol=0, atol=2e-3)
    # The loss from hidden-state targets equals the loss from the log-probs they stand for.
    student = make_tiny_llama(tok)
    s_hidden, lengths = response_logits(student, trajs, "unprompted", tok.pad_token_id, "cpu", hidden=True)
    n = sum(lengths)
    stored = [Targets(sampled_ids=h.sampled_ids, hidden=h.hidden.half()) for h in hidden]  # as cached
    from_hidden = FullKLLoss().from_hidden(s_hidden, head, BatchTargets.concat(stored), n, chunk_size=5)
    from_logprobs = FullKLLoss().from_hidden(s_hidden, head, BatchTargets.concat(full), n, chunk_size=5)
    torch.testing.assert_close(from_hidden, from_logprobs, rtol=1e-3, atol=1e-5)


def test_loss_from_hidden_states_runs_the_output_layer_once_per_chunk():
    """Gradients are taken chunk by chunk in the forward pass: backward does not run the
    output layer again (as activation checkpointing would), and a frozen head works too."""
    from promptbake.builtin.losses import TopKKLLoss
    from promptbake.builtin.scoring import split_head
    from promptbake.core.interfaces import BatchTargets

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok, 3)
    with torch.no_grad():
        t_logits, lengths = response_logits(make_tiny_llama(tok, seed=1), trajs, "prompted", tok.pad_token_id, "cpu")
    targets = BatchTargets.concat(logits_to_targets(t_logits, lengths, trajs, top_k=5, full=False))
    _, head = split_head(model)
    calls = []
    head.register_forward_hook(lambda *_: calls.append(1))
    for frozen in (False, True):
        head.weight.requires_grad_(not frozen)
        model.zero_grad()
        hidden, _ = response_logits(model, trajs, "unprompted", tok.pad_token_id, "cpu", hidden=True)
        calls.clear()
        value = TopKKLLoss().from_hidden(hidden, head, targets, sum(lengths), chunk_size=4)
        value.backward()
        assert len(calls) == -(-sum(lengths) // 4)
        assert (head.weight.grad is None) == frozen
        assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():  # no graph at all: the value alone
        hidden, _ = response_logits(model, trajs, "unprompted", tok.pad_token_id, "cpu", hidden=True)
        value = TopKKLLoss().from_hidden(hidden, head, targets, sum(lengths), chunk_size=4)
    assert not value.requires_grad and value > 0


def test_generation_with_prefix_reuse_matches_plain_generation():
    from promptbake import BakeConfig
    from promptbake.builtin import models
    from promptbake.builtin.hf import HFTeacher
    from promptbake.core.interfaces import SamplingConfig

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    handle = models.ModelHandle(spec="gen-prefix-test", model=model, tokenizer=tok, device="cpu")
    models.register_handle(handle)
    try:
        r = Renderer(tok, LONG_PROMPT)
        queries = [Query(f"q{i}", ({"role": "user", "content": "Why? " * (i + 1)},)) for i in range(3)]
        prefixes = [Prefix(r.prefix(q, True), tuple(r.messages(q, True))) for q in queries]
        sampling = SamplingConfig(n=2, temperature=1e-4, max_new_tokens=6, min_new_tokens=6, stop_ids=[])
        results = {}
        for reuse in (False, True):
            teacher = HFTeacher(prefix_cache=reuse)
            teacher.setup(BakeConfig(prompt="x", model="gen-prefix-test", device="cpu", progress=False))
            results[reuse] = [[s.token_ids for s in group] for group in teacher.generate(prefixes, sampling)]
            if reuse:
                assert len(teacher.prefixes["prompted"].ids) > 20  # the system prompt was cached
        assert results[True] == results[False]
    finally:
        models.release(handle)


def test_prefix_cache_shrinks_to_what_later_batches_share():
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    r = Renderer(tok, LONG_PROMPT)
    same = [r.from_text(Query("a", ({"role": "user", "content": "Tell me about the sea."},)), t, i)
            for i, t in enumerate(["Arr.", "Yo ho ho!"])]
    others = _trajectories(tok, 3)
    cache = PrefixCache()
    response_logits(model, same, "prompted", tok.pad_token_id, "cpu", cache)
    long_len = len(cache.ids)  # includes the shared user turn
    got, _ = response_logits(model, others, "prompted", tok.pad_token_id, "cpu", cache)
    assert len(cache.ids) < long_len  # cropped to the system part
    plain, _ = response_logits(model, others, "prompted", tok.pad_token_id, "cpu")
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)


def _tiny_granite(tok, logits_scaling=8.0):
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=logits_scaling,
                           pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    return GraniteForCausalLM(config).eval()


def test_a_model_whose_logits_are_not_its_output_layer_is_scored_whole():
    """Granite divides its logits by logits_scaling after the output layer: the split path
    would give lm_head(hidden), off by up to tens of nats in log-probability."""
    from promptbake.builtin.scoring import score_targets, split_head

    tok = make_tokenizer("smollm2")
    model = _tiny_granite(tok)
    trajs = _trajectories(tok, 3)
    assert split_head(model) is None  # found on a probe input, not from a list of config keys
    _assert_rows_of_full_forwards(model, trajs, *response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu"))
    # Targets too: the model's log-probs, not the output layer's.
    targets = score_targets(model, trajs, "prompted", tok.pad_token_id, "cpu", top_k=None, full=True)
    full = torch.log_softmax(model(input_ids=torch.tensor([trajs[0].prompted_ids])).logits[0].float(), -1)
    p = trajs[0].prompted_prefix_len
    torch.testing.assert_close(targets[0].full_logprobs, full[p - 1: p - 1 + trajs[0].response_len],
                               rtol=1e-4, atol=1e-4)
    # The same model without scaling splits.
    assert split_head(_tiny_granite(tok, logits_scaling=1.0)) is not None


def test_output_rows_past_the_tokenizer_are_not_compared(monkeypatch):
    """A model with more output rows than its tokenizer has tokens (Qwen2.5-7B: 152,064 for 151,665):
    scores cover the tokenizer's vocabulary, on the split and the whole path alike."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from promptbake.builtin import scoring
    from promptbake.builtin.scoring import score_targets, split_head

    tok = make_tokenizer("smollm2")
    config = LlamaConfig(vocab_size=len(tok) + 64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    trajs = _trajectories(tok, 2)
    v = len(tok)
    split = score_targets(model, trajs, "prompted", tok.pad_token_id, "cpu", top_k=5, full=True, vocab=v)
    assert split_head(model, v) is not None
    monkeypatch.setattr(scoring, "split_head", lambda *a: None)  # the whole-model path
    logits, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu", vocab=v)
    assert logits.shape[-1] == v
    whole = logits_to_targets(logits, [t.response_len for t in trajs], trajs, top_k=5, full=True)
    for a, b in zip(split, whole):
        assert a.full_logprobs.shape[-1] == v and int(a.topk_ids.max()) < v
        torch.testing.assert_close(a.full_logprobs, b.full_logprobs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.full_logprobs.exp().sum(-1), torch.ones(len(a)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("fused", [True, False])
def test_shared_prefix_attention_matches_a_full_forward_without_copying_the_cache(arch, fused, monkeypatch):
    import promptbake.builtin.prefix_cache as prefix_mod

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok) if arch == "llama" else make_tiny_qwen3(tok)
    trajs = _trajectories(tok, 7)  # responses of different lengths: right padding inside the batch
    plain, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu")
    monkeypatch.setattr(prefix_mod, "FUSED_CPU", fused)
    monkeypatch.setattr(prefix_mod, "SCORE_BLOCK", 2000)  # several row blocks on the unfused path
    # The shared path reads the one cached prefix: an expanded copy would be a regression.
    monkeypatch.setattr(PrefixCache, "expand", lambda self, n: pytest.fail("prefix copied per batch"))
    assert prefix_mod.supports_shared_prefix(model)
    cache = PrefixCache()
    got = torch.cat([response_logits(model, part, "prompted", tok.pad_token_id, "cpu", cache)[0]
                     for part in (trajs[:3], trajs[3:])])
    assert len(cache.ids) > 20
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored after scoring


def test_models_outside_the_list_keep_the_expanded_cache(monkeypatch):
    import promptbake.builtin.prefix_cache as prefix_mod

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    trajs = _trajectories(tok, 4)
    plain, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu")
    monkeypatch.setattr(prefix_mod, "SHARED_PREFIX_MODELS", set())
    copies = []
    expand = PrefixCache.expand
    monkeypatch.setattr(PrefixCache, "expand", lambda self, n: copies.append(n) or expand(self, n))
    got, _ = response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu", PrefixCache())
    assert copies == [4]
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)
    model.config.sliding_window = 16  # a sliding window changes what the prefix part may see
    monkeypatch.setattr(prefix_mod, "SHARED_PREFIX_MODELS", {"llama"})
    assert not prefix_mod.supports_shared_prefix(model)


def test_attention_implementation_is_restored_when_the_forward_fails():
    from promptbake.builtin.prefix_cache import shared_prefix_attention

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    with pytest.raises(RuntimeError), shared_prefix_attention(model):
        assert model.config._attn_implementation != "sdpa"
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
