"""Length-bucketed batches: every item once, random order, less padding."""

from random import Random

from promptbake.batching import batches, bucketed, padding_fraction


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
