"""vLLM log-prob structures -> Targets, checked against promptbake's own top-K from the same logits."""

from __future__ import annotations

import math

import pytest
import torch
from promptbake_vllm.convert import (
    VLLMResponseError,
    entries_at,
    parse_token_id,
    prompt_targets,
    request_seed,
    sample_targets,
    to_sample,
    topk_targets,
)
from vllm_fakes import (
    FlatLogprobs,
    Logprob,
    as_dict,
    logprob_rows,
    position,
    server_json,
)

from promptbake.builtin.scoring import logits_to_targets
from promptbake.core.targets import sparse_targets
from promptbake.core.types import Trajectory

V, K, PREFIX, R = 64, 5, 7, 9


def _case(seed: int = 0) -> tuple[Trajectory, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(R, V, generator=g) * 3
    logits[2, 11] = 30.0  # a peaked row: top-K mass rounds to ~1, the tail is tiny
    logits[4] = 0.0  # a flat row: many exact ties
    prefix = torch.randint(0, V, (PREFIX,), generator=g).tolist()
    response = torch.randint(0, V, (R,), generator=g).tolist()
    response[2] = 11
    traj = Trajectory("q", 0, prefix + response, prefix[2:] + response, R)
    return traj, logits


def _prompt_logprobs(traj: Trajectory, logits: torch.Tensor, flat: bool):
    """Prompt log-probs as vLLM lays them out: entry 0 None, prefix positions arbitrary."""
    lp = torch.log_softmax(logits, -1)
    g = torch.Generator().manual_seed(9)
    prefix_rows = torch.log_softmax(torch.randn(PREFIX - 1, V, generator=g), -1)
    rows = torch.cat([prefix_rows, lp])
    return logprob_rows(rows, traj.prompted_ids[1:], K, flat, first_none=True)


def _assert_matches(got, want) -> None:
    assert got.topk_ids.dtype == torch.int32 and got.topk_logprobs.dtype == torch.float32
    assert got.tail_logprob.dtype == torch.float32 and got.sampled_ids.dtype == torch.long
    assert torch.equal(got.sampled_ids, want.sampled_ids)
    torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, rtol=0, atol=1e-6)
    # Ties (the flat row) may order equal ids differently; the ids' own log-probs must agree.
    for r in range(len(want)):
        if len(set(want.topk_logprobs[r].tolist())) == K:
            assert got.topk_ids[r].tolist() == want.topk_ids[r].tolist()
    assert not torch.isnan(got.tail_logprob).any()
    big = want.tail_logprob > -8  # 1 - sum(p_k) loses digits when the tail is tiny
    torch.testing.assert_close(got.tail_logprob[big], want.tail_logprob[big], rtol=1e-5, atol=1e-5)
    assert (got.tail_logprob[~big] < -8).all()


@pytest.mark.parametrize("flat", [False, True])
def test_prompt_logprobs_give_the_top_k_and_tail_of_the_logits(flat):
    traj, logits = _case()
    want = logits_to_targets(logits, [R], [traj], top_k=K, full=False)[0]
    pl = _prompt_logprobs(traj, logits, flat)
    # vLLM's layout: K+1 keys where the actual token is outside the top-K.
    sizes = [len(entries_at(pl, p)) for p in range(PREFIX, PREFIX + R)]
    assert set(sizes) <= {K, K + 1} and K + 1 in sizes
    if flat:
        assert pl.end_indices[0] == pl.start_indices[0]  # position 0: empty
    else:
        assert pl[0] is None
    _assert_matches(prompt_targets(pl, traj.prompted_prefix_len, traj.response_ids, K), want)


def test_server_json_gives_the_same_targets():
    traj, logits = _case(1)
    want = logits_to_targets(logits, [R], [traj], top_k=K, full=False)[0]
    pl = server_json(_prompt_logprobs(traj, logits, flat=False))
    assert pl[0] is None and all(isinstance(key, str) for key in pl[PREFIX])
    _assert_matches(prompt_targets(pl, PREFIX, traj.response_ids, K), want)


@pytest.mark.parametrize("flat", [False, True])
def test_sample_logprobs_give_targets_for_the_sampled_tokens(flat):
    traj, logits = _case(2)
    want = logits_to_targets(logits, [R], [traj], top_k=K, full=False)[0]
    rows = logprob_rows(torch.log_softmax(logits, -1), traj.response_ids, K, flat, first_none=False)
    _assert_matches(sample_targets(traj.response_ids, rows, K), want)


def test_a_smaller_k_than_returned_keeps_the_best_and_counts_the_rest_as_tail():
    traj, logits = _case(3)
    want = logits_to_targets(logits, [R], [traj], top_k=3, full=False)[0]
    pl = _prompt_logprobs(traj, logits, flat=False)  # holds top-5 (+ actual)
    got = prompt_targets(pl, PREFIX, traj.response_ids, 3)
    torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, rtol=0, atol=1e-6)
    big = want.tail_logprob > -8
    torch.testing.assert_close(got.tail_logprob[big], want.tail_logprob[big], rtol=1e-5, atol=1e-5)


def test_the_unprompted_side_uses_its_own_prefix_length():
    traj, logits = _case(4)
    want = logits_to_targets(logits, [R], [traj], top_k=K, full=False)[0]
    lp = torch.log_softmax(logits, -1)
    pre = torch.log_softmax(torch.randn(traj.unprompted_prefix_len - 1, V), -1)
    pl = logprob_rows(torch.cat([pre, lp]), traj.unprompted_ids[1:], K, False, first_none=True)
    _assert_matches(prompt_targets(pl, traj.unprompted_prefix_len, traj.response_ids, K), want)


def test_tail_is_minus_infinity_not_nan_when_the_top_k_sum_rounds_to_one():
    rows = [[(1, -1e-9, 1), (2, -1e-9, 2)], [(3, 0.0, 1)], [(4, -0.1, 1), (5, -2.5, 2)]]
    got = topk_targets(rows, [1, 3, 4], 2)
    assert got.tail_logprob[0] == -math.inf and got.tail_logprob[1] == -math.inf
    assert got.tail_logprob[2] == pytest.approx(math.log(1 - math.exp(-0.1) - math.exp(-2.5)), abs=1e-6)
    # Row 1 had one entry: widened with its id and zero mass.
    assert got.topk_ids[1].tolist() == [3, 3] and got.topk_logprobs[1, 1] == -math.inf


def test_core_sparse_targets_default_width_and_empty_rows():
    # The core helper topk_targets (and the openai and tinker teachers) build on.
    got = sparse_targets([[(4, -0.1), (5, -2.5)], []], [4, 9], weight=[1.0, 0.0])
    assert got.topk_ids.tolist() == [[4, 5], [9, 9]]  # width = longest row; an empty row holds its sampled id
    assert got.tail_logprob[1] == 0.0 and got.weight.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError):
        sparse_targets([[(1, -0.1), (2, -0.2)]], [1], width=1)


def test_server_minus_9999_means_zero_probability():
    got = prompt_targets([None, {"7": {"logprob": -0.5, "rank": 1}, "8": {"logprob": -9999.0, "rank": 2}}],
                         1, [7], 2)
    assert got.topk_logprobs[0, 1] == -math.inf


def test_duplicate_actual_token_in_flat_logprobs_is_counted_once():
    flat = FlatLogprobs()
    flat.append_position([3, 3, 4], [-0.2, -0.2, -1.9], [1, 1, 2])
    assert sorted(e[0] for e in entries_at(flat, 0)) == [3, 4]
    got = sample_targets([3], flat, 2)
    assert got.tail_logprob[0] == pytest.approx(math.log(1 - math.exp(-0.2) - math.exp(-1.9)), abs=1e-6)


def test_token_id_strings():
    assert parse_token_id("token_id:0") == 0 and parse_token_id("token_id:151645") == 151645
    for bad in ("hello", "42", "token_id:", "token_id:-1", "token_id:4x", "tokenid:4"):
        with pytest.raises(VLLMResponseError, match="where 'token_id:N' was expected"):
            parse_token_id(bad)
    # Dict keys may be JSON strings of ids or the same token_id form.
    assert [e[0] for e in entries_at([{"5": -1.0, "token_id:6": -2.0}], 0)] == [5, 6]


def test_too_few_prompt_positions_point_at_prefix_caching():
    pl = [None, as_dict([1], [-0.1], [1])]
    with pytest.raises(VLLMResponseError, match="--no-enable-prefix-caching"):
        prompt_targets(pl, 1, [1, 2, 3], 1)


def test_misaligned_prompt_logprobs_are_refused():
    row = torch.log_softmax(torch.randn(V), -1)
    entry = as_dict(*position(row, 5, K))
    entry.pop(5)  # the actual token is always present in vLLM's output
    with pytest.raises(VLLMResponseError, match="do not line up"):
        prompt_targets([None, entry], 1, [5], K)


def test_logprob_objects_and_bare_floats_are_read():
    entries = entries_at([{1: Logprob(-0.3, 1, "a"), 2: Logprob(-1.5, None, None)}], 0)
    assert entries == [(1, -0.3, 1), (2, -1.5, None)]


def test_samples_keep_their_stop_token():
    assert to_sample([5, 6, 2], "stop", 2, [2, 9]).token_ids == [5, 6, 2]
    cut = to_sample([5, 2, 7], "length", None, [2])  # cut after the first stop
    assert cut.token_ids == [5, 2] and cut.finished
    added = to_sample([5, 6], "stop", 9, [2, 9])  # a server that dropped it
    assert added.token_ids == [5, 6, 9] and added.finished
    eos = to_sample([5, 6], "stop", None, [9])  # the model's own EOS, not listed
    assert eos.finished and eos.token_ids == [5, 6]
    length = to_sample([5, 6], "length", None, [9])
    assert not length.finished and length.token_ids == [5, 6]


def test_request_seeds_never_overlap_across_prompts_and_samples():
    n = 4
    seeds = {request_seed(3, i, n) + j for i in range(50) for j in range(n)}
    assert len(seeds) == 50 * n
