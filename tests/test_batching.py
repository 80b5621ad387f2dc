"""Length-bucketed batches: every item once, random order, less padding."""

from random import Random

from promptbake.core.batching import batches, bucketed, padding_fraction


def test_bucketed_covers_every_index_once_and_cuts_padding():
    rng = Random(0)
    lengths = [rng.randint(20, 200) for _ in range(300)]
    groups = bucketed(lengths, 8, Random(1))
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(300))
    assert all(1 <= len(g) <= 8 for g in groups)
    order = list(range(300))
    Random(1).shuffle(order)
    plain = batches(order, 8)
    assert padding_fraction(lengths, groups) < 0.5 * padding_fraction(lengths, plain)


def test_bucketed_is_seeded():
    lengths = list(range(50))
    assert bucketed(lengths, 4, Random(3)) == bucketed(lengths, 4, Random(3))
    assert bucketed(lengths, 4, Random(3)) != bucketed(lengths, 4, Random(4))


def test_bucketing_sorts_only_as_much_as_padding_needs():
    rng = Random(0)
    even = [100 + rng.randint(0, 2) for _ in range(64)]  # lengths that hardly differ
    groups = bucketed(even, 8, Random(5))
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(64))
    # random batches already pad little: no sorting, so batches are not ordered by length
    assert groups == bucketed(even, 8, Random(5), window=1)
    spread = [rng.randint(10, 300) for _ in range(256)]
    assert padding_fraction(spread, bucketed(spread, 8, Random(5), window=1)) > 0.2
    assert padding_fraction(spread, bucketed(spread, 8, Random(5))) <= 0.1
    # a stricter budget sorts more
    assert padding_fraction(spread, bucketed(spread, 8, Random(5), max_padding=0.0)) == \
        padding_fraction(spread, bucketed(spread, 8, Random(5), window=16))
