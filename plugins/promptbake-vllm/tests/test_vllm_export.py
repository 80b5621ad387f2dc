"""The ``vllm`` exporter: vLLM's LoRA loader rules on crafted adapter folders, the serve command
on a real PEFT adapter, and the check a bake with ``export=["vllm"]`` makes before any work.

No vLLM runs here: the rules were read from vLLM's source (promptbake_vllm/export.py names where).
"""

from __future__ import annotations

import json
import math
import shutil

import promptbake_vllm
import pytest
import torch
from helpers import make_tiny_llama, make_tokenizer, save_tiny_model
from peft import LoraConfig, get_peft_model
from promptbake_vllm import export as vx
from promptbake_vllm.export import VLLMExporter
from safetensors.torch import load_file, save_file

from promptbake import (
    BakeConfig,
    BakedRun,
    Baker,
    ConfigError,
    PromptbakeWarning,
    backend_names,
    temporary_plugin,
)

PROMPT = "Always answer like a pirate, matey."
RUN_NAME = "bake-20250101-120000"


def _base(folder, tied: bool = False):
    """A tiny Llama and its config.json in ``folder`` (the base a bake names)."""
    model = make_tiny_llama(make_tokenizer("smollm2"))
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # what save_pretrained records
    model.config.save_pretrained(folder)
    return model


def _adapter(root, r: int = 16, alpha: float = 16, tied: bool = False, **lora):
    """A real PEFT LoRA adapter saved from a tiny model, laid out as a bake's RUN/adapter."""
    base = root / "base"
    model = _base(base, tied)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=lora.pop("target_modules", "all-linear"),
                        task_type="CAUSAL_LM", **lora)
    peft_model = get_peft_model(model, config)
    adapter = root / RUN_NAME / "adapter"
    peft_model.save_pretrained(adapter, save_embedding_layers=False)
    (adapter / "promptbake.json").write_text(json.dumps({"base_model": str(base), "student": "peft"}))
    return adapter, peft_model


def _bake(adapter) -> BakedRun:
    meta = json.loads((adapter / "promptbake.json").read_text())
    return BakedRun(path=adapter.parent, adapter=adapter, metadata=meta, settings={})


def _export(adapter, tmp_path, **options):
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    return VLLMExporter(**options).export(_bake(adapter), out)


def _edit(adapter, **changes) -> None:
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _add_tensors(adapter, shapes: dict[str, tuple[int, ...]]) -> None:
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({**tensors, **{name: torch.zeros(shape) for name, shape in shapes.items()}}, path)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A plain rank-16 LoRA on every linear layer of an untied tiny Llama."""
    root = tmp_path_factory.mktemp("good")
    adapter, _ = _adapter(root)
    return adapter


@pytest.fixture
def crafted(good, tmp_path):
    """A copy of the good adapter (and its base) to spoil."""
    shutil.copytree(good.parent.parent, tmp_path / "copy")
    adapter = tmp_path / "copy" / RUN_NAME / "adapter"
    meta = json.loads((adapter / "promptbake.json").read_text())
    meta["base_model"] = str(tmp_path / "copy" / "base")
    (adapter / "promptbake.json").write_text(json.dumps(meta))
    return adapter


# ---- the good adapter -------------------------------------------------------------------------

def test_a_good_adapter_is_written_with_the_exact_serve_command(good, tmp_path):
    result = _export(good, tmp_path)
    out = tmp_path / "out"
    for name in ("adapter_config.json", "adapter_model.safetensors", "promptbake.json"):
        assert (out / name).read_bytes() == (good / name).read_bytes()
    assert sorted(result.files) == sorted(p.name for p in out.iterdir())
    base = good.parent.parent / "base"
    assert result.serve[0] == (f"vllm serve {base} --enable-lora --lora-modules {RUN_NAME}={out.absolute()} "
                               f"--max-lora-rank 16")
    request = json.loads(result.serve[1].split(" -d ", 1)[1].strip("'"))
    assert request["model"] == RUN_NAME and result.serve[1].startswith("curl http://127.0.0.1:8000/v1/chat/completions")
    assert result.measured["rank"] == 16 and result.measured["alpha"] == 16 and result.measured["scaling"] == 1.0
    assert result.measured["target_modules"] == sorted(vx.LINEAR)
    assert result.measured["architecture"] == "LlamaForCausalLM" and result.measured["tie_word_embeddings"] is False
    assert not any("refuse" in n for n in result.notes)
    assert any("LoRA rank 16" in n for n in result.notes)


def test_options_name_the_adapter_and_the_base(good, tmp_path):
    result = _export(good, tmp_path, lora_name="pirate", base="my-org/my-model", max_lora_rank=64)
    assert result.serve[0] == (f"vllm serve my-org/my-model --enable-lora --lora-modules "
                               f"pirate={(tmp_path / 'out').absolute()} --max-lora-rank 64")
    assert '"model": "pirate"' in result.serve[1]
    with pytest.raises(ConfigError, match="lora_name"):
        VLLMExporter(lora_name="has space")
    with pytest.raises(ConfigError, match="max_lora_rank must be an integer"):
        VLLMExporter(max_lora_rank="32")


def test_the_embedded_base_is_served_as_its_upstream(crafted, tmp_path):
    meta = json.loads((crafted / "promptbake.json").read_text())
    (crafted / "promptbake.json").write_text(json.dumps({**meta, "base_model": "smollm2-135m"}))
    result = _export(crafted, tmp_path)
    assert result.serve[0].startswith("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora ")
    assert any("4-bit GGUF" in n for n in result.notes)
    assert result.measured["tie_word_embeddings"] is True  # SmolLM2-135M ties its head


def test_a_base_whose_config_is_unknown_is_said_to_be_unchecked(crafted, tmp_path):
    meta = json.loads((crafted / "promptbake.json").read_text())
    (crafted / "promptbake.json").write_text(json.dumps({**meta, "base_model": "tiny-not-anywhere"}))
    result = _export(crafted, tmp_path)
    assert any("could not be read here" in n for n in result.notes)


# ---- one test per rule ------------------------------------------------------------------------

@pytest.mark.parametrize(("r", "flag"), [(1, 1), (4, 8), (16, 16), (17, 32), (64, 64), (320, 320), (500, 512)])
def test_the_flag_is_the_smallest_allowed_rank_that_fits(crafted, tmp_path, r, flag):
    _edit(crafted, r=r, lora_alpha=r)
    result = _export(crafted, tmp_path)
    assert result.serve[0].endswith(f"--max-lora-rank {flag}")
    above = [n for n in result.notes if "above vLLM's default --max-lora-rank of 16" in n]
    assert bool(above) == (r > 16)


def test_modules_to_save_is_refused(crafted, tmp_path):
    _edit(crafted, modules_to_save=["lm_head"])
    with pytest.raises(ConfigError, match="modules_to_save"):
        _export(crafted, tmp_path)


def test_dora_is_refused(crafted, tmp_path):
    _edit(crafted, use_dora=True)
    with pytest.raises(ConfigError, match="DoRA"):
        _export(crafted, tmp_path)


@pytest.mark.parametrize(("change", "match"), [({"bias": "all"}, "bias='all'"), ({"bias": "lora_only"}, "bias"),
                                               ({"lora_bias": True}, "lora_bias")])
def test_trained_biases_are_refused(crafted, tmp_path, change, match):
    _edit(crafted, **change)
    with pytest.raises(ConfigError, match=match):
        _export(crafted, tmp_path)


@pytest.mark.parametrize(("r", "options", "match"), [
    (32, {"max_lora_rank": 16}, "above max_lora_rank=16.*set export_options.vllm.max_lora_rank to 32"),
    (16, {"max_lora_rank": 24}, "not a value vLLM's --max-lora-rank takes"),
    (1024, {}, "above 512, the largest --max-lora-rank"),
])
def test_a_rank_the_flag_cannot_hold_is_refused(crafted, tmp_path, r, options, match):
    _edit(crafted, r=r)
    with pytest.raises(ConfigError, match=match):
        _export(crafted, tmp_path, **options)


def test_a_rank_pattern_counts_in_the_rank(crafted, tmp_path):
    _edit(crafted, rank_pattern={"q_proj": 64})
    result = _export(crafted, tmp_path)
    assert result.serve[0].endswith("--max-lora-rank 64")
    assert any("rank_pattern" in n for n in result.notes)


@pytest.mark.parametrize("name", ["base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.weight",
                                  "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"])
def test_full_weights_in_the_adapter_are_refused(crafted, tmp_path, name):
    _add_tensors(crafted, {name: (476, 32)})
    with pytest.raises(ConfigError, match="not LoRA matrices.*unsupported LoRA weight"):
        _export(crafted, tmp_path)


def test_base_layer_copies_of_the_embeddings_are_skipped_with_a_note(crafted, tmp_path):
    _add_tensors(crafted, {"base_model.model.lm_head.base_layer.weight": (476, 32)})
    result = _export(crafted, tmp_path)
    assert any("recent vLLM skips them" in n for n in result.notes)


def test_a_module_the_model_class_lacks_is_refused(crafted, tmp_path):
    # vLLM packs q/k/v into qkv_proj but expects the adapter's own q_proj, k_proj, v_proj.
    _add_tensors(crafted, {"base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight": (16, 32),
                           "base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight": (96, 16)})
    with pytest.raises(ConfigError, match="LlamaForCausalLM takes LoRA on .* adapts qkv_proj"):
        _export(crafted, tmp_path)


def test_other_peft_features_are_refused(crafted, tmp_path):
    _edit(crafted, init_lora_weights="pissa")
    with pytest.raises(ConfigError, match="init_lora_weights='pissa'"):
        _export(crafted, tmp_path)


def test_an_adapter_that_is_not_lora_is_refused(crafted, tmp_path):
    _edit(crafted, peft_type="PREFIX_TUNING")
    with pytest.raises(ConfigError, match="LoRA adapters only"):
        _export(crafted, tmp_path)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # peft's own warning of the same
def test_lora_on_a_tied_head_is_refused(tmp_path):
    adapter, _ = _adapter(tmp_path, r=4, alpha=4, tied=True, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ConfigError, match="ties its output head.*LoRA on lm_head"):
        _export(adapter, tmp_path)


def test_lora_on_an_untied_head_is_served_with_a_note(tmp_path):
    adapter, _ = _adapter(tmp_path, r=4, alpha=4, target_modules=["q_proj", "lm_head"])
    result = _export(adapter, tmp_path)
    assert any("list them as embedding modules" in n for n in result.notes)
    assert result.measured["target_modules"] == ["lm_head", "q_proj"]


def test_a_head_lora_over_a_large_vocabulary_is_refused(crafted, tmp_path):
    _add_tensors(crafted, {"base_model.model.lm_head.lora_A.weight": (16, 32),
                           "base_model.model.lm_head.lora_B.weight": (vx.MAX_HEAD_VOCAB + 1, 16)})
    with pytest.raises(ConfigError, match="vocabulary above 258048"):
        _export(crafted, tmp_path)


def test_rslora_is_scaled_as_peft_trained_it_and_the_note_says_so(tmp_path):
    adapter, peft_model = _adapter(tmp_path, r=16, alpha=32, use_rslora=True)
    result = _export(adapter, tmp_path)
    peft_scaling = peft_model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
    assert result.measured["scaling"] == pytest.approx(peft_scaling) == pytest.approx(32 / math.sqrt(16))
    note = next(n for n in result.notes if n.startswith("rsLoRA"))
    assert "lora_alpha/sqrt(r) = 8" in note and "lora_alpha/r = 2" in note and "4 times weaker" in note


def test_every_rule_is_one_function_used_by_check_and_export():
    assert all(callable(rule) and rule.__doc__ for rule in (*vx.REFUSALS, *vx.WARNINGS))
    assert len({rule.__name__ for rule in (*vx.REFUSALS, *vx.WARNINGS)}) == len(vx.REFUSALS) + len(vx.WARNINGS)


# ---- before any work: the bake's settings -----------------------------------------------------

def test_the_plugin_registers_the_exporter():
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        assert "vllm" in backend_names("exporter")
        from promptbake.core import registry

        assert registry.resolve("exporter", "vllm") is VLLMExporter


def test_a_bake_vllm_could_not_serve_is_refused_before_any_work(tiny_model, bake_settings, tmp_path):
    spec = tiny_model()
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        baker = Baker(PROMPT, model=spec, export=["vllm"], student_options={"lora_rank": 1024}, **bake_settings)
        with pytest.raises(ConfigError, match="above 512, the largest --max-lora-rank"):
            baker.run()
    assert not (tmp_path / "run").exists()


def test_a_rank_above_the_server_default_warns_with_the_flag(tiny_model, bake_settings):
    spec = tiny_model()
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        baker = Baker(PROMPT, model=spec, export=["vllm"], student_options={"lora_rank": 32}, **bake_settings)
        with pytest.warns(PromptbakeWarning, match="--max-lora-rank 32"):
            baker.check()
        baker.close()


def _check(**settings) -> list[str]:
    return VLLMExporter(**settings.pop("options", {})).check(BakeConfig.from_dict({"prompt": PROMPT, **settings}))


def test_check_decides_from_the_settings_what_it_can():
    assert _check() == []  # the default: rank 16, all-linear, on the embedded (tied) SmolLM2
    with pytest.raises(ConfigError, match="LoRA adapters only"):
        _check(student="prefix")
    with pytest.raises(ConfigError, match="ties its output head"):  # known without loading it
        _check(student_options={"target_modules": ["q_proj", "lm_head"]})
    with pytest.raises(ConfigError, match="DoRA"):
        _check(student_options={"use_dora": True})
    with pytest.raises(ConfigError, match="above max_lora_rank=16"):
        _check(student_options={"lora_rank": 32}, options={"max_lora_rank": 16})
    assert any("rsLoRA" in w for w in _check(student_options={"use_rslora": True, "lora_rank": 64}))
    assert any("'tinker'" in w for w in _check(student="tinker"))


def test_check_reads_a_local_base_config(tmp_path):
    _base(tmp_path / "qwenish")
    config = json.loads((tmp_path / "qwenish" / "config.json").read_text())
    (tmp_path / "qwenish" / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ConfigError, match="Qwen2ForCausalLM takes LoRA on .* adapts rotary"):
        _check(model=str(tmp_path / "qwenish"), student_options={"target_modules": ["q_proj", "rotary"]})


# ---- a real bake exported at its end ------------------------------------------------------------

def test_a_bake_with_export_vllm_ends_with_the_adapter_and_its_command(tmp_path):
    model = save_tiny_model(tmp_path)
    out = tmp_path / RUN_NAME
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        result = Baker(PROMPT, model=str(model), export=["vllm"], max_queries=2, max_heldout=1, samples_per_query=1,
                       max_new_tokens=4, epochs=1, batch_size=2, out=str(out), progress=False, device="cpu",
                       evaluate=False).run()
    (done,) = result.exports
    final = out / "export" / "vllm"
    assert done.path == final and (final / "adapter_model.safetensors").is_file()
    assert done.serve[0] == (f"vllm serve {model} --enable-lora --lora-modules {RUN_NAME}={final.absolute()} "
                             f"--max-lora-rank 16")
    record = json.loads((out / "export.json").read_text())
    assert record["vllm"]["serve"][0] == done.serve[0] and record["vllm"]["measured"]["rank"] == 16

    from click.testing import CliRunner

    from promptbake.cli import cli

    again = tmp_path / "again"
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        got = CliRunner().invoke(cli, ["export", str(out), "--to", "vllm", "-o", str(again),
                                       "--option", "max_lora_rank=32", "--option", "lora_name=pirate"])
    assert got.exit_code == 0, got.output
    assert f"serve: vllm serve {model} --enable-lora --lora-modules pirate={again.absolute()} --max-lora-rank 32" \
        in got.output
