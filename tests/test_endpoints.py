"""EndpointPool: items spread over several endpoints, a dead one's work moved, each item answered once.

No network: the "endpoints" are names and the request functions are fakes that
count their calls, sleep a little, or raise EndpointDown for one endpoint midway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest

from promptbake import (
    BackendError,
    ConfigError,
    EndpointDown,
    EndpointPool,
    endpoint_urls,
)

A, B, C = "http://a.test/v1", "http://b.test/v1", "http://c.test/v1"


def pool_of(*urls: str, in_flight: int = 2, **kw) -> EndpointPool[str]:
    return EndpointPool([(url, url) for url in urls], in_flight, **kw)


class Recorder:
    """A request function that answers ``item * 10`` after ``delay`` s; counts calls and concurrency."""

    def __init__(self, delay: float = 0.002, dies: dict[str, int] | None = None):
        self.delay = delay
        self.dies = dies or {}  # endpoint -> calls it answers before it is down for good
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.answered: Counter[int] = Counter()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def __call__(self, endpoint, item: int) -> int:
        url = endpoint.client
        with self.lock:
            self.calls[url] += 1
            dead = url in self.dies and self.calls[url] > self.dies[url]
            self.now[url] += 1
            self.most[url] = max(self.most[url], self.now[url])
        try:
            time.sleep(self.delay * (1 + item % 3))  # uneven, so completions come out of order
            if dead:
                raise EndpointDown(f"Could not reach {url} after 2 retries.")
            with self.lock:
                self.answered[item] += 1
            return item * 10
        finally:
            with self.lock:
                self.now[url] -= 1


def test_results_in_order_each_item_answered_once_spread_over_endpoints():
    fn = Recorder()
    pool = pool_of(A, B, C, in_flight=3)
    items = list(range(60))
    assert pool.map(fn, items, "test", show=False) == [i * 10 for i in items]
    assert fn.answered == Counter(items)  # each exactly once
    assert all(fn.calls[url] > 0 for url in (A, B, C))  # every endpoint took work
    assert sum(e.answered for e in pool.endpoints) == 60
    seen = sorted(i for i, _, _ in pool.run(fn, items))  # run: as completed, each index once
    assert seen == items


def test_the_in_flight_bound_per_endpoint_is_reached_and_never_exceeded():
    in_flight, urls = 3, (A, B)
    # The first wave waits until every slot is busy at once: the bound is reached for sure.
    gate = threading.Barrier(in_flight * len(urls), timeout=10)
    fn = Recorder(delay=0.003)

    def request(endpoint, item):
        if item < in_flight * len(urls):
            gate.wait()
        return fn(endpoint, item)

    assert pool_of(*urls, in_flight=in_flight).map(request, list(range(40)), "test", show=False) == \
        [i * 10 for i in range(40)]
    assert fn.most == {A: in_flight, B: in_flight}


def test_a_dead_endpoints_work_moves_to_the_others(caplog):
    fn = Recorder(dies={B: 5})  # B answers 5 requests, then every call fails (its retries spent)
    pool = pool_of(A, B, in_flight=4)
    items = list(range(50))
    with caplog.at_level(logging.WARNING, logger="promptbake"):
        out = pool.map(fn, items, "test", show=False)
    assert out == [i * 10 for i in items]
    assert fn.answered == Counter(items)  # nothing lost, nothing answered twice
    a, b = pool.endpoints
    assert b.down is not None and a.down is None
    assert b.answered == 5 and a.answered == 45
    # Only B's requests already in flight when it died failed; nothing was sent to it after.
    assert 5 < fn.calls[B] <= 5 + 4
    assert f"Could not reach {B} after 2 retries. Its requests go to the other 1 endpoint." in caplog.text
    # The pool remembers: the next run goes to A only.
    before = fn.calls[B]
    assert pool.map(fn, [1, 2, 3], "test", show=False) == [10, 20, 30]
    assert fn.calls[B] == before


def test_every_endpoint_dead_is_one_error_naming_them_all():
    fn = Recorder(dies={A: 3, B: 2})
    with pytest.raises(BackendError) as info:
        pool_of(A, B, error=BackendError).map(fn, list(range(30)), "test", show=False)
    message = str(info.value)
    assert message.startswith(f"All 2 endpoints stopped answering ({A}, {B}); the last failure: Could not reach")
    assert message.endswith("after 2 retries.") and message.count(".") == message.count(".test") + 1
    assert all(n == 1 for n in fn.answered.values())  # what was answered, was answered once


def test_a_single_endpoint_raises_its_own_error_as_before():
    down = EndpointDown("Could not reach http://a.test/v1 after 6 retries.")

    def request(endpoint, item):
        raise down

    with pytest.raises(EndpointDown) as info:
        pool_of(A, error=BackendError).map(request, [1, 2], "test", show=False)
    assert info.value is down


def test_any_other_error_stops_the_run_and_is_raised_as_is():
    calls = Counter()

    def request(endpoint, item):
        calls[item] += 1
        time.sleep(0.002)
        if item == 3:
            raise ValueError("the request itself is bad")
        return item

    with pytest.raises(ValueError, match="the request itself is bad"):
        pool_of(A, B, in_flight=2).map(request, list(range(100)), "test", show=False)
    assert calls[3] == 1 and sum(calls.values()) < 100  # not retried elsewhere; the rest not sent


def test_each_drops_an_endpoint_that_is_down_and_fails_when_none_is_left():
    pool = pool_of(A, B, C)

    def models(endpoint):
        if endpoint.url == B:
            raise EndpointDown(f"Could not reach {B}.")
        return endpoint.url.upper()

    assert [(e.url, r) for e, r in pool.each(models)] == [(A, A.upper()), (C, C.upper())]
    assert [e.url for e in pool.alive] == [A, C]

    def nobody(endpoint):
        raise EndpointDown(f"Could not reach {endpoint.url}.")

    with pytest.raises(EndpointDown, match=r"^All 3 endpoints stopped answering"):
        pool.each(nobody)
    assert pool.alive == []


def test_endpoint_urls_take_one_url_or_a_list():
    assert endpoint_urls(A) == [A]
    assert endpoint_urls([A, B]) == [A, B]
    assert endpoint_urls((A,)) == [A]


@pytest.mark.parametrize(("value", "fragment"), [
    ([], "is an empty list; give at least one URL."),
    (["localhost:8000/v1"], "must be http(s) URLs such as http://127.0.0.1:8000/v1, got 'localhost:8000/v1'."),
    ("127.0.0.1:8000", "must be http(s) URLs"),
    ([A, 8000], "got 8000."),
    (["http://"], "got 'http://'."),
    ([A, B, A + "/"], f"lists {A} twice; give each endpoint once"),
    ({"url": A}, "must be a URL or a list of URLs"),
])
def test_bad_base_urls_are_one_sentence(value, fragment):
    with pytest.raises(ConfigError) as info:
        endpoint_urls(value)
    message = str(info.value)
    assert message.startswith("teacher_options.base_url ") and fragment in message and message.endswith(".")
