"""One student step by loss and by how the output layer is taken, in one process.

On the bake_speed workload's trajectories (8 queries x 2 samples x 64 tokens behind the
600-token prompt, micro-batches of 8 = 512 response rows), the LoRA student's step with:

* ``ce``: cross-entropy on the sampled tokens (the floor every loss shares);
* ``topk_kl`` (K = 256) from whole [512, V] logits, and 256 rows at a time, each chunk's
  gradient taken as it goes (``Loss.from_hidden``, the peft student's default) or under
  activation checkpointing (the output layer and loss run again in backward: the
  previous method, kept here as the baseline);
* ``full_kl`` from float16 full log-probs, chunked the same two ways;
* ``full_kl`` from the teacher's hidden states (the default with hf + peft on one model).

Passes go round the variants in turn; the fastest of ``--repeats`` counts. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bake_speed import workload
from torch.utils.checkpoint import checkpoint

from promptbake.builtin.losses import CELoss, FullKLLoss, TopKKLLoss
from promptbake.core.interfaces import Loss
from promptbake.stages.score import score_as_stored


class Checkpointed:
    """A loss whose ``from_hidden`` recomputes each chunk in the backward pass (the baseline)."""

    def __init__(self, loss: Loss):
        self.loss = loss
        self.needs, self.name, self.chunk_size = loss.needs, loss.name, getattr(loss, "chunk_size", 256)

    def __call__(self, logits, targets, num_tokens):
        return self.loss(logits, targets, num_tokens)

    def from_hidden(self, hidden, head, targets, num_tokens, chunk_size=256):
        total = hidden.new_zeros(())
        for start in range(0, hidden.shape[0], chunk_size):
            part = targets.rows(slice(start, start + chunk_size))
            total = total + checkpoint(lambda h, p=part: p.weighted(self.loss.per_token(head(h), p)).sum(),
                                       hidden[start: start + chunk_size], use_reentrant=False)
        return total / max(num_tokens, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="benchmarks/results/head_chunks.json")
    args = ap.parse_args()
    work = workload(queries=args.queries, heldout=1)
    trajs, teacher = work.trajs, work.teacher
    targets = {kind: list(score_as_stored(teacher, trajs, kind, 256)) for kind in ("topk", "full", "hidden")}
    work.baker.student.close()
    student = work.fresh_student()
    batches = [list(range(i, i + 8)) for i in range(0, len(trajs), 8)]
    # (name, loss, targets, head_chunk: None = whole logits)
    variants = [
        ("ce", CELoss(), targets["topk"], None),
        ("topk_kl whole logits", TopKKLLoss(), targets["topk"], None),
        ("topk_kl chunks, gradients as it goes", TopKKLLoss(), targets["topk"], 256),
        ("topk_kl chunks, checkpointed", Checkpointed(TopKKLLoss()), targets["topk"], 256),
        ("full_kl fp16 log-probs, gradients as it goes", FullKLLoss(), targets["full"], 256),
        ("full_kl fp16 log-probs, checkpointed", Checkpointed(FullKLLoss()), targets["full"], 256),
        ("full_kl hidden states, gradients as it goes", FullKLLoss(), targets["hidden"], 256),
    ]
    passes: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for _ in range(args.repeats):
        for name, loss, tgts, chunk in variants:
            student.head_chunk = chunk
            start = time.perf_counter()
            for mb in batches:
                student.step([[(trajs[i], tgts[i]) for i in mb]], loss)
            passes[name].append((time.perf_counter() - start) / len(batches))
    student.close()
    floor = min(passes["ce"])
    out = {"machine": f"{torch.get_num_threads()} threads", "rows_per_step": sum(trajs[i].response_len for i in batches[0]),
           "s_per_step": {name: min(p) for name, p in passes.items()}, "passes_s": passes}
    out["over_ce"] = {name: s / floor for name, s in out["s_per_step"].items()}
    for name, s in out["s_per_step"].items():
        print(f"{name:48s} {s:.3f} s/step  {out['over_ce'][name]:.3f}x ce")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
