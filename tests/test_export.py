"""Exports of a finished bake: the stage, the command, the merged model, and adapters that load
anywhere (a real id as their base, files readable by another user)."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from click.testing import CliRunner
from helpers import save_tiny_model

from promptbake import Baker, ConfigError, Exporter, ExportResult, temporary_plugin
from promptbake.cli import cli

PROMPT = "Always answer like a pirate, matey."


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """A tiny bake of a local HF model folder (as a user's hub model would be)."""
    root = tmp_path_factory.mktemp("bake")
    model = save_tiny_model(root)
    result = Baker(PROMPT, model=str(model), max_queries=4, max_heldout=2, samples_per_query=1, max_new_tokens=6,
                   epochs=1, batch_size=2, lr=5e-3, out=str(root / "run"), progress=False, device="cpu",
                   probe_samples=0).run()
    return model, result


def test_the_adapter_loads_anywhere(baked):
    """base_model_name_or_path is the model's real id (here its folder), so peft's AutoPeftModel
    loads the adapter by itself, and every file is readable by a server running as another user."""
    from peft import AutoPeftModelForCausalLM

    model, result = baked
    config = json.loads((result.adapter_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model.resolve())
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(result.adapter_path))
    assert sum("lora_B" in n for n, _ in loaded.named_parameters()) > 0
    meta = json.loads((result.adapter_path / "promptbake.json").read_text())
    assert meta["base_model_id"] == str(model.resolve())
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & stat.S_IROTH, f"{path} is not readable by others"


def test_the_embedded_base_is_named_by_its_upstream_id_and_exact_file():
    from promptbake.builtin import models

    assert models.model_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_merged_export_loads_in_transformers_with_the_bake_in_its_weights(baked, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, result = baked
    runner = CliRunner()
    out = tmp_path / "merged"
    got = runner.invoke(cli, ["export", str(result.run_dir), "--to", "merged", "-o", str(out)])
    assert got.exit_code == 0, got.output
    assert f"merged: {out}" in got.output and "serve: vllm serve" in got.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((out / "tokenizer_config.json").read_text()).get("tokenizer_class") != "TokenizersBackend"
    merged = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(result.adapter_path))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(merged(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    record = json.loads((result.run_dir / "export.json").read_text())
    assert record["merged"]["path"] == str(out)
    # An existing export is refused unless --overwrite; a failing export leaves nothing behind.
    again = runner.invoke(cli, ["export", str(result.run_dir), "--to", "merged", "-o", str(out)])
    assert again.exit_code != 0 and "already exists" in str(again.exception or again.output)


def test_a_failing_export_leaves_nothing_behind(baked, tmp_path):
    from promptbake.stages import export

    class Broken(Exporter):
        name = "broken"

        def export(self, bake, out):
            (out / "half.bin").write_bytes(b"x")
            raise ConfigError("The format cannot serve this bake.")

    _, result = baked
    with pytest.raises(ConfigError, match="cannot serve"):
        export.export(result.run_dir, Broken(), tmp_path / "broken")
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken*"))


def test_the_export_setting_checks_before_any_work_and_exports_after_saving(tmp_path, tiny_model, bake_settings):
    calls = []

    class Refusing(Exporter):
        name = "refusing"

        def check(self, config):
            raise ConfigError("This format cannot serve a bake of this size.")

        def export(self, bake, out):
            raise AssertionError("never reached")

    class Recording(Exporter):
        name = "recording"

        def check(self, config):
            calls.append("check")
            return ["A warning about the format."]

        def export(self, bake, out):
            calls.append("export")
            (out / "model.txt").write_text(str(bake.metadata["base_model"]))
            return ExportResult(format=self.name, path=out, files=["model.txt"], serve=[f"serve {out}/model.txt"])

    class Plugin:
        import promptbake

        @promptbake.hookimpl
        def register_exporters(self, register):
            register("refusing", Refusing)
            register("recording", Recording)

    spec = tiny_model()
    with temporary_plugin(Plugin(), "exporters-test"):
        with pytest.raises(ConfigError, match="cannot serve"):
            Baker(PROMPT, model=spec, export=["refusing"], **bake_settings).run()
        assert not (tmp_path / "run").exists()
        with pytest.warns(UserWarning, match="A warning about the format"):
            result = Baker(PROMPT, model=spec, export=["recording"], **bake_settings).run()
    assert calls == ["check", "export"]
    out = result.run_dir / "export" / "recording"
    assert (out / "model.txt").read_text() == spec and result.exports[0].path == out
    assert result.exports[0].serve == [f"serve {out}/model.txt"]  # the temporary folder's name is gone
