"""Real-model tests on the embedded SmolLM2-135M-Instruct (slow: about a minute each on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptbake import Baker
from promptbake.compare import compare

pytestmark = pytest.mark.slow
FRENCH = (Path(__file__).parents[1] / "examples" / "prompts" / "french.txt").read_text().strip()


def test_embedded_model_bake_lowers_heldout_kl(tmp_path):
    result = Baker(
        FRENCH, model="smollm2-135m", loss="topk_kl", max_queries=8, samples_per_query=2,
        max_new_tokens=24, epochs=2, batch_size=4, max_heldout=6, out=str(tmp_path / "run"),
        progress=False, device="cpu", probes=["language=fr"],
    ).run()
    e = result.eval
    assert e["tokens"] > 50
    assert e["kl_prompted_base"] > 0.1  # the prompt really changes the model
    assert e["kl_prompted_baked"] < e["kl_prompted_base"]
    # The language probe sees the prompt's effect: the prompted model answers in French, the base does not.
    french = e["probes"]["language=fr"]
    assert french["prompted"] >= 0.5 and french["base"] <= 0.2, french
    assert (result.run_dir / "report.html").is_file()

    answers = compare(result.adapter_path, "What is the capital of Italy?", FRENCH, max_new_tokens=12)
    assert set(answers) == {"base", "prompted", "baked"}
    assert all(isinstance(a, str) and a for a in answers.values())
