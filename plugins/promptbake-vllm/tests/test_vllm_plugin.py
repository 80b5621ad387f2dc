"""Registration: the plugin module, its entry point, and lazy imports."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import promptbake_vllm
import pytest

from promptbake.core import registry
from promptbake.core.plugins import temporary_plugin


def test_registers_both_teachers():
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        from promptbake_vllm.vllm import VLLMTeacher
        from promptbake_vllm.vllm_server import VLLMServerTeacher

        assert registry.resolve("teacher", "vllm") is VLLMTeacher
        assert registry.resolve("teacher", "vllm-server") is VLLMServerTeacher
        assert {"vllm", "vllm-server"} <= set(registry.names("teacher"))
        # "vllm" when the entry point already loaded it (PROMPTBAKE_LOAD_PLUGINS allows it).
        assert registry.entry("teacher", "vllm").plugin in ("vllm-test", "vllm")


def test_entry_point_is_declared():
    try:
        dist = importlib.metadata.distribution("promptbake-vllm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("promptbake-vllm is not installed (pip install -e plugins/promptbake-vllm)")
    points = [ep for ep in dist.entry_points if ep.group == "promptbake"]
    assert [(ep.name, ep.value) for ep in points] == [("vllm", "promptbake_vllm")]
    assert any(ep.name == "vllm" for ep in importlib.metadata.entry_points(group="promptbake"))


def test_importing_the_plugin_imports_neither_torch_vllm_nor_openai():
    code = ("import sys, promptbake_vllm; "
            "print(sorted(m for m in ('torch', 'vllm', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
