"""The plugin system: entry points, built-ins through the same path, lookup errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import promptbake
from promptbake.core import plugins, registry
from promptbake.core.errors import (
    DuplicateBackendError,
    MissingDependencyError,
    PromptbakeError,
    UnknownBackendError,
)

FAKE_PLUGIN = '''
import promptbake

@promptbake.hookimpl
def register_teachers(register):
    register("fake", "promptbake_fake_impl:FakeTeacher")

@promptbake.hookimpl
def register_losses(register):
    register("fake_loss", "promptbake.builtin.losses:CELoss")
'''


@pytest.fixture
def fake_dist(tmp_path):
    """An installed-looking distribution 'promptbake-fake' with a promptbake entry point."""
    (tmp_path / "promptbake_fake.py").write_text(FAKE_PLUGIN)
    info = tmp_path / "promptbake_fake-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: promptbake-fake\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[promptbake]\nfake = promptbake_fake\n")
    return tmp_path


def _plugins_json(path, allow: str | None) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PROMPTBAKE_LOAD_PLUGINS"}
    env["PYTHONPATH"] = str(path) + os.pathsep + env.get("PYTHONPATH", "")
    if allow is not None:
        env["PROMPTBAKE_LOAD_PLUGINS"] = allow
    out = subprocess.run([sys.executable, "-m", "promptbake", "plugins"], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_entry_point_plugin_is_listed_with_version_and_registrations(fake_dist):
    items = {p["name"]: p for p in _plugins_json(fake_dist, None)}
    assert items["fake"] == {"name": "fake", "distribution": "promptbake-fake", "version": "0.3",
                             "teachers": ["fake"], "losses": ["fake_loss"]}
    assert items["builtin"]["distribution"] == "promptbake"
    assert items["builtin"]["teachers"] == ["hf"]


@pytest.mark.parametrize("allow, expected", [
    ("", {"builtin"}), ("fake", {"builtin", "fake"}), ("promptbake-fake", {"builtin", "fake"}),
    ("other", {"builtin"}),
])
def test_allowlist_limits_third_party_plugins_but_keeps_builtins(fake_dist, allow, expected):
    assert {p["name"] for p in _plugins_json(fake_dist, allow)} == expected


def test_builtins_are_registered():
    assert registry.names("teacher") == ["hf"] or "hf" in registry.names("teacher")
    assert {"ce", "topk_kl", "full_kl"} <= set(registry.names("loss"))
    assert "peft" in registry.names("student")
    assert registry.entry("student", "lora").name == "peft"  # alias


def test_unknown_name_suggests_and_lists_installed():
    with pytest.raises(UnknownBackendError) as info:
        registry.resolve("teacher", "hff")
    message = str(info.value)
    assert "Unknown teacher 'hff'. Did you mean: hf?" in message
    assert "Installed: hf" in message
    assert info.value.kind == "teacher" and info.value.name == "hff"


class _Dup:
    @promptbake.hookimpl
    def register_losses(self, register):
        register("topk_kl", "promptbake.builtin.losses:TopKKLLoss")


def test_duplicate_names_raise_naming_both_plugins():
    with plugins.temporary_plugin(_Dup(), "dupe-plugin"), pytest.raises(DuplicateBackendError) as info:
        registry.names("loss")
    assert "'builtin'" in str(info.value) and "'dupe-plugin'" in str(info.value)
    assert "topk_kl" in registry.names("loss")  # the registry recovers once the plugin is gone


class _Extra:
    @promptbake.hookimpl
    def register_teachers(self, register):
        register("extra", "promptbake_not_a_real_module_xyz.impl:Teacher", aliases=("x",))

    @promptbake.hookimpl
    def register_students(self, register):
        register("needs-dep", "plugin_needing_dep:Student")


def test_temporary_plugin_registers_and_unregisters(tmp_path, monkeypatch):
    (tmp_path / "plugin_needing_dep.py").write_text("import some_missing_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with plugins.temporary_plugin(_Extra(), "extra-plugin"):
        assert registry.entry("teacher", "x").plugin == "extra-plugin"
        with pytest.raises(MissingDependencyError, match="pip install some_missing_package_xyz"):
            registry.resolve("student", "needs-dep")
    with pytest.raises(UnknownBackendError):
        registry.entry("teacher", "extra")


class _Typo:
    @promptbake.hookimpl
    def register_teacher(self, register):  # misspelled hook name
        pass


def test_misspelled_hook_is_reported():
    plugins.load_plugins()
    plugins.pm.register(_Typo(), name="typo")
    try:
        with pytest.raises(PromptbakeError, match="register_teacher"):
            plugins.check_pending()
    finally:
        plugins.pm.unregister(name="typo")


def test_load_plugins_is_idempotent():
    plugins.load_plugins()
    before = plugins.pm.list_name_plugin()
    plugins.load_plugins()
    assert plugins.pm.list_name_plugin() == before


def test_plugin_module_is_cheap_to_import():
    code = textwrap.dedent("""
        import sys, promptbake
        from promptbake import registry
        registry.entry('loss', 'topk_kl'); registry.entry('teacher', 'hf')
        print('torch' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _LossPlugin:
    """A third-party loss, registered as a class (not a lazy string)."""

    @promptbake.hookimpl
    def register_losses(self, register):
        from promptbake.builtin.losses import CELoss

        class HalfCE(CELoss):
            name = "half_ce"

            def per_token(self, logits, targets):
                return 0.5 * super().per_token(logits, targets)

        register("half_ce", HalfCE)


def test_a_plugin_loss_is_used_by_name_in_a_bake(tiny_model, bake_settings):
    with plugins.temporary_plugin(_LossPlugin(), "half-ce-plugin"):
        result = promptbake.Baker("Be terse.", loss="half_ce", model=tiny_model(),
                                  **{**bake_settings, "evaluate": False}).run()
    meta = json.loads((result.adapter_path / "promptbake.json").read_text())
    assert meta["loss"] == "half_ce"


def test_every_hook_is_documented_with_its_signature():
    import inspect
    from pathlib import Path

    from promptbake.core import hookspecs

    docs = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    for name in ("register_teachers", "register_students", "register_losses", "register_probes"):
        fn = getattr(hookspecs, name)
        signature = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        assert f"### {signature}" in docs


def test_every_hook_is_exercised_by_a_test():
    from pathlib import Path

    from promptbake.core import hookspecs

    # The probe and exporter hooks' plugin tests live with the probes and the exports.
    here = Path(__file__).parent
    source = "".join((here / name).read_text() for name in ("test_plugins.py", "test_probes.py", "test_export.py"))
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks
    for name in hooks:
        assert f"def {name}(self, register)" in source or f"def {name}(register)" in source, name
