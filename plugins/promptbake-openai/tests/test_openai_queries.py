"""promptbake queries through a hosted writer: the same stand-ins as the hosted teacher's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from openai_fakeapi import FakeChatAPI
from promptbake_openai.openai import OpenAITeacher

from promptbake import BakeConfig
from promptbake.builtin import models
from promptbake.stages import domain_queries as dq
from promptbake.stages.render import Renderer

GARDEN = "You are Fern, the support assistant of Greenleaf Garden Centre."


def test_a_hosted_writer_writes_queries_from_the_messages_it_is_sent(tiny_model, tmp_path):
    spec = tiny_model("smollm2")
    tok = models.load(spec, "auto", "cpu").tokenizer
    api = FakeChatAPI(tok)
    writer = OpenAITeacher(base_url="http://127.0.0.1:9/v1", http_client=api.client(),
                           cache_dir=str(tmp_path / "responses"))
    writer.setup(BakeConfig(prompt=GARDEN, model=spec))
    writer.use_student_tokenizer(tok)
    rows, measured = dq.write_queries(writer, Renderer(tok, "", 10**6), GARDEN, 1, show_progress=False,
                                      model="served")
    assert len(rows) == 1 and rows[0]["writer"] == "openai" and rows[0]["model"] == "served"
    assert rows[0]["messages"][0]["content"].startswith("Bonjour le monde")
    # The fake answers alike to every request: what it wrote is removed as near-duplicates, not kept twice.
    assert measured["near_duplicates"] > 0
    sent = api.bodies[0]["messages"]
    assert sent[-1]["role"] == "user" and GARDEN in sent[-1]["content"]


@pytest.mark.slow
def test_the_llama_cpp_server_writes_queries_from_the_command_line(llama_server, tmp_path):
    """From the installed entry point with the plugin allowed, as a user runs it (the suite loads no plugins)."""
    out = tmp_path / "q.jsonl"
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": "openai"}
    got = subprocess.run([sys.executable, "-m", "promptbake", "queries", "-p", GARDEN, "-n", "4", "--heldout", "2",
                          "-o", str(out), "--quiet", "--writer", "openai",
                          "-s", f"teacher_options.base_url={llama_server}", "-s", "teacher_model=smollm2"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert got.returncode == 0, got.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["writer"] == "openai"
