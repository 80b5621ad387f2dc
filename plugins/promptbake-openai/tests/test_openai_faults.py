"""A 200-query bake through a fault-injecting proxy in front of the real llama.cpp server.

The proxy answers 429, 500, resets connections, answers slowly and stalls past
the client's timeout, at set rates. The bake must finish with every query
answered exactly once (none lost, none duplicated) and retries bounded by the
client's ``max_retries``.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make install adds it)")

from faultproxy import FaultProxy
from promptbake_openai.openai import OpenAITeacher

from promptbake import Baker

pytestmark = pytest.mark.slow
RATES = {"429": 0.10, "500": 0.08, "reset": 0.06, "slow": 0.05, "stall": 0.02}
MAX_RETRIES = 8


def test_a_200_query_bake_survives_injected_faults(llama_server, tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i + 7}?"}) + "\n"
                               for i in range(200)))
    with FaultProxy(llama_server, RATES, seed=3, slow_s=0.5, stall_s=6.0) as proxy:
        teacher = OpenAITeacher(base_url=proxy.base_url, cache_dir=str(tmp_path / "responses"), concurrency=4,
                                max_retries=MAX_RETRIES, timeout=5.0)
        result = Baker("Answer in French.", teacher=teacher, student="peft", loss="topk_kl", queries=str(queries),
                       samples_per_query=1, max_new_tokens=6, top_k=5, epochs=1, batch_size=16, evaluate=False,
                       progress=False, device="cpu", out=str(tmp_path / "run")).run()
        report = proxy.report()
    print("fault proxy:", json.dumps(report))

    ids = [json.loads(line)["query_id"] for line in (result.run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(200))  # none lost, none duplicated
    assert report["requests"] == 200
    assert all(n == 1 for n in proxy.delivered.values()) and report["delivered"] == 200
    assert report["max_attempts"] <= MAX_RETRIES + 1
    assert set(report["faults"]) == set(RATES)  # every kind of fault happened
    cached = (tmp_path / "responses").rglob("*.jsonl")
    assert sum(len(p.read_text().splitlines()) for p in cached) == 200  # each answer stored once
    assert result.metrics["steps"] == 13
