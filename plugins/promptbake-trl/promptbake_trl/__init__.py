"""promptbake-trl: the ``trl`` student, trained by the transformers/TRL Trainer on accelerate.

The class is named as a "module:Class" string so loading the plugin imports
neither transformers nor torch.
"""

from __future__ import annotations

from promptbake import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_students(register):  # type: ignore[no-untyped-def]
    register("trl", "promptbake_trl.trl:TRLStudent", aliases=("trainer",))
