"""Training a finished bake again in other ways, in one process: seconds and the held-out gap
closed by each epoch's adapter.

    python benchmarks/retrain.py runs/french examples/prompts/french.txt float32 bf16 [--json out.json]
    python benchmarks/retrain.py runs/french examples/prompts/french.txt float32 bf16_grads
    python benchmarks/retrain.py runs/french examples/prompts/french.txt epochs=2,lr=0.002

Each variant trains a fresh adapter (same seed) on a copy of the run's trajectories and cached
targets (no teacher calls), then measures every epoch's adapter on the run's held-out
trajectories as the evaluation stage does. A variant is ``float32`` (the bake as it ran),
``bf16`` (the peft student's ``bf16`` option: its decoder's forward and backward under bfloat16
autocast, the output layer, loss, weights and optimizer in float32), ``bf16_grads`` (its
``bf16_grads`` option: every forward in float32, the gradients through the frozen linear layers
from bfloat16 copies of their weights), ``bf16_forward`` (the decoder's frozen products from
those copies in the forward too), several joined with ``+``, or bake settings
(``key=value,...``: training settings such as epochs and lr; the trajectories stay the run's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from epoch_gap import epoch_gaps

from promptbake.baker import Baker
from promptbake.cli.base import read_prompt
from promptbake.run import files

TRAINED = (files.ADAPTER, files.CHECKPOINT, files.EPOCHS, files.EVAL, files.ANSWERS, files.REPORT, files.REPORT_PLOTS)


def untrained_copy(run_dir: Path, settings: dict) -> Path:
    """The run with its trajectories and targets, without what training and evaluation wrote,
    with ``settings`` in place of its own."""
    copy = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(run_dir, copy)
    config = copy / files.CONFIG
    config.write_text(json.dumps({**json.loads(config.read_text()), **settings}, indent=2))
    for name in TRAINED:
        path = copy / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    log = copy / files.METRICS
    kept = [line for line in log.read_text().splitlines() if json.loads(line).get("stage") not in ("train", "done")]
    log.write_text("".join(line + "\n" for line in kept))
    return copy


def settings_of(variant: str, config: dict) -> dict:
    """The settings a variant changes in the run's ``config``."""
    if variant == "float32":
        return {}
    flags = variant.split("+")  # the peft student's options, e.g. bf16_grads+bf16_forward
    if all(flag in ("bf16", "bf16_grads", "bf16_forward") for flag in flags):
        return {"student_options": {**config.get("student_options", {}), **dict.fromkeys(flags, True)}}
    return {k: json.loads(v) for k, v in (part.split("=", 1) for part in variant.split(","))}


def measure(run_dir: Path, prompt: str, variant: str) -> dict:
    config = json.loads((run_dir / files.CONFIG).read_text())
    copy = untrained_copy(run_dir, settings_of(variant, config))
    try:
        baker = Baker.resume(copy, prompt, progress=False, evaluate=False, resume=True)
        started = time.perf_counter()
        result = baker.run()
        seconds = time.perf_counter() - started
        return {"variant": variant, "train_s": round(result.metrics["train_s"], 1),
                "run_s": round(seconds, 1), "last_loss": result.metrics["last_loss"],
                "epochs": list(epoch_gaps(copy, prompt))}
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("prompt_file")
    parser.add_argument("variants", nargs="+", help="float32, bf16, bf16_grads or key=value,... settings")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prompt = read_prompt(args.prompt_file)
    rows = []
    for variant in args.variants:
        rows.append(measure(args.run_dir, prompt, variant))
        print(json.dumps(rows[-1]), flush=True)
    first = rows[0]
    for row in rows:
        print(f"{row['variant']}: training {row['train_s']} s ({first['train_s'] / row['train_s']:.2f}x "
              f"{first['variant']}'s speed), final gap closed {row['epochs'][-1]['gap_closed']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
