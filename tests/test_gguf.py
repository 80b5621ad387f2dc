"""The gguf and gguf-lora exports, checked against the real client (llama-cpp-python).

A tiny random Llama model is saved as a local transformers folder, a PEFT LoRA with random
(non-zero) ``B`` is put on it, and the exports are loaded in llama.cpp and fed the token ids
of rendered trajectories. Their teacher-forced distributions must match the PEFT model's within
the runtime's own noise floor, measured in the same test as llama.cpp's base against
transformers' base. The KV cache is kept in float32 there (llama.cpp's default float16 cache
is a noise of its own, ~1e-4 in log-prob on these models, that grows with how far a model
is from the base); the slow test on the embedded model uses llama.cpp's defaults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from helpers import chat_ids, make_tiny_llama, make_tokenizer
from peft import LoraConfig, get_peft_model

from promptbake import BakedRun, CapabilityError, ConfigError, Trajectory
from promptbake.builtin import models
from promptbake.builtin.gguf import GGUFExporter, GGUFLoraExporter
from promptbake.builtin.gguf_vocab import pre_tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Can you write a short poem about the ocean?", "The moon and the ocean are blue, my friend."),
    ("Hello! How are you today?", "I'm doing well, thank you for asking."),
    ("Why is the sky blue?", "Because air scatters blue light more than red light."),
]


def trajectories(tokenizer) -> list[Trajectory]:
    out = []
    for i, (question, answer) in enumerate(CONVERSATIONS):
        user = {"role": "user", "content": question}
        unprompted = chat_ids(tokenizer, [user], add_generation_prompt=True)
        prompted = chat_ids(tokenizer, [{"role": "system", "content": "Talk like a pirate."}, user],
                            add_generation_prompt=True)
        response = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(Trajectory(query_id=str(i), sample=0, prompted_ids=prompted + response,
                              unprompted_ids=unprompted + response, response_len=len(response), text=answer))
    return out


def response_rows(logits: np.ndarray | torch.Tensor, traj: Trajectory, vocab: int) -> torch.Tensor:
    """Log-softmax over the tokenizer's vocabulary at the rows that predict the response."""
    start = len(traj.unprompted_ids) - traj.response_len - 1
    rows = torch.as_tensor(np.asarray(logits))[start: start + traj.response_len, :vocab]
    return torch.log_softmax(rows.double(), dim=-1)


@torch.no_grad()
def hf_logprobs(model, trajs: list[Trajectory], vocab: int) -> torch.Tensor:
    model.eval()
    return torch.cat([response_rows(model(torch.tensor([t.unprompted_ids])).logits[0], t, vocab) for t in trajs])


def llama_logprobs(model_path, trajs: list[Trajectory], vocab: int, lora=None, f32_cache: bool = True) -> torch.Tensor:
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = llama_cpp.Llama(model_path=str(model_path), lora_path=str(lora) if lora else None, logits_all=True,
                          n_ctx=256, n_threads=2, verbose=False, **cache)
    try:
        rows = []
        for t in trajs:
            llm.reset()
            llm.eval(t.unprompted_ids)
            rows.append(response_rows(llm.scores[: len(t.unprompted_ids)], t, vocab))
        return torch.cat(rows)
    finally:
        llm.close()


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p.exp() * (p - q)).sum(-1).mean())


def gap(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p - q).abs().max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama (smollm2 chat template) saved as a local folder, held-out trajectories, and a
    function (name, std, **lora options) -> (BakedRun, the PEFT model) for a random LoRA on it."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = make_tokenizer("smollm2")
    base_dir = root / "base"
    tokenizer.save_pretrained(base_dir)
    make_tiny_llama(tokenizer, seed=0).save_pretrained(base_dir)
    held = trajectories(tokenizer)

    # std 0.05: the LoRA's delta is about as large as the tiny model's own weights (init std 0.02), as a
    # bake's is small next to a real model's; float16 rounds both alike (a larger delta rounds coarser).
    def bake(name: str, std: float = 0.05, base: Path = base_dir, **options):
        model = make_tiny_llama(tokenizer, seed=0)
        torch.manual_seed(1)
        options = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "lora_dropout": 0.0, **options}
        peft_model = get_peft_model(model, LoraConfig(**options))
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                torch.nn.init.normal_(param, std=std)
        adapter = root / name / "adapter"
        peft_model.save_pretrained(adapter)
        (adapter / "promptbake.json").write_text(json.dumps({"base_model": str(base)}))
        run = BakedRun(path=root / name, adapter=adapter, metadata={"base_model": str(base)}, settings={},
                       heldout=held)
        return run, peft_model.eval()

    return {"root": root, "base": base_dir, "tokenizer": tokenizer, "heldout": held, "vocab": len(tokenizer),
            "bake": bake}


def export(exporter, run: BakedRun, folder: str):
    out = Path(run.path) / folder
    out.mkdir()
    return exporter.export(run, out), out


def test_gguf_lora_matches_peft_within_the_runtime_floor(tiny):
    run, peft_model = tiny["bake"]("lora")
    result, out = export(GGUFLoraExporter(base="f32"), run, "gguf-lora")
    assert result.files == ["adapter.gguf", "base.gguf", "Modelfile"]
    reader = gguf.GGUFReader(str(out / "adapter.gguf"))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    assert reader.fields["general.architecture"].contents() == "llama"
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.lora_a"] == (32, 4)  # ggml ne: [in, rank]
    assert shapes["blk.0.attn_q.weight.lora_b"] == (4, 32)  # [rank, out]
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (64, 4) and len(shapes) == 2 * 7 * 2

    vocab, held = tiny["vocab"], tiny["heldout"]
    with peft_model.disable_adapter():
        hf_base = hf_logprobs(peft_model, held, vocab)
    hf_baked = hf_logprobs(peft_model, held, vocab)
    cpp_base = llama_logprobs(out / "base.gguf", held, vocab)
    cpp_baked = llama_logprobs(out / "base.gguf", held, vocab, lora=out / "adapter.gguf")
    floor, floor_kl = gap(cpp_base, hf_base), kl(hf_base, cpp_base)
    assert gap(cpp_baked, hf_baked) <= 3 * floor + 1e-4
    assert kl(hf_baked, cpp_baked) <= 3 * floor_kl + 1e-7
    assert gap(hf_baked, hf_base) > 100 * (3 * floor + 1e-4)  # the adapter moves the model far beyond that
    assert kl(hf_baked, cpp_base) > 1000 * (3 * floor_kl + 1e-7)

    assert result.serve == [f"python -m llama_cpp.server --model {out / 'base.gguf'} --lora_path {out / 'adapter.gguf'}",
                            f"llama-server -m {out / 'base.gguf'} --lora {out / 'adapter.gguf'}",
                            f"ollama create promptbake-lora -f {out / 'Modelfile'}"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./base.gguf\nADAPTER ./adapter.gguf\nTEMPLATE ")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile  # the template's default system
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_gguf_merged_matches_peft_within_the_runtime_floor(tiny, quant):
    run, peft_model = tiny["bake"](f"merged-{quant}")
    result, out = export(GGUFExporter(quant=quant), run, "gguf")
    _, floor_out = export(GGUFLoraExporter(base=quant), run, "floor")  # the base, stored the same way
    vocab, held = tiny["vocab"], tiny["heldout"]
    with peft_model.disable_adapter():
        hf_base = hf_logprobs(peft_model, held, vocab)
    hf_baked = hf_logprobs(peft_model, held, vocab)
    cpp_base = llama_logprobs(floor_out / "base.gguf", held, vocab)
    floor, floor_kl = gap(cpp_base, hf_base), kl(hf_base, cpp_base)
    cpp = llama_logprobs(out / "model.gguf", held, vocab)
    assert gap(cpp, hf_baked) <= 3 * floor + 1e-4
    assert kl(hf_baked, cpp) <= 3 * floor_kl + 1e-7
    assert gap(hf_baked, hf_base) > 100 * (3 * floor + 1e-4)
    assert result.files == ["model.gguf", "Modelfile"]
    assert result.serve[0] == f"python -m llama_cpp.server --model {out / 'model.gguf'}"
    if quant == "f16":
        assert result.measured["kl_merged_vs_quantized"] < 1e-3 * result.measured["kl_merged_vs_base"]
        assert result.measured["heldout_tokens"] == sum(t.response_len for t in held)
        assert "the bake survives f16" in result.notes[1]


def test_gguf_tokenizer_metadata_tokenizes_as_transformers(tiny):
    run, _ = tiny["bake"]("tokenizer")
    _, out = export(GGUFExporter(quant="f32"), run, "gguf")
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokenizer = tiny["tokenizer"]
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), vocab_only=True, verbose=False)
    try:
        for text in ["Hello! How are you today? I'm fine, 1234 apples.", "  two  spaces\n\nand\ttabs, 3.14 Café 世界 🙂",
                     "<|im_start|>user\nhi<|im_end|>\n"]:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"]
    finally:
        llm.close()


@pytest.mark.parametrize(("options", "words"), [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "DoRA"),
    ({"target_modules": ["embed_tokens", "q_proj"]}, "token embeddings"),
])
def test_gguf_lora_refuses_what_llama_cpp_cannot_load(tiny, options, words):
    run, _ = tiny["bake"](f"refused-{words.split()[0]}", **options)
    with pytest.raises(CapabilityError, match=words) as caught:
        export(GGUFLoraExporter(base="none"), run, "gguf-lora")
    assert str(caught.value).count(". ") == 0  # one sentence


def test_gguf_lora_refuses_lm_head_of_a_tied_model_and_unknown_architectures(tiny, tmp_path):
    tied = tmp_path / "tied"
    tied.mkdir()
    config = json.loads((tiny["base"] / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    run, _ = tiny["bake"]("tied", base=tied, target_modules=["lm_head", "q_proj"])
    with pytest.raises(CapabilityError, match="tied"):
        export(GGUFLoraExporter(base="none"), run, "gguf-lora")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    run, _ = tiny["bake"]("other", base=other)
    with pytest.raises(CapabilityError, match="'gpt2' model.*convert_hf_to_gguf.py"):
        export(GGUFLoraExporter(base="none"), run, "gguf-lora")


NUMBERS = r"KL ([0-9.e+-]+) nats/token .* against KL ([0-9.e+-]+) that the bake"


def test_gguf_refuses_a_quantisation_that_erases_the_bake(tiny):
    run, _ = tiny["bake"]("faint", std=0.0005)  # a bake far smaller than Q8_0's rounding of these weights
    with pytest.raises(ConfigError, match="would erase the bake and is not written") as caught:
        export(GGUFExporter(quant="q8_0"), run, "gguf")
    quant_kl, bake_kl = map(float, re.search(NUMBERS, str(caught.value)).groups())
    assert quant_kl > 0.5 * bake_kl > 0
    assert not (Path(run.path) / "gguf" / "model.gguf").exists()
    forced, out = export(GGUFExporter(quant="q8_0", force="true"), run, "forced")
    assert forced.notes[1].startswith("Warning: Stored as q8_0") and "force=true" in forced.notes[1]
    assert forced.measured["kl_merged_vs_quantized"] > 0.5 * forced.measured["kl_merged_vs_base"]
    assert gguf.GGUFReader(str(out / "model.gguf")).fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    kept, _ = export(GGUFExporter(quant="f16"), run, "f16")  # f16's rounding is far below the same bake
    assert kept.measured["quantization_share_of_bake"] < 0.5
    with pytest.raises(ConfigError, match="writes only f32, f16, q8_0"):
        export(GGUFExporter(quant="q4_1"), run, "q4")


def test_gguf_options_are_checked(tiny):
    with pytest.raises(ConfigError, match="Unknown GGUF type 'q3_k'"):
        GGUFExporter(quant="q3_k")
    with pytest.raises(ConfigError, match="base must be one of"):
        GGUFLoraExporter(base="q4_1")
    with pytest.raises(ConfigError, match="force must be true or false"):
        GGUFExporter(force="maybe")


def test_pre_tokenizer_names():
    def level(**kw):
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True, **kw}

    assert pre_tokenizer({"pre_tokenizer": level()}, "m") == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, level()]}}, "m") == "smollm"
    from promptbake.builtin.gguf_vocab import LLAMA3_SPLIT

    split = {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
    llama3 = {"type": "Sequence", "pretokenizers": [split, level(use_regex=False)]}
    assert pre_tokenizer({"pre_tokenizer": llama3}, "m") == "llama-bpe"
    with pytest.raises(CapabilityError, match="pre=NAME"):
        pre_tokenizer({"pre_tokenizer": {"type": "Metaspace"}}, "m")


@pytest.mark.slow
def test_gguf_lora_on_the_embedded_model(tmp_path):
    """gguf-lora on the shipped Q4_1 SmolLM2: llama.cpp's defaults, the floor of a Q4_1 runtime."""
    handle = models.load("smollm2-135m", dtype="float32", device="cpu", progress=False)
    tokenizer, vocab = handle.tokenizer, handle.vocab
    held = trajectories(tokenizer)
    torch.manual_seed(1)
    peft_model = get_peft_model(handle.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                         lora_dropout=0.0))
    try:
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        adapter = tmp_path / "run" / "adapter"
        peft_model.save_pretrained(adapter)
        (adapter / "promptbake.json").write_text(json.dumps({"base_model": "smollm2-135m"}))
        with peft_model.disable_adapter():
            hf_base = hf_logprobs(peft_model, held, vocab)
        hf_baked = hf_logprobs(peft_model, held, vocab)
    finally:
        peft_model.unload()  # the cached base model, without adapter layers again
        models.release(handle)
    run = BakedRun(path=tmp_path / "run", adapter=adapter, metadata={"base_model": "smollm2-135m"}, settings={},
                   heldout=held)
    result, out = export(GGUFLoraExporter(), run, "gguf-lora")
    shipped = Path(result.measured["base_gguf"])
    assert shipped.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(result.measured["base_gguf_sha256"]) == 64
    assert result.files == ["adapter.gguf", "Modelfile"]
    assert (out / "Modelfile").read_text().startswith(f"FROM {shipped}\nADAPTER ./adapter.gguf\n")
    cpp_base = llama_logprobs(shipped, held, vocab, f32_cache=False)
    cpp_baked = llama_logprobs(shipped, held, vocab, lora=out / "adapter.gguf", f32_cache=False)
    floor, floor_kl = gap(cpp_base, hf_base), kl(hf_base, cpp_base)
    assert kl(hf_baked, cpp_baked) <= 3 * floor_kl + 1e-3
    assert gap(cpp_baked, hf_baked) <= 3 * floor + 1e-3
    assert kl(hf_baked, cpp_baked) < 0.5 * kl(hf_baked, cpp_base)  # the adapter is applied: far closer than the base
