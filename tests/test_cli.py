"""The command line: bakes, generate, and one-sentence errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import save_tiny_model


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROMPTBAKE_LOAD_PLUGINS": ""}
    return subprocess.run([sys.executable, "-m", "promptbake", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, check=False)


def assert_one_sentence_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:") and fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["--prompt", ""], "system prompt is empty"),
    (["--prompt", "missing.txt"], "Prompt file missing.txt does not exist"),
    (["--prompt", "x", "--teacher", "vlm"], "Unknown teacher 'vlm'"),
    (["--prompt", "x", "--loss", "topk"], "Did you mean: topk_kl?"),
    (["--prompt", "x", "--epochs", "0"], "epochs must be a positive integer"),
    (["--prompt", "x", "-s", "lr=-1"], "lr must be > 0"),
    (["--prompt", "x", "-s", "temprature=0.5"], "Unknown setting 'temprature'. Did you mean: temperature?"),
    (["--prompt", "x", "-s", "nokey"], "--set expects KEY=VALUE"),
    (["--prompt", "x", "--config", "nope.toml"], "Config file nope.toml does not exist"),
])
def test_bad_input_is_one_sentence_and_nonzero(tmp_path, args, fragment):
    result = run_cli("bake", *args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_sentence_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_bad_files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    assert_one_sentence_error(run_cli("bake", "--prompt", "empty.txt", cwd=tmp_path), "is empty")
    (tmp_path / "latin1.txt").write_bytes(b"R\xe9ponds en fran\xe7ais")
    assert_one_sentence_error(run_cli("bake", "--prompt", "latin1.txt", cwd=tmp_path), "not valid UTF-8")
    (tmp_path / "bad.toml").write_text("epochs = [\n")
    assert_one_sentence_error(run_cli("bake", "-p", "x", "-c", "bad.toml", cwd=tmp_path), "not valid TOML")
    (tmp_path / "keys.toml").write_text("epoch = 2\n")
    assert_one_sentence_error(run_cli("bake", "-p", "x", "-c", "keys.toml", cwd=tmp_path), "Unknown setting 'epoch'")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "bake", "--prompt", "", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_plugins_prints_json():
    result = run_cli("plugins")
    assert result.returncode == 0
    builtin = next(p for p in json.loads(result.stdout) if p["name"] == "builtin")
    assert builtin["students"] == ["peft", "prefix"]


def test_bake_and_generate_from_the_command_line(tmp_path):
    model = save_tiny_model(tmp_path)
    (tmp_path / "bake.toml").write_text(
        "max_queries = 4\nmax_heldout = 2\nsamples_per_query = 1\nmax_new_tokens = 8\nepochs = 1\n"
    )
    out = tmp_path / "run"
    result = run_cli("bake", "-p", "Speak like a pirate.", "-m", str(model), "-c", str(tmp_path / "bake.toml"),
                     "-o", str(out), "--quiet", "--include-prompt")
    assert result.returncode == 0, result.stderr
    assert "Adapter:" in result.stdout and "of the gap closed" in result.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    again = run_cli("bake", "-p", "Speak like a pirate.", "-m", str(model), "-o", str(out))
    assert_one_sentence_error(again, "already exists")
    gen = run_cli("generate", "--adapter", str(out / "adapter"), "--max-new-tokens", "5", "--json", "Hello?")
    assert gen.returncode == 0, gen.stderr
    assert set(json.loads(gen.stdout)) == {"base", "prompted", "baked"}


def test_generate_refuses_a_directory_that_is_not_an_adapter(tmp_path):
    assert_one_sentence_error(run_cli("generate", "--adapter", str(tmp_path), "hi"), "not a promptbake adapter")


def test_bad_models_leave_no_run_directory(tmp_path):
    assert_one_sentence_error(run_cli("bake", "-p", "x", "-m", str(tmp_path / "nope"), "-o", str(tmp_path / "r")),
                              "Could not load model")
    model = save_tiny_model(tmp_path)
    (model / "chat_template.jinja").unlink()
    result = run_cli("bake", "-p", "x", "-m", str(model), "-o", str(tmp_path / "r"))
    assert_one_sentence_error(result, "has no chat template")
    assert not (tmp_path / "r").exists()


def test_set_dotted_keys_fill_option_tables(tmp_path):
    from promptbake.cli.base import _parse_set
    from promptbake.core.config import BakeConfig
    from promptbake.core.errors import ConfigError

    parsed = _parse_set(("teacher_options.base_url=http://127.0.0.1:9/v1", "teacher_options.concurrency=4",
                         "epochs=2"))
    assert parsed == {"teacher_options": {"base_url": "http://127.0.0.1:9/v1", "concurrency": 4}, "epochs": 2}
    with pytest.raises(ConfigError, match="already set to a plain value"):
        _parse_set(("teacher_options=x", "teacher_options.a=1"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_set(("teacher_options.=1",))
    # A table in the config file is extended, not replaced, by dotted overrides.
    path = tmp_path / "bake.toml"
    path.write_text('prompt = "p"\n[teacher_options]\nmodel = "m"\n', encoding="utf-8")
    config = BakeConfig.from_toml(path, **parsed)
    assert config.teacher_options == {"model": "m", "base_url": "http://127.0.0.1:9/v1", "concurrency": 4}


def _queries(tmp_path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return name


@pytest.mark.parametrize("name, content, fragment", [
    ("blank.jsonl", b"\n  \n", "query set blank.jsonl is empty"),
    ("bad.jsonl", b'{"prompt": "hi"}\n{"prompt": oops}\n', "bad.jsonl line 2 is not valid JSON"),
    ("latin1.jsonl", b'{"prompt": "r\xe9ponds"}\n', "is not valid UTF-8"),
    ("fields.jsonl", b'{"text": "hi"}\n', "fields.jsonl line 1: needs a 'messages', 'prompt' or 'question' field"),
])
def test_bad_query_files_are_refused_before_any_model_loads(tmp_path, name, content, fragment):
    result = run_cli("bake", "-p", "x", "-q", _queries(tmp_path, name, content), "-o", "run", cwd=tmp_path)
    assert_one_sentence_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_a_rendering_longer_than_the_model_context_is_refused(tmp_path):
    model = save_tiny_model(tmp_path)  # 512 positions
    result = run_cli("bake", "-p", "x", "-m", str(model), "-s", "max_length=4096", "-o", str(tmp_path / "r"),
                     "--quiet")
    assert_one_sentence_error(result, "max_length=4096 is longer than the model's context of 512 tokens")
    assert not (tmp_path / "r").exists()


def test_resume_refusals(tmp_path):
    assert_one_sentence_error(run_cli("bake", cwd=tmp_path), "Pass the system prompt with --prompt")
    (tmp_path / "empty").mkdir()
    assert_one_sentence_error(run_cli("bake", "--resume", "empty", "-p", "x", cwd=tmp_path),
                              "empty is not a promptbake run directory")
    run = tmp_path / "run"
    run.mkdir()
    from promptbake import prompt_sha256

    (run / "config.json").write_text(json.dumps({"prompt_sha256": prompt_sha256("Be brief."), "epochs": 3}))
    assert_one_sentence_error(run_cli("bake", "--resume", "run", cwd=tmp_path), "pass the same --prompt")
    assert_one_sentence_error(run_cli("bake", "--resume", "run", "-p", "Be long.", cwd=tmp_path),
                              "The prompt differs from the one baked in run")
    assert_one_sentence_error(run_cli("bake", "--resume", "run", "-p", "Be brief.", "--epochs", "5", cwd=tmp_path),
                              "run was baked with epochs=3")
    assert_one_sentence_error(run_cli("bake", "--resume", "run", "-p", "Be brief.", "--overwrite", cwd=tmp_path),
                              "pass one of them")
    assert_one_sentence_error(run_cli("bake", "--resume", "run", "-p", "Be brief.", "-c", "x.toml", cwd=tmp_path),
                              "drop --config")
    assert json.loads((run / "config.json").read_text())["epochs"] == 3  # untouched


def test_quiet_switches_off_the_gguf_loaders_bar_after_tqdm_is_imported(capsys):
    import tqdm  # noqa: F401  (imported before: TQDM_DISABLE alone would come too late)
    from transformers import modeling_gguf_pytorch_utils as gguf_loader

    from promptbake.builtin.models import hide_loading_bars

    hide_loading_bars()
    hide_loading_bars()  # idempotent: not wrapped twice
    for _ in gguf_loader.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    assert "de-quantizing" not in capsys.readouterr().err
    assert gguf_loader.tqdm.keywords == {"disable": True} and not isinstance(gguf_loader.tqdm.func, type(gguf_loader.tqdm))
