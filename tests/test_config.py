"""Settings: defaults, validation and TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptbake import BakeConfig, ConfigError

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_example_toml_is_valid():
    config = BakeConfig.from_toml(EXAMPLES / "bake.toml", prompt="x")
    assert config.loss == "topk_kl" and config.loss_options == {"tail": True}


@pytest.mark.parametrize("settings, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": -2}, "batch_size must be a positive integer"),
    ({"top_k": True}, "top_k must be a positive integer"),
    ({"samples_per_query": 1.5}, "samples_per_query must be a positive integer"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"top_p": 1.5}, "top_p must be in"),
    ({"lr": 0}, "lr must be > 0"),
    ({"min_new_tokens": 100, "max_new_tokens": 10}, "min_new_tokens must be between"),
    ({"max_queries": 0}, "max_queries must be a positive integer"),
    ({"warmup_ratio": 1}, "warmup_ratio must be in"),
    ({"loss_options": '{"tail": false}'}, "loss_options must be a table"),
    ({"teacher_options": ["x"]}, "teacher_options must be a table"),
])
def test_invalid_values_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        BakeConfig.from_dict({"prompt": "x", **settings})


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        BakeConfig.from_dict({"lora_rnk": 4})
    assert "Unknown setting 'lora_rnk'. Did you mean: lora_rank?" in str(info.value)
    assert "Valid settings: prompt, model" in str(info.value)


def test_toml_overrides_apply_after_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('epochs = 2\nmodel = "other"\n')
    config = BakeConfig.from_toml(path, epochs=5, model=None)
    assert config.epochs == 5 and config.model == "other"


def test_lora_settings_are_the_students_options_with_their_old_top_level_names():
    from promptbake import Baker

    config = BakeConfig.from_dict({"prompt": "x", "lora_rank": 8, "target_modules": ["q_proj"]})
    assert config.student_options == {"lora_rank": 8, "target_modules": ["q_proj"]}
    assert "lora_rank" not in config.to_dict()
    assert Baker("x", lora_rank=4).student.lora["r"] == 4  # reaches the peft student
    assert Baker("x", student_options={"lora_rank": 4}).student.lora["r"] == 4
    with pytest.raises(ConfigError, match="lora_rank is set twice"):
        BakeConfig.from_dict({"prompt": "x", "lora_rank": 8, "student_options": {"lora_rank": 4}})
    for settings, message in (({"lora_dropout": 1.0}, "lora_dropout must be in"),
                              ({"lora_alpha": -1}, "lora_alpha must be > 0"),
                              ({"lora_rank": 0}, "lora_rank must be a positive integer")):
        with pytest.raises(ConfigError, match=message):
            Baker("x", **settings)
    with pytest.raises(ConfigError, match="The student 'prefix' does not take the option lora_rank; it takes: "):
        Baker("x", student="prefix", lora_rank=4)
