"""The prefix student: PEFT prefix tuning trained with the same losses, saved as a PEFT adapter."""

from __future__ import annotations

import json

import pytest
import torch

from promptbake import Baker, ConfigError
from promptbake.builtin import models
from promptbake.builtin.prefix import PrefixStudent
from promptbake.compare import compare

PROMPT = "Always answer like a pirate, matey."


def test_prefix_bake_lowers_heldout_kl_and_saves_a_peft_adapter(tiny_model, bake_settings):
    from peft import PeftConfig, PeftModel

    spec = tiny_model()
    base = {n: p.detach().clone() for n, p in models.load(spec).model.named_parameters()}
    settings = {**bake_settings, "epochs": 4, "lr": 3e-2, "max_queries": 10}
    result = Baker(PROMPT, student="prefix", loss="topk_kl", model=spec,
                   student_options={"num_virtual_tokens": 8}, **settings).run()  # the prompt's first 8 tokens
    e = result.eval
    assert e["kl_prompted_baked"] < 0.8 * e["kl_prompted_base"]
    config = PeftConfig.from_pretrained(str(result.adapter_path))
    assert config.peft_type.value == "PREFIX_TUNING" and config.num_virtual_tokens == 8
    handle = models.load(spec)
    for name, p in handle.model.named_parameters():  # the base weights were never touched
        torch.testing.assert_close(p, base[name], rtol=0, atol=0)
    baked = PeftModel.from_pretrained(handle.model, str(result.adapter_path))
    trained = dict(baked.named_parameters())
    assert any("prompt_encoder" in name for name in trained)
    handle.model = models.without_adapter(baked)
    answers = compare(result.adapter_path, "Hello?", PROMPT, max_new_tokens=3)
    assert set(answers) == {"base", "prompted", "baked"}
    meta = json.loads((result.adapter_path / "promptbake.json").read_text())
    assert meta["student"] == "prefix"


def test_prefix_student_trains_only_the_prefix_and_gives_the_model_back(tiny_model, bake_settings):
    spec = tiny_model()
    baker = Baker(PROMPT, student="prefix", model=spec, student_options={"num_virtual_tokens": 4, "init": "random"},
                  **bake_settings)
    student = baker.student
    student.setup(baker.config, total_steps=10)
    try:
        trainable = [n for n, p in student.handle.peft_model.named_parameters() if p.requires_grad]
        assert trainable and all("prompt_encoder" in n for n in trainable)
        assert sum(p.numel() for n, p in student.handle.peft_model.named_parameters() if p.requires_grad) == (
            4 * 2 * student.handle.model.config.num_hidden_layers * student.handle.model.config.num_key_value_heads
            * (student.handle.model.config.hidden_size // student.handle.model.config.num_attention_heads))
    finally:
        student.close()
    assert not hasattr(models.load(spec), "peft_config") and models.load(spec).peft_model is None


def test_prompt_init_makes_the_prefix_the_prompts_kv_cache(tiny_model, bake_settings):
    """Before training, the student on a sequence equals the base model on prompt tokens + sequence."""
    spec = tiny_model()
    baker = Baker(PROMPT, student="prefix", model=spec, **bake_settings)
    student = baker.student
    student.setup(baker.config, total_steps=1)
    try:
        h = student.handle
        prompt_ids = h.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        assert student.init_ids == prompt_ids and h.peft_model.active_peft_config.num_virtual_tokens == len(prompt_ids)
        seq = torch.tensor([[5, 9, 14, 3, 7]])
        with torch.no_grad():
            ours = h.peft_model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
            with h.adapter_disabled():
                full = h.model(input_ids=torch.tensor([prompt_ids + seq[0].tolist()])).logits[:, len(prompt_ids):]
        torch.testing.assert_close(ours, full, rtol=1e-4, atol=1e-4)
    finally:
        student.close()


@pytest.mark.parametrize("options, message", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
    ({"init": "zeros"}, "init must be one of prompt, random"),
    ({"prefix_projection": True}, "set init='random' with it"),
])
def test_prefix_options_are_checked_with_one_sentence(options, message):
    with pytest.raises(ConfigError, match=message):
        PrefixStudent(**options)


def test_prefix_student_samples_after_its_prefix(tiny_model, bake_settings):
    """Greedy answers follow the student's own teacher-forced distribution, prefix included
    (PEFT's generate drops the prefix with transformers 5.24: the answers were the base model's)."""
    from promptbake import BakeConfig, SamplingConfig
    from promptbake.core.types import Prefix, Query
    from promptbake.stages.render import Renderer

    spec = tiny_model()
    student = PrefixStudent(num_virtual_tokens=4, init="random")
    student.setup(BakeConfig(model=spec, device="cpu", student="prefix"), 1)
    with torch.no_grad():  # a prefix that moves the model a long way from its base
        student.handle.peft_model.prompt_encoder["default"].embedding.weight.normal_(0, 3.0)
    r = Renderer(student.tokenizer, PROMPT)
    queries = [Query(f"q{i}", ({"role": "user", "content": text},)) for i, text in enumerate(["Hi?", "Why is it so?"])]
    prefixes = [Prefix(ids=r.prefix(q, False), messages=tuple(r.messages(q, False))) for q in queries]
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=6, min_new_tokens=6, stop_ids=list(r.stop_ids))
    baked = student.generate(prefixes, greedy)
    base = student.generate(prefixes, greedy, strength=0.0)
    assert [g[0].token_ids for g in baked] != [g[0].token_ids for g in base]
    for q, group in zip(queries, baked):
        traj = r.trajectory(q, group[0].token_ids)
        scored = student.score([traj], full=True)[0].full_logprobs
        assert scored.argmax(-1).tolist() == traj.response_ids  # each token the argmax after the ones before
    student.close()
