"""promptbake: bake a system prompt into a model's weights.

``import promptbake`` is cheap: torch and transformers are imported only when a
backend that needs them is built. The package's names are the Baker and the plugin API
(``promptbake.core``): what a teacher, student, loss or probe plugin may use.
"""

from __future__ import annotations

from . import _moved
from .baker import Baker, BakeResult
from .core import *
from .core import __all__ as _api
from .core.metadata import VERSION as __version__

_moved.install()  # 0.1's import paths, for one release

__all__ = ["Baker", "BakeResult", "__version__", *_api]  # noqa: PLE0604 - names of promptbake.core.__all__
