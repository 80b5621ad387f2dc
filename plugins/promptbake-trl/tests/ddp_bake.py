"""``promptbake bake`` in this process (e.g. under torchrun), cut off in a chosen optimizer step.

    python ddp_bake.py STEP -- promptbake arguments...

With STEP > 0 every process raises in the first micro-batch of optimizer step STEP, as a
lost machine would end the launch; with 0 it runs the command unchanged.
"""

from __future__ import annotations

import sys

from promptbake_trl import trl

from promptbake import cli

cut = int(sys.argv[1])
args = sys.argv[sys.argv.index("--") + 1:]
calls = {"n": 0}
real = trl._BakeTrainer.compute_loss


def cutting(self, *a, **k):  # type: ignore[no-untyped-def]
    calls["n"] += 1
    if calls["n"] == (cut - 1) * self.args.gradient_accumulation_steps + 1:
        raise ConnectionError(f"cut off in step {cut}")
    return real(self, *a, **k)


if cut:
    trl._BakeTrainer.compute_loss = cutting
cli.main(args)
