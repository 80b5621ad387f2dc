"""One optimizer step of the trl student on a fixed global batch, in 1 process or under torchrun.

    python ddp_step.py MODEL RUN_DIR OUT GRAD_ACCUM [STUDENT_OPTIONS_JSON]
    python -m torch.distributed.run --nproc_per_node 2 ddp_step.py MODEL RUN_DIR OUT GRAD_ACCUM [...]

Trains with plain SGD (no momentum, no clipping, no warmup), so the update is
-lr times the gradient and shows any error in the loss normalisation; rank 0
writes the update of every trainable tensor to OUT (safetensors). STUDENT_OPTIONS_JSON: more
TrainingArguments, e.g. '{"fsdp": true}' (under FSDP the student gathers the trained weights into
the unsharded model read here when training ends).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from promptbake_trl.trl import TRLStudent
from safetensors.torch import save_file

from promptbake.builtin.losses import TopKKLLoss
from promptbake.core.config import BakeConfig
from promptbake.run.cache import TargetStore
from promptbake.run.rundir import RunDir

GLOBAL_BATCH = 8
LR = 100.0  # the tiny model's KL is ~1e-5: a large step makes the update measurable


def main() -> None:
    model, run_dir, out, grad_accum = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    trajectories = RunDir(run_dir).read_trajectories()[:GLOBAL_BATCH]
    key = json.loads((run_dir / "targets" / "index.json").read_text())["key"]
    targets = TargetStore(run_dir / "targets").read(key)[:GLOBAL_BATCH]
    micro = GLOBAL_BATCH // grad_accum
    config = BakeConfig(prompt="p", model=model, batch_size=micro, grad_accum=grad_accum, lr=LR, warmup_ratio=0.0,
                        max_grad_norm=0.0, epochs=1, progress=False, device="cpu")
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}  # e.g. {"fsdp": true}
    student = TRLStudent(optim="sgd", **options)
    student.setup(config, total_steps=1)
    params = {n: p for n, p in student.handle.peft_model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    steps = [[list(range(i * micro, (i + 1) * micro)) for i in range(grad_accum)]]
    result = student.fit(trajectories, targets, steps, TopKKLLoss(), lambda record: None)
    if student.trainer.accelerator.is_main_process:
        update = {n: (p.detach() - before[n]).contiguous() for n, p in params.items()}
        save_file(update, out, metadata={"loss": repr(result["last_loss"]),
                                         "processes": str(student.trainer.accelerator.num_processes),
                                         "fsdp": str(student.trainer.is_fsdp_enabled)})


if __name__ == "__main__":
    main()
