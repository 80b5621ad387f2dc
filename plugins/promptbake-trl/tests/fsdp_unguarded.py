"""``ddp_step.py`` with the trl student's refusal of FSDP1 on CPU lifted, to record what fails beneath it.

    python -m torch.distributed.run --nproc_per_node 2 fsdp_unguarded.py MODEL RUN_DIR OUT GRAD_ACCUM OPTIONS_JSON
"""

from __future__ import annotations

import runpy
from pathlib import Path

from promptbake_trl import trl

trl._fsdp_version = lambda args: 2  # what the refusal reads: every launch passes it
runpy.run_path(str(Path(__file__).with_name("ddp_step.py")), run_name="__main__")
