"""The ``vllm`` exporter: a bake's LoRA adapter as ``vllm serve --enable-lora`` loads it.

The rules are those of vLLM's LoRA loader, read from its source (none of this has run against a
real vLLM): ``vllm/config/lora.py`` (the ``--max-lora-rank`` values), ``vllm/lora/peft_helper.py``
(``PEFTHelper``: required fields, ``_validate_features``, ``validate_legal``, the scaling),
``vllm/lora/utils.py`` (``parse_fine_tuned_lora_name``, ``is_base_embedding_weights``,
``get_supported_lora_modules``), ``vllm/lora/lora_model.py`` (``LoRAModel.from_local_checkpoint``:
the module-name check), ``vllm/lora/layers/logits_processor.py`` (the head's vocabulary limit) and
the model classes (``packed_modules_mapping``, ``embedding_modules``, how a tied head is built).

Each rule is one function of :class:`Adapter` (what is known of the adapter) returning a sentence
or None. ``check`` runs them on what a bake's settings say before training; ``export`` runs the
same functions on the files it wrote. Rules in :data:`REFUSALS` raise, those in :data:`WARNINGS`
become warnings (``check``) or notes (``export``).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake import BakeConfig, BakedRun, ConfigError, Exporter, ExportResult

# vllm/config/lora.py: MaxLoRARanks, and LoRAConfig.max_lora_rank's default.
ALLOWED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SERVER_DEFAULT_RANK = 16
# vllm/lora/layers/logits_processor.py: LogitsProcessorWithLoRA.create_lora_weights.
MAX_HEAD_VOCAB = 258048
FILES = ("adapter_config.json", "adapter_model.safetensors", "promptbake.json")

# The embedded model: the upstream vLLM serves, and what its config says (SmolLM2-135M-Instruct).
EMBEDDED = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct",
                             {"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True})}
# Model classes whose LoRA module names were read from vLLM's source: the linear layers after
# unpacking packed_modules_mapping (qkv_proj -> q/k/v_proj, gate_up_proj -> gate/up_proj).
# lm_head and embed_tokens (embedding_modules) depend on the class and version: rules of their own.
LINEAR = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
KNOWN_CLASSES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
EMBEDDINGS = frozenset({"embed_tokens", "lm_head"})
# vllm/lora/utils.py is_base_embedding_weights: full copies the loader skips.
SKIPPED_COPIES = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")
# Students whose adapter is a PEFT LoRA (their options are PEFT's), and those that are not LoRA.
LORA_STUDENTS = frozenset({"peft", "lora", "trl", "trainer"})
PREFIX_STUDENTS = frozenset({"prefix", "prefix-tuning"})
# vllm/lora/peft_helper.py _init_is_supported: inits that only set the starting weights.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


@dataclass
class Adapter:
    """What is known of an adapter: from a bake's settings (before training) or its files.
    None means not known, and a rule that needs it says nothing."""

    r: int
    alpha: float
    peft_type: str = "LORA"
    missing: list[str] = field(default_factory=list)  # required adapter_config.json keys it lacks
    rslora: bool = False
    dora: bool = False
    bias: str = "none"
    lora_bias: bool = False
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    init: Any = True  # init_lora_weights
    features: dict[str, Any] = field(default_factory=dict)  # alora, layer_replication, bdlora, qalora
    modules: frozenset[str] | None = None  # last names of the adapted modules
    tensors: dict[str, list[int]] | None = None  # adapter_model.safetensors: name -> shape
    arch: str | None = None  # the base's architecture (config.json)
    tied: bool | None = None  # the base's tie_word_embeddings
    flag: int | None = None  # the max_lora_rank option
    student: str | None = None
    from_files: bool = False

    @property
    def rank(self) -> int:
        """The largest rank of any module (vLLM compares this with --max-lora-rank)."""
        return max([self.r, *self.rank_pattern.values()])

    @property
    def max_lora_rank(self) -> int | None:
        """The --max-lora-rank to serve with: the option, else the smallest allowed one that fits."""
        if self.flag is not None:
            return self.flag
        return next((v for v in ALLOWED_RANKS if v >= self.rank), None)

    @property
    def scaling(self) -> float:
        """What vLLM multiplies the LoRA product by (PEFTHelper.__post_init__), as PEFT does."""
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    @property
    def embedding_modules(self) -> list[str]:
        return sorted((self.modules or frozenset()) & EMBEDDINGS)


# ---- refusals: vLLM would not load the adapter ------------------------------------------------

def lora_only(a: Adapter) -> str | None:
    """PEFTHelper.from_dict: r, lora_alpha and target_modules are required; only LoRA loads."""
    if str(a.peft_type).upper() != "LORA":
        return (f"vLLM serves LoRA adapters only and this one is {a.peft_type}; bake with the peft or "
                f"trl student, or export the merged model (--to merged).")
    if a.missing:
        return (f"vLLM refuses an adapter_config.json without {', '.join(a.missing)} (PEFTHelper needs r, "
                f"lora_alpha and target_modules); export an adapter saved by PEFT.")
    return None


def modules_to_save(a: Adapter) -> str | None:
    """PEFTHelper._validate_features: modules_to_save must be None (classifiers aside)."""
    if a.modules_to_save:
        return (f"vLLM refuses an adapter with modules_to_save ({', '.join(map(str, a.modules_to_save))}): it "
                f"loads LoRA matrices only; bake without modules_to_save, or export --to merged.")
    return None


def dora(a: Adapter) -> str | None:
    """PEFTHelper._validate_features and LoRAModel.from_lora_tensors: no DoRA."""
    if a.dora:
        return "vLLM refuses DoRA adapters (use_dora); bake a plain LoRA adapter, or export --to merged."
    return None


def bias(a: Adapter) -> str | None:
    """PEFTHelper.validate_legal (bias must be "none") and _validate_features (no lora_bias)."""
    if a.bias not in (None, "none"):
        return (f"vLLM refuses an adapter that trains biases (bias={a.bias!r}; recent versions load no LoRA "
                f"bias at all); bake with bias='none', or export --to merged.")
    if a.lora_bias:
        return "vLLM refuses an adapter with a bias on lora_B (lora_bias); bake without it, or export --to merged."
    return None


def peft_features(a: Adapter) -> str | None:
    """PEFTHelper._validate_features / _init_is_supported (recent vLLM; older ones ignore these
    and serve the adapter wrongly)."""
    if isinstance(a.init, str) and a.init.lower() not in PLAIN_INITS:
        return (f"vLLM refuses init_lora_weights={a.init!r}: that init changes the base weights when PEFT "
                f"loads the adapter; convert it to a plain LoRA or export --to merged.")
    names = {"alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens)",
             "layer_replication": "layer_replication", "use_bdlora": "block-diagonal LoRA (use_bdlora)",
             "use_qalora": "QALoRA (use_qalora)"}
    used = [label for key, label in names.items() if a.features.get(key)]
    if used:
        return f"vLLM refuses {', '.join(used)}; bake a plain LoRA adapter, or export --to merged."
    return None


def rank(a: Adapter) -> str | None:
    """vllm/config/lora.py MaxLoRARanks; PEFTHelper.validate_legal: rank at most --max-lora-rank."""
    allowed = ", ".join(map(str, ALLOWED_RANKS))
    if a.flag is not None and a.flag not in ALLOWED_RANKS:
        return (f"max_lora_rank={a.flag} is not a value vLLM's --max-lora-rank takes ({allowed}); "
                f"set export_options.vllm.max_lora_rank to one of them, or leave it unset.")
    if a.rank > ALLOWED_RANKS[-1]:
        return (f"LoRA rank {a.rank} is above {ALLOWED_RANKS[-1]}, the largest --max-lora-rank vLLM takes, so "
                f"no server loads it; bake with lora_rank at most {ALLOWED_RANKS[-1]}.")
    if a.flag is not None and a.rank > a.flag:
        fit = next(v for v in ALLOWED_RANKS if v >= a.rank)
        return (f"LoRA rank {a.rank} is above max_lora_rank={a.flag} and vLLM refuses an adapter whose rank is "
                f"above --max-lora-rank; set export_options.vllm.max_lora_rank to {fit}, or leave it unset.")
    return None


def lora_weights(a: Adapter) -> str | None:
    """vllm/lora/utils.py parse_fine_tuned_lora_name: every tensor is lora_A/lora_B.weight or
    lora_embedding_A/B, except the copies is_base_embedding_weights skips."""
    if a.tensors is None:
        return None
    bad = sorted(n for n in a.tensors if not _lora_tensor(n) and not n.endswith(SKIPPED_COPIES))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return (f"vLLM refuses adapter_model.safetensors with tensors that are not LoRA matrices ({shown}): "
                f"full lm_head/embed_tokens weights, biases and norms fail as 'unsupported LoRA weight'; "
                f"bake without modules_to_save or embedding copies, or export --to merged.")
    return None


def module_names(a: Adapter) -> str | None:
    """LoRAModel.from_local_checkpoint: each module's last name must be one the model class
    supports (its linear layers, packed ones unpacked); checked for the classes read."""
    if a.modules is None or a.arch not in KNOWN_CLASSES:
        return None
    bad = sorted(a.modules - LINEAR - EMBEDDINGS)
    if bad:
        return (f"vLLM's {a.arch} takes LoRA on {', '.join(sorted(LINEAR))} (q/k/v packed as qkv_proj, gate/up "
                f"as gate_up_proj) and this adapter adapts {', '.join(bad)}; bake with target_modules among "
                f"those (all-linear is).")
    return None


def tied_head(a: Adapter) -> str | None:
    """The model classes: a tied head is the embedding module itself (qwen2.py, qwen3.py:
    lm_head = model.embed_tokens) or shares its weight (llama.py: ParallelLMHead.tie_weights),
    and LoRA on it is served only by some classes and versions (embedding_modules)."""
    if a.tied and a.embedding_modules:
        return (f"The base ties its output head to its input embedding (tie_word_embeddings) and the adapter has "
                f"LoRA on {', '.join(a.embedding_modules)}, which vLLM serves only on some model classes and "
                f"versions (its Qwen2 and Qwen3 classes make the head the embedding itself, its Llama class "
                f"shares the weight); bake with target_modules that leave out lm_head and embed_tokens "
                f"(all-linear does).")
    return None


def head_vocab(a: Adapter) -> str | None:
    """LogitsProcessorWithLoRA.create_lora_weights: a LoRA head needs a vocabulary <= 258048."""
    if a.tensors is None:
        return None
    rows = [s[0] for n, s in a.tensors.items() if n.endswith("lm_head.lora_B.weight") and s]
    if rows and max(rows) > MAX_HEAD_VOCAB:
        return (f"vLLM refuses a LoRA on lm_head for a vocabulary above {MAX_HEAD_VOCAB} tokens (this one has "
                f"{max(rows)}); bake without lm_head in target_modules.")
    return None


# ---- warnings: vLLM loads it, but something needs the user's attention ---------------------------

def rank_above_default(a: Adapter) -> str | None:
    """LoRAConfig.max_lora_rank defaults to 16."""
    if SERVER_DEFAULT_RANK < a.rank <= ALLOWED_RANKS[-1] and (a.flag is None or a.rank <= a.flag):
        return (f"LoRA rank {a.rank} is above vLLM's default --max-lora-rank of {SERVER_DEFAULT_RANK}: start the "
                f"server with --max-lora-rank {a.max_lora_rank} (the export's serve command has it).")
    return None


def embedding_copies(a: Adapter) -> str | None:
    """is_base_embedding_weights (recent vLLM) skips these; older versions refused them."""
    if a.tensors is None:
        return None
    copies = sorted(n for n in a.tensors if n.endswith(SKIPPED_COPIES))
    if copies:
        return (f"adapter_model.safetensors holds full copies of {', '.join(copies)}: recent vLLM skips them and "
                f"uses the served base's own, older versions refuse the adapter ('unsupported LoRA weight').")
    return None


def embedding_lora(a: Adapter) -> str | None:
    """get_supported_lora_modules: lm_head/embed_tokens only where the class lists them in
    embedding_modules (Llama does; Qwen2 does not; Qwen3 since vLLM PR #29816)."""
    if a.tied or not a.embedding_modules:
        return None
    unknown = (" and the base's tie_word_embeddings could not be read here, so a tied base was not ruled out"
               if a.tied is None else "")
    return (f"The adapter has LoRA on {', '.join(a.embedding_modules)}, which vLLM serves only on model classes "
            f"that list them as embedding modules (its Llama class does, Qwen2 does not, Qwen3 only in recent "
            f"versions){unknown}.")


def rslora_scaling(a: Adapter) -> str | None:
    """PEFTHelper.__post_init__: lora_alpha / sqrt(r) with use_rslora (vLLM PR #6909)."""
    if not a.rslora:
        return None
    return (f"rsLoRA: vLLM scales this adapter by lora_alpha/sqrt(r) = {a.scaling:.6g}, as PEFT trained it; vLLM "
            f"versions from before its rsLoRA support (PR #6909) scale by lora_alpha/r = {a.alpha / a.r:.6g}, "
            f"{math.sqrt(a.r):.3g} times weaker.")


def patterns(a: Adapter) -> str | None:
    """PEFTHelper.get_rank_and_scaling (recent vLLM) applies rank_pattern and alpha_pattern."""
    if a.rank_pattern or a.alpha_pattern:
        return (f"The adapter has per-module ranks or alphas (rank_pattern/alpha_pattern): only recent vLLM applies "
                f"them; older versions use r={a.r} and lora_alpha={a.alpha:g} for every module.")
    return None


def unknown_student(a: Adapter) -> str | None:
    """Before training: a student whose adapter format promptbake does not know."""
    if a.from_files or a.student is None or a.student in LORA_STUDENTS | PREFIX_STUDENTS:
        return None
    return (f"The student '{a.student}' is not one whose adapter promptbake knows before training; vLLM's rules "
            f"are checked on its adapter when it is exported.")


Rule = Callable[[Adapter], "str | None"]
REFUSALS: tuple[Rule, ...] = (lora_only, modules_to_save, dora, bias, peft_features, rank, lora_weights,
                              module_names, tied_head, head_vocab)
WARNINGS: tuple[Rule, ...] = (rank_above_default, embedding_copies, embedding_lora, rslora_scaling, patterns,
                              unknown_student)


def apply_rules(a: Adapter) -> list[str]:
    """Raise the first refusal as a ConfigError; return the warnings."""
    for rule in REFUSALS:
        if (why := rule(a)) is not None:
            raise ConfigError(why)
    return [w for rule in WARNINGS if (w := rule(a)) is not None]


# ---- reading what is known ------------------------------------------------------------------------

def _lora_tensor(name: str) -> bool:
    parts = name.split(".")
    return (len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B")) or \
        parts[-1] in ("lora_embedding_A", "lora_embedding_B")


def _module_of(name: str) -> str | None:
    """The last name of the module a LoRA tensor belongs to (parse_fine_tuned_lora_name's rule)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return parts[-3]
    if len(parts) >= 2 and parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return parts[-2]
    return None


def safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes of a safetensors file, read from its header (no tensors loaded)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ConfigError(f"{path} is not a safetensors file (too short); export an adapter saved by PEFT.")
        (size,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise ConfigError(f"{path} is not a safetensors file (unreadable header); export an adapter "
                              f"saved by PEFT.") from None
    return {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__"}


def base_config(*specs: str | None) -> dict[str, Any] | None:
    """The base model's config.json, where it can be read without the network: the embedded
    model's known one, a local folder's, or the Hugging Face cache's."""
    for spec in specs:
        if not spec:
            continue
        if spec in EMBEDDED:
            return EMBEDDED[spec][1]
        path = Path(spec).expanduser() / "config.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
        except (ImportError, ValueError):  # no huggingface_hub, or not a repo id: not known
            cached = None
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def _arch_and_tied(config: dict[str, Any] | None) -> tuple[str | None, bool | None]:
    if config is None:
        return None, None
    archs = config.get("architectures") or [None]
    tied = config.get("tie_word_embeddings")
    if tied is None and "text_config" in config:
        tied = config["text_config"].get("tie_word_embeddings")
    # A config without the key leaves it to the model class's default: not known here.
    return archs[0], None if tied is None else bool(tied)


def _targets(target: Any, arch: str | None) -> frozenset[str] | None:
    """The last names a PEFT target_modules setting adapts, where knowable before training."""
    if isinstance(target, str):
        # all-linear: every linear layer but the output head; on the classes read, LINEAR.
        return LINEAR if target == "all-linear" and arch in KNOWN_CLASSES else None
    if isinstance(target, list | tuple | set | frozenset):
        return frozenset(str(t).rsplit(".", 1)[-1] for t in target)
    return None


def from_settings(config: BakeConfig, flag: int | None, base: str | None) -> Adapter:
    """What a bake's settings say of the adapter it will save."""
    opts = dict(config.student_options)
    student = config.student if isinstance(config.student, str) else None
    r = opts.get("lora_rank", 16)
    arch, tied = _arch_and_tied(base_config(opts.get("model") or config.model, base))
    return Adapter(
        r=r, alpha=opts.get("lora_alpha") or r,
        peft_type="PREFIX_TUNING" if student in PREFIX_STUDENTS else "LORA",
        rslora=bool(opts.get("use_rslora", False)), dora=bool(opts.get("use_dora", False)),
        bias=opts.get("bias", "none"), lora_bias=bool(opts.get("lora_bias", False)),
        modules_to_save=opts.get("modules_to_save"), modules=_targets(opts.get("target_modules", "all-linear"), arch),
        arch=arch, tied=tied, flag=flag, student=student)


def from_files(folder: Path, flag: int | None, *bases: str | None) -> Adapter:
    """What an adapter folder's adapter_config.json and safetensors header say."""
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    tensors = safetensors_header(folder / "adapter_model.safetensors")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in cfg]
    r = cfg.get("r") or 1
    arch, tied = _arch_and_tied(base_config(*bases))
    return Adapter(
        r=r, alpha=cfg.get("lora_alpha", r), peft_type=cfg.get("peft_type", "LORA"), missing=missing,
        rslora=bool(cfg.get("use_rslora", False)), dora=bool(cfg.get("use_dora", False)),
        bias=cfg.get("bias", "none"), lora_bias=bool(cfg.get("lora_bias", False)),
        modules_to_save=cfg.get("modules_to_save"), rank_pattern=cfg.get("rank_pattern") or {},
        alpha_pattern=cfg.get("alpha_pattern") or {}, init=cfg.get("init_lora_weights", True),
        features={k: cfg.get(k) for k in ("alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora")},
        modules=frozenset(m for m in map(_module_of, tensors) if m is not None),
        tensors=tensors, arch=arch, tied=tied, flag=flag, from_files=True)


def serve_base(metadata: dict[str, Any]) -> str:
    """The model vLLM serves the adapter on: the bake's base, the embedded model's upstream."""
    base = metadata.get("base_model") or metadata.get("base_model_id")
    if not base:
        raise ConfigError("promptbake.json names no base_model; give the base to serve with "
                          "--option base=MODEL_ID.")
    return EMBEDDED[base][0] if base in EMBEDDED else str(base)


class VLLMExporter(Exporter):
    """The adapter as ``vllm serve BASE --enable-lora --lora-modules NAME=PATH`` loads it."""

    name = "vllm"

    def __init__(self, max_lora_rank: int | None = None, lora_name: str | None = None, base: str | None = None):
        """``max_lora_rank``: the server's --max-lora-rank (default: the smallest value vLLM takes that
        fits the adapter's rank); ``lora_name``: the name requests select the adapter by (default: the
        run directory's name); ``base``: the model to serve (default: the bake's base model)."""
        if max_lora_rank is not None and (isinstance(max_lora_rank, bool) or not isinstance(max_lora_rank, int)):
            raise ConfigError(f"max_lora_rank must be an integer such as 32, got {max_lora_rank!r}.")
        if lora_name is not None and not (isinstance(lora_name, str) and re.fullmatch(r"[A-Za-z0-9._-]+", lora_name)):
            raise ConfigError(f"lora_name must be letters, digits, '.', '_' or '-' (it goes into --lora-modules "
                              f"NAME=PATH and the request's model), got {lora_name!r}.")
        if base is not None and not (isinstance(base, str) and base.strip()):
            raise ConfigError(f"base must be a model id or folder, got {base!r}.")
        super().__init__(**{k: v for k, v in (("max_lora_rank", max_lora_rank), ("lora_name", lora_name),
                                              ("base", base)) if v is not None})
        self.max_lora_rank, self.lora_name, self.base = max_lora_rank, lora_name, base

    def check(self, config: BakeConfig) -> list[str]:
        return apply_rules(from_settings(config, self.max_lora_rank, self.base))

    def export(self, bake: BakedRun, out: Path) -> ExportResult:
        for name in FILES:
            if not (bake.adapter / name).is_file():
                raise ConfigError(f"{bake.adapter} has no {name}, which vLLM's LoRA loader needs; export a bake "
                                  f"whose student saved a PEFT LoRA adapter (peft or trl).")
            shutil.copyfile(bake.adapter / name, out / name)
        meta = bake.metadata
        base = self.base or serve_base(meta)
        adapter = from_files(out, self.max_lora_rank, meta.get("base_model"), meta.get("base_model_id"), base)
        notes = apply_rules(adapter)
        notes += self._notes(adapter, meta, base)
        rank_flag = adapter.max_lora_rank
        lora = self.lora_name or _safe_name(bake.path.name)
        path = str(Path(out).absolute())
        command = (f"vllm serve {shlex.quote(base)} --enable-lora --lora-modules {shlex.quote(f'{lora}={path}')} "
                   f"--max-lora-rank {rank_flag}")
        body = json.dumps({"model": lora, "messages": [{"role": "user", "content": "Hello!"}]})
        request = ("curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d "
                   + shlex.quote(body))
        serve = [command, request]
        measured = {"rank": adapter.rank, "alpha": adapter.alpha, "scaling": adapter.scaling,
                    "use_rslora": adapter.rslora, "target_modules": sorted(adapter.modules or ()),
                    "max_lora_rank": rank_flag, "lora_name": lora, "base": base,
                    "architecture": adapter.arch, "tie_word_embeddings": adapter.tied}
        return ExportResult(format=self.name, path=out, files=list(FILES), serve=serve, notes=notes,
                            measured=measured)

    @staticmethod
    def _notes(a: Adapter, meta: dict[str, Any], base: str) -> list[str]:
        """What was measured, what the rules could not decide, and the base served."""
        modules = ", ".join(sorted(a.modules or ())) or "no modules"
        rslora = " (rsLoRA)" if a.rslora else ""
        notes = [f"LoRA rank {a.rank}, lora_alpha {a.alpha:g}, scaling {a.scaling:.6g}{rslora} on {modules}."]
        if a.arch is None:
            notes.append("The base's config.json could not be read here, so the module names and tied embeddings "
                         "were not checked against a vLLM model class.")
        elif a.arch not in KNOWN_CLASSES:
            notes.append(f"Module names were not checked: promptbake knows the LoRA modules of vLLM's "
                         f"{', '.join(sorted(KNOWN_CLASSES))} classes, not {a.arch}'s.")
        if meta.get("base_model") in EMBEDDED:
            notes.append(f"The bake trained on the embedded 4-bit GGUF of {base}, and vLLM serves the full-precision "
                         f"{base}, whose weights differ from those the adapter was trained against; bake with "
                         f"-m {base} to serve exactly what was baked.")
        notes.append(f"vLLM does not read the adapter's base_model_name_or_path: serve it on {base}, the model it "
                     f"was baked on.")
        return notes


def _safe_name(name: str) -> str:
    """A run directory's name as an adapter name (--lora-modules NAME=PATH, the request's model)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "baked"
