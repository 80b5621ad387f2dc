"""Where a bake's time goes: promptbake's default against a naive loop and the lower bound.

Run with ``make bench`` (or ``python benchmarks/bake_speed.py``). Everything runs in one
process on the embedded SmolLM2-135M, on the same trajectories and the same micro-batches
(the ones Baker.train draws for ``--seed``), so the loops differ only in how they get targets:

* naive: what seed 000 does -- every step re-runs the prompted teacher (the student with its
  adapter disabled) over the full system prompt and takes the KL over full [B, T, V] logits;
* default: promptbake's path -- score once (system-prompt KV reused) and cache the targets,
  then epochs of student steps on them (Baker.score + Baker.train). With no loss named, the
  hf teacher and peft student share the model, so this is full_kl with the teacher's hidden
  states as targets; ``--extra-k`` adds the same path with topk_kl targets at several K;
* lower bound: the same single scoring pass plus epochs of bare student forward+backward.

Then teacher scoring time per trajectory at several system-prompt lengths with and without
prefix reuse, and (in subprocesses) the peak RSS of full_kl chunked vs naive.
Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from promptbake import BakeConfig, Baker
from promptbake.builtin import models
from promptbake.builtin.hf import HFTeacher
from promptbake.builtin.losses import CELoss
from promptbake.builtin.peft import PeftStudent
from promptbake.builtin.prefix_cache import PrefixCache, common_prefix
from promptbake.run import files
from promptbake.run.cache import TargetStore
from promptbake.run.rundir import RunDir
from promptbake.stages import score, train
from promptbake.stages.evaluate.heldout import heldout_metrics
from promptbake.stages.generate import sample_split
from promptbake.stages.queries import load_queries
from promptbake.stages.render import Renderer
from promptbake.stages.score import score_as_stored

FILLER = ("Example: Q: A shop sells 3 pens for 2 dollars. How much do 12 pens cost? "
          "A: 12 pens are 4 groups of 3 pens, and each group costs 2 dollars, so the answer is 8 dollars. ")


def system_prompt(tokenizer, n_tokens: int) -> str:
    """A few-shot style prompt of about ``n_tokens`` tokens (seed 000 bakes an 8-shot CoT prompt)."""
    if n_tokens == 0:
        return ""
    text = "You are a careful assistant who reasons step by step. "
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        text += FILLER
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def naive_step(student: PeftStudent, part) -> None:
    """One optimizer step of seed 000: the prompted teacher (the student with its adapter
    disabled) recomputed over the whole prompt, then the KL over full [B, T, V] logits."""
    h = student.handle
    model = h.peft_model
    width_p = max(len(t.prompted_ids) for t in part)
    width_u = max(len(t.unprompted_ids) for t in part)
    pid = torch.full((len(part), width_p), h.tokenizer.pad_token_id)
    uid = torch.full((len(part), width_u), h.tokenizer.pad_token_id)
    for b, t in enumerate(part):
        pid[b, : len(t.prompted_ids)] = torch.tensor(t.prompted_ids)
        uid[b, : len(t.unprompted_ids)] = torch.tensor(t.unprompted_ids)
    with torch.no_grad(), model.disable_adapter():
        t_logits = model(input_ids=pid).logits  # [B, T, V], the whole prompt every step
    s_logits = model(input_ids=uid).logits
    t_rows = torch.cat([t_logits[b, t.prompted_prefix_len - 1: len(t.prompted_ids) - 1] for b, t in enumerate(part)])
    s_rows = torch.cat([s_logits[b, t.unprompted_prefix_len - 1: len(t.unprompted_ids) - 1] for b, t in enumerate(part)])
    loss = torch.nn.functional.kl_div(torch.log_softmax(s_rows, -1), torch.log_softmax(t_rows, -1),
                                      log_target=True, reduction="sum") / t_rows.shape[0]
    loss.backward()
    student.optimizer.step()
    student.scheduler.step()
    student.optimizer.zero_grad(set_to_none=True)


def naive_train(student: PeftStudent, trajectories, plan: list[list[list[int]]]) -> float:
    """Seed 000's loop: teacher recomputed each step, full-vocabulary KL over [B, T, V].

    ``plan`` holds each epoch's micro-batches (lists of indices): the benchmark gives it the
    batches promptbake's Baker.train runs, so the two differ only in how targets are made.
    """
    start = time.perf_counter()
    for epoch in plan:
        for mb in epoch:
            naive_step(student, [trajectories[i] for i in mb])
    return time.perf_counter() - start


def bare_train(student: PeftStudent, trajectories, targets, plan: list[list[list[int]]]) -> float:
    """The floor: the student's forward+backward (cross-entropy on the sampled tokens) on ``plan``'s batches."""
    loss = CELoss()
    start = time.perf_counter()
    for epoch in plan:
        for mb in epoch:
            student.step([[(trajectories[i], targets[i]) for i in mb]], loss)
    return time.perf_counter() - start


@dataclass
class Workload:
    """The benchmark's bake: the embedded model, a few-shot system prompt, sampled trajectories."""

    config: BakeConfig
    teacher: HFTeacher
    tokenizer: Any
    steps: int
    trajs: list = field(default_factory=list)
    held: list = field(default_factory=list)
    generate_s: float = 0.0
    baker: Bench | None = None  # scores and trains the default

    def fresh_student(self) -> PeftStudent:
        """A new LoRA student; ``config.seed`` fixes its initialisation, the same for every variant."""
        student = PeftStudent()
        student.setup(self.config, self.steps)
        return student

    def baker_for(self, config: BakeConfig, student: PeftStudent | None = None, **baker_options: str) -> Bench:
        """A Baker's backends with a run directory of their own, sharing the teacher; ``student``
        defaults to a fresh one."""
        baker = Baker(config=config, teacher=self.teacher, student=student or self.fresh_student(), **baker_options)
        return Bench(baker, RunDir(tempfile.mkdtemp()))


@dataclass
class Bench:
    """A Baker's assembled backends and a run directory, run stage by stage as a bake does."""

    baker: Baker
    run: RunDir

    @property
    def config(self) -> BakeConfig:
        return self.baker.config

    @property
    def student(self) -> Any:
        return self.baker.student

    def target_kind(self) -> str:
        return score.target_kind(self.baker.teacher, self.baker.student, self.baker.loss)

    def epoch_batches(self, trajs: list) -> list:
        return train.epoch_batches(trajs, self.config)

    def cached_score(self, trajs: list) -> list:
        return score.score(self.baker.teacher, trajs, self.target_kind(), self.config, self.run)

    def train(self, trajs: list, targets: list) -> dict:
        b = self.baker
        key = score.bake_key(self.config, b.teacher, self.target_kind(), trajs)
        return train.train(b.student, b.loss, trajs, targets, self.config, self.run, key)

    def target_bytes(self) -> int:
        return TargetStore(self.run.file(files.TARGETS)).bytes()


def workload(queries: int = 32, samples: int = 2, tokens: int = 64, epochs: int = 4, prompt_tokens: int = 600,
             batch_size: int = 8, heldout: int = 16, seed: int = 0) -> Workload:
    """Load the embedded model and sample the training and held-out trajectories (seeded)."""
    handle = models.load("smollm2-135m", "float32", "cpu")
    prompt = system_prompt(handle.tokenizer, prompt_tokens)
    config = BakeConfig(prompt=prompt, model="smollm2-135m", dtype="float32", device="cpu",
                        samples_per_query=samples, max_new_tokens=tokens, min_new_tokens=tokens,
                        epochs=epochs, batch_size=batch_size, progress=False, lr=1e-3, seed=seed)
    teacher = HFTeacher()
    teacher.setup(config)
    renderer = Renderer(handle.tokenizer, prompt, config.length_limit(handle.model.config.max_position_embeddings))
    steps = epochs * -(-queries * samples // batch_size)
    work = Workload(config, teacher, handle.tokenizer, steps)
    work.baker = work.baker_for(config)
    t0 = time.perf_counter()
    work.trajs = sample_split(teacher, renderer, load_queries(None, "train", queries), samples, config, {})[0]
    work.held = sample_split(teacher, renderer, load_queries(None, "heldout", heldout), 1, config, {},
                             split="heldout")[0]
    work.generate_s = time.perf_counter() - t0
    return work


def scoring_trajectories(tokenizer, queries, prompt_tokens: int, tokens: int) -> list:
    """One trajectory per query behind a system prompt of ``prompt_tokens`` tokens, with a
    fixed response of ``tokens`` tokens."""
    prompt = system_prompt(tokenizer, prompt_tokens) or " "
    renderer = Renderer(tokenizer, prompt, max_length=prompt_tokens + 512)
    filler = tokenizer("The answer is simple and short. " * 20, add_special_tokens=False)["input_ids"][:tokens]
    return [renderer.trajectory(q, filler, 0) for q in queries]


def time_scoring(teacher: HFTeacher, tokenizer, queries, lengths: list[int], reuse: bool, tokens: int,
                 repeats: int = 1) -> dict:
    """Teacher scoring (top-20) at each system-prompt length in ``lengths``: the first call
    (which builds the prefix cache when reuse is on), then seconds per trajectory, the
    fastest of ``repeats`` passes over all of them (the machine's noise only ever adds
    time). The passes go round the lengths in turn, so a slow spell of this shared machine
    falls on every length alike rather than on one. Each entry also holds the arithmetic of
    a pass (:func:`scoring_flops`)."""
    out, setups = {}, {}
    for n in lengths:
        trajs = scoring_trajectories(tokenizer, queries, n, tokens)
        teacher.prefixes = {"prompted": PrefixCache(), "unprompted": PrefixCache()} if reuse else None
        start = time.perf_counter()
        teacher.score(trajs[:2], top_k=20, full=False)
        cached = common_prefix([t.prompted_ids for t in trajs]) if reuse else 0
        setups[n] = (trajs, teacher.prefixes)
        out[n] = {"first_call_s": time.perf_counter() - start, "passes_s": [],
                  "gflop_per_trajectory": scoring_flops(teacher.handle.model.config, trajs, cached) / len(trajs) / 1e9}
    for _ in range(repeats):
        for n in lengths:
            trajs, teacher.prefixes = setups[n]
            start = time.perf_counter()
            teacher.score(trajs, top_k=20, full=False)
            out[n]["passes_s"].append((time.perf_counter() - start) / len(trajs))
    for row in out.values():
        row["per_trajectory_s"] = min(row["passes_s"])
    return {f"{n}{'_reuse' if reuse else ''}": row for n, row in out.items()}


def scoring_flops(config, trajs, cached: int) -> float:
    """Multiply-add FLOPs of scoring ``trajs`` when their first ``cached`` tokens come from a
    prefix cache: the decoder's linear layers for every other token, attention to every key
    before it (the cached prompt included), and the output layer at response positions.

    The ratio of two such counts is what the scoring time's ratio would be if every
    operation ran at the same speed: the part of the time that is arithmetic, not overhead.
    """
    d, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    linear = 2 * layers * (2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * inter)
    per_key = 4 * layers * heads * head_dim  # scores and the weighted sum of values
    total = 0
    for t in trajs:
        n = len(t.prompted_ids)
        total += (n - cached) * linear + per_key * (n * (n + 1) - cached * (cached + 1)) // 2
        total += t.response_len * 2 * d * config.vocab_size
    return float(total)


def _vm(field: str) -> float:
    """A /proc/self/status memory field in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


RSS_MODES = ("seed000", "promptbake", "naive", "chunked", "decoder")


def rss_mode(mode: str, tokens: int, prompt_tokens: int, batch: int = 1) -> None:
    """Subprocess: one full_kl step at ``tokens`` response positions; print its peak RSS.

    Two pairs of modes. The whole steps, on one trajectory with a ``prompt_tokens``
    system prompt and a LoRA student: ``seed000`` (the prompted teacher recomputed,
    then full [T, V] logits and KL) and ``promptbake`` (the default: the teacher scores
    once into hidden-state targets held as the cache stores them, then the student's
    chunked full_kl step), each measured from the loaded model. The loss alone, with the
    teacher's targets loaded beforehand: ``naive`` ([T, V] logits, log_softmax,
    kl_div), ``chunked`` (FullKLLoss from hidden states) and ``decoder`` (the
    decoder's forward and backward with no loss: the floor both share), on
    ``batch`` sequences of ``tokens`` tokens.
    The peak (VmHWM) is reset once the model is loaded; the increment over that
    point is reported too.
    """
    from promptbake.builtin.losses import FullKLLoss
    from promptbake.builtin.scoring import split_head
    from promptbake.core.interfaces import BatchTargets

    if mode in ("seed000", "promptbake"):
        handle = models.load("smollm2-135m", "float32", "cpu")
        prompt = system_prompt(handle.tokenizer, prompt_tokens)
        config = BakeConfig(prompt=prompt, model="smollm2-135m", dtype="float32", device="cpu", progress=False)
        student = PeftStudent()
        student.setup(config, 1)
        filler = handle.tokenizer("The answer is simple and short. " * (tokens // 4), add_special_tokens=False)
        renderer = Renderer(handle.tokenizer, prompt, max_length=prompt_tokens + tokens + 256)
        traj = renderer.trajectory(load_queries(None, "train", 1)[0], filler["input_ids"][:tokens], 0)
        teacher = HFTeacher()
        teacher.setup(config)  # the same weights as the student (one copy), its adapter disabled
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
        base = _vm("VmRSS")
        if mode == "seed000":
            naive_step(student, [traj])
        else:
            # The default's targets (the teacher's hidden states, as Baker.score holds them)
            targets = score_as_stored(teacher, [traj], "hidden", None)
            student.step([[(traj, targets[0])]], FullKLLoss())
        peak = _vm("VmHWM")
        print(json.dumps({"peak_rss_mib": peak, "loaded_rss_mib": base, "increment_mib": peak - base,
                          "response_tokens": traj.response_len, "prompted_tokens": len(traj.prompted_ids)}))
        return

    handle = models.load("smollm2-135m", "float32", "cpu")
    model = handle.model
    for p in model.parameters():  # gradients flow through the output layer into the model,
        p.requires_grad_(False)   # as for a LoRA student, without full weight gradients
    model.model.norm.weight.requires_grad_(True)
    vocab = model.config.vocab_size
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch, tokens))
    teacher = torch.log_softmax(torch.randn(batch * tokens, vocab), -1).half()  # cached fp16 targets
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    base = _vm("VmRSS")
    if mode == "decoder":  # the floor both share: the decoder's forward, no loss at all
        decoder, _ = split_head(model)
        decoder(input_ids=ids).last_hidden_state.sum().backward()
    elif mode == "naive":
        logits = model(input_ids=ids).logits.flatten(0, 1)  # [B*T, V] fp32, then [B*T, V] temporaries
        loss = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), teacher.float(),
                                          log_target=True, reduction="sum")
    else:
        decoder, head = split_head(model)
        hidden = decoder(input_ids=ids).last_hidden_state.flatten(0, 1)
        loss = FullKLLoss().from_hidden(hidden, head, BatchTargets(sampled_ids=ids.flatten(), full_logprobs=teacher),
                                        1, chunk_size=FullKLLoss().chunk_size)
    if mode != "decoder":
        loss.backward()
    peak = _vm("VmHWM")
    print(json.dumps({"peak_rss_mib": peak, "loaded_rss_mib": base, "increment_mib": peak - base, "batch": batch}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--score-lengths", default="0,512,2048")
    ap.add_argument("--score-repeats", type=int, default=3,
                    help="Timed passes per prompt length with prefix reuse; the fastest counts (default: 3).")
    ap.add_argument("--rss-tokens", type=int, default=1024)
    ap.add_argument("--rss-batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rss-only", action="store_true", help="Only the peak-RSS measurements.")
    ap.add_argument("--wide-scoring", action=argparse.BooleanOptionalAction, default=True,
                    help="Also time scoring on a wider random-weight model (default: on).")
    ap.add_argument("--wide-only", action="store_true", help="Only the wider model's scoring times.")
    ap.add_argument("--scoring-only", action="store_true",
                    help="Only the scoring times with prefix reuse (and the wider model's, unless --no-wide-scoring).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of generation, LoRA init and batch order.")
    ap.add_argument("--default-and-naive", action="store_true",
                    help="Run only the default and naive variants (to see how held-out KL moves with --seed).")
    ap.add_argument("--extra-k", default="20,64,256",
                    help="Also run the cached path with topk_kl at these K (comma-separated; empty: none).")
    ap.add_argument("--json", default="benchmarks/results/bake_speed.json")
    ap.add_argument("--rss-mode", choices=RSS_MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_only:
        rss = measure_rss(args)
        print(json.dumps({"full_kl_rss_mib": rss, "ratios": rss_ratios(rss)}, indent=2))
        return
    if args.rss_mode:
        rss_mode(args.rss_mode, args.rss_tokens, args.prompt_tokens, args.rss_batch)
        return

    torch.manual_seed(0)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                     "torch": torch.__version__, "settings": vars(args)}
    if args.wide_only or args.scoring_only:
        handle = models.load("smollm2-135m", "float32", "cpu")
        config = BakeConfig(prompt="x", model="smollm2-135m", dtype="float32", device="cpu", progress=False)
        queries, lengths = load_queries(None, "train", 16), [int(x) for x in args.score_lengths.split(",")]
        out = {}
        if args.scoring_only:
            teacher = HFTeacher()
            teacher.setup(config)
            out["scoring_s_per_trajectory"] = time_scoring(teacher, handle.tokenizer, queries, lengths, True,
                                                           args.tokens, args.score_repeats)
        if args.wide_scoring or args.wide_only:
            out["wide_scoring_s_per_trajectory"] = wide_scoring(config, handle.tokenizer, queries, args)
        for name, rows in out.items():
            print(f"{name}: 2048/0 time {_per(rows, '2048_reuse') / _per(rows, '0_reuse'):.3f}, "
                  f"arithmetic {_flops(rows, '2048_reuse') / _flops(rows, '0_reuse'):.3f}")
        print(json.dumps(out, indent=2))
        return
    work = workload(args.queries, args.samples, args.tokens, args.epochs, args.prompt_tokens, args.batch_size,
                    args.heldout, args.seed)
    config, teacher, baker, trajs, held = work.config, work.teacher, work.baker, work.trajs, work.held
    student = baker.student
    plan = baker.epoch_batches(trajs)  # every loop below trains on these very batches
    results["generate_s"] = work.generate_s
    results["response_tokens"] = sum(t.response_len for t in trajs)
    print(f"{len(trajs)} trajectories, {results['response_tokens']} response tokens, "
          f"prompted length ~{len(trajs[0].prompted_ids)}", flush=True)

    # default: score once, then train on cached targets
    t0 = time.perf_counter()
    targets = baker.cached_score(trajs)
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    baker.train(trajs, targets)
    default_train_s = time.perf_counter() - t0
    results["default"] = {"loss": baker.config.loss, "targets": baker.target_kind(),
                          "cache_bytes_per_token": baker.target_bytes()
                          / results["response_tokens"],
                          "score_s": score_s, "train_s": default_train_s,
                          "total_s": score_s + default_train_s,
                          **_kl(heldout_metrics(teacher, student, held, 20, 8, False))}
    student.close()
    print("default", json.dumps(results["default"]), flush=True)

    def cached_variant(name: str, cfg: BakeConfig, **baker_options: str) -> None:
        """promptbake's cached path with other settings: score once, train, held-out KL."""
        variant = work.baker_for(cfg, **baker_options)
        t0 = time.perf_counter()
        variant_targets = variant.cached_score(trajs)
        row = {"score_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        variant.train(trajs, variant_targets)
        row.update(train_s=time.perf_counter() - t0, **_kl(heldout_metrics(teacher, variant.student, held, 20, 8, False)))
        row["total_s"] = row["score_s"] + row["train_s"]
        row["cache_bytes_per_token"] = variant.target_bytes() / results["response_tokens"]
        results[name] = row
        variant.student.close()
        print(name, json.dumps(row), flush=True)

    if not args.default_and_naive:
        # the cached path with top-K targets (what hosted teachers give): how much the tail bucket costs
        for k in [int(x) for x in args.extra_k.split(",") if x.strip()]:
            cached_variant(f"topk_kl_k{k}", replace(config, loss="topk_kl", top_k=k))

        # lower bound: the same one scoring pass + bare forward+backward on the same batches
        student = work.fresh_student()
        bare_s = bare_train(student, trajs, targets, plan)
        student.close()
        results["lower_bound"] = {"score_s": score_s, "train_s": bare_s, "total_s": score_s + bare_s}
        print("lower bound", json.dumps(results["lower_bound"]), flush=True)

    # naive: the teacher recomputed every step, full [B, T, V] KL
    student = work.fresh_student()
    naive_s = naive_train(student, trajs, plan)
    results["naive"] = {"total_s": naive_s, **_kl(heldout_metrics(teacher, student, held, 20, 8, False))}
    student.close()
    print("naive", json.dumps(results["naive"]), flush=True)
    if args.default_and_naive:
        results["ratios"] = {"naive_over_default": results["naive"]["total_s"] / results["default"]["total_s"],
                             "heldout_kl_default_over_naive":
                                 results["default"]["heldout_kl_baked"] / results["naive"]["heldout_kl_baked"]}
        print(json.dumps(results["ratios"]))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
        return

    # scoring time per trajectory vs system-prompt length
    queries = load_queries(None, "train", 16)
    lengths = [int(x) for x in args.score_lengths.split(",")]
    scoring = {**time_scoring(teacher, work.tokenizer, queries, lengths, False, args.tokens),
               **time_scoring(teacher, work.tokenizer, queries, lengths, True, args.tokens, args.score_repeats)}
    for n in lengths:
        print(f"scoring at {n} prompt tokens: {scoring[str(n)]['per_trajectory_s']:.3f} s/traj plain, "
              f"{scoring[f'{n}_reuse']['per_trajectory_s']:.3f} with reuse", flush=True)
    results["scoring_s_per_trajectory"] = scoring
    if args.wide_scoring:
        results["wide_scoring_s_per_trajectory"] = wide_scoring(config, work.tokenizer, queries, args)

    results["full_kl_rss_mib"] = measure_rss(args)
    results["ratios"] = {
        "naive_over_default": results["naive"]["total_s"] / results["default"]["total_s"],
        "default_over_lower_bound": results["default"]["total_s"] / results["lower_bound"]["total_s"],
        "scoring_2048_over_0_with_reuse": _per(scoring, "2048_reuse") / _per(scoring, "0_reuse"),
        "scoring_2048_over_0_plain": _per(scoring, "2048") / _per(scoring, "0"),
        # the same ratio of arithmetic: what the time's ratio would be with no overhead anywhere
        "scoring_2048_over_0_flops_with_reuse": _flops(scoring, "2048_reuse") / _flops(scoring, "0_reuse"),
        **({"wide_scoring_2048_over_0_with_reuse": _per(results["wide_scoring_s_per_trajectory"], "2048_reuse")
            / _per(results["wide_scoring_s_per_trajectory"], "0_reuse"),
            "wide_scoring_2048_over_0_flops_with_reuse": _flops(results["wide_scoring_s_per_trajectory"], "2048_reuse")
            / _flops(results["wide_scoring_s_per_trajectory"], "0_reuse")} if args.wide_scoring else {}),
        **rss_ratios(results["full_kl_rss_mib"]),
    }
    naive_kl = results["naive"]["heldout_kl_baked"]
    for name in ["default", *[k for k in results if k.startswith("topk_kl_k")]]:
        results["ratios"][f"heldout_kl_{name}_over_naive"] = results[name]["heldout_kl_baked"] / naive_kl
        results["ratios"][f"naive_over_{name}"] = results["naive"]["total_s"] / results[name]["total_s"]
    _table(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


WIDE = "bench-wide-llama"


def wide_scoring(config: BakeConfig, tokenizer, queries, args: argparse.Namespace) -> dict:
    """Scoring time with prefix reuse at each prompt length on a wider model (random weights,
    SmolLM2's vocabulary; hidden 2,048, 8 layers, 32 heads, 8 KV heads): where attention to the
    prompt is a smaller share of each token's work than in the 576-wide SmolLM2-135M."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=8,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                        tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(shape).eval()
    handle = models.ModelHandle(spec=WIDE, model=model, tokenizer=tokenizer, device="cpu")
    models.register_handle(handle, "float32")
    teacher = HFTeacher()
    teacher.setup(replace(config, model=WIDE))
    out = time_scoring(teacher, tokenizer, queries, [int(x) for x in args.score_lengths.split(",")], True,
                       args.tokens, args.score_repeats)
    for key, row in out.items():
        print(f"wide model, scoring at {key.split('_')[0]} prompt tokens: {row['per_trajectory_s']:.3f} s/traj "
              f"with reuse", flush=True)
    models.release(handle)  # the wide model's 0.5 B float32 weights
    return out


def measure_rss(args: argparse.Namespace) -> dict:
    """Peak RSS of each mode in its own process: the loss alone on 1 and 8 sequences (the
    decoder-only floor on 1), and the whole LoRA step on one sequence."""
    runs = [(mode, 1) for mode in RSS_MODES] + [(mode, 8) for mode in ("naive", "chunked")]
    rss = {}
    for mode, batch in runs:
        out = subprocess.run([sys.executable, __file__, "--rss-mode", mode, "--rss-tokens", str(args.rss_tokens),
                              "--rss-batch", str(batch), "--prompt-tokens", str(args.prompt_tokens)],
                             capture_output=True, text=True, check=True)
        rss[f"{mode}_b{batch}"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS {mode} x{batch}: {rss[f'{mode}_b{batch}']['peak_rss_mib']:.0f} MiB", flush=True)
    return rss


def rss_ratios(rss: dict) -> dict:
    out = {}
    for b in (1, 8):
        naive, chunked, floor = rss[f"naive_b{b}"], rss[f"chunked_b{b}"], rss.get(f"decoder_b{b}")
        out[f"full_kl_peak_rss_chunked_over_naive_b{b}"] = chunked["peak_rss_mib"] / naive["peak_rss_mib"]
        out[f"full_kl_rss_increment_chunked_over_naive_b{b}"] = chunked["increment_mib"] / naive["increment_mib"]
        if floor is not None:
            out[f"full_kl_peak_rss_floor_over_naive_b{b}"] = floor["peak_rss_mib"] / naive["peak_rss_mib"]
    out["full_kl_step_peak_rss_promptbake_over_seed000"] = (rss["promptbake_b1"]["peak_rss_mib"]
                                                            / rss["seed000_b1"]["peak_rss_mib"])
    return out


def _per(scoring: dict, key: str) -> float:
    return scoring[key]["per_trajectory_s"] if key in scoring else float("nan")


def _flops(scoring: dict, key: str) -> float:
    return scoring[key]["gflop_per_trajectory"] if key in scoring else float("nan")


def _kl(e: dict) -> dict:
    return {"heldout_kl_baked": e["kl_prompted_baked"], "heldout_kl_base": e["kl_prompted_base"],
            "gap_closed": e["gap_closed"]}


def _table(r: dict) -> None:
    print("\n| variant | total s | held-out KL |")
    print("|---|---|---|")
    names = ["naive", "default", *[k for k in r if k.startswith("topk_kl_k")], "lower_bound"]
    for name in names:
        v = r[name]
        print(f"| {name} | {v['total_s']:.1f} | {v.get('heldout_kl_baked', float('nan')):.4f} |")
    for k, v in r["ratios"].items():
        print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
