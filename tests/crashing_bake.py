"""Run the promptbake CLI in this process, killed with SIGKILL at a chosen point.

    python crashing_bake.py STAGE N SPY_FILE -- promptbake arguments...

STAGE is where the process kills itself on the N-th call (no cleanup, no
``finally``: the same as ``kill -9`` or a lost machine):

- ``generate``: saving a chunk of samples (its samples are computed, not saved);
- ``score``: writing a targets shard;
- ``train``: an optimizer step;
- ``checkpoint``: between writing a checkpoint's files and swapping it in;
- ``save``: between writing the adapter's files and swapping them in;
- ``none``: never.

Chunks and shards are made small so a tiny bake has several. Every teacher
call is appended to SPY_FILE (``{"generate": n_prefixes}`` / ``{"score": n}``)
so a test can tell what a resumed bake recomputed.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from promptbake import cli
from promptbake.builtin.hf import HFTeacher
from promptbake.builtin.peft import PeftStudent
from promptbake.run import cache, checkpoint
from promptbake.stages import generate as generation
from promptbake.stages import train

stage, nth, spy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
args = sys.argv[sys.argv.index("--") + 1:]
generation.CHUNK_QUERIES = 2
cache.SHARD_SIZE = 2
calls = {"n": 0}


def killing(fn):
    def wrapper(*a, **kw):
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **kw)
    return wrapper


def spying(name, fn):
    def wrapper(self, items, *a, **kw):
        with open(spy, "a", encoding="utf-8") as f:
            f.write(json.dumps({name: len(items)}) + "\n")
        return fn(self, items, *a, **kw)
    return wrapper


HFTeacher.generate = spying("generate", HFTeacher.generate)
HFTeacher.score = spying("score", HFTeacher.score)
if stage == "generate":
    generation.ChunkStore.write = killing(generation.ChunkStore.write)
elif stage == "score":
    cache.TargetStore.write_shard = killing(cache.TargetStore.write_shard)
elif stage == "train":
    PeftStudent.step = killing(PeftStudent.step)
elif stage == "checkpoint":
    checkpoint.write_manifest = killing(checkpoint.write_manifest)
elif stage == "save":
    train.write_manifest = killing(train.write_manifest)  # the adapter's manifest (train.save_adapter)
elif stage != "none":
    raise SystemExit(f"unknown stage {stage}")
cli.main(args)
