"""promptbake: bake a system prompt into a model's weights.

``import promptbake`` is cheap: torch and transformers are imported only when a
backend that needs them is built.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .baker import Baker, BakeResult
from .config import BakeConfig
from .errors import (
    AlignmentError,
    BackendError,
    CapabilityError,
    ConfigError,
    DuplicateBackendError,
    MissingDependencyError,
    PromptbakeError,
    UnknownBackendError,
)
from .hookspecs import hookimpl
from .interfaces import (
    BatchTargets,
    Loss,
    SamplingConfig,
    Student,
    StudentCapabilities,
    Teacher,
    TeacherCapabilities,
)
from .plugins import load_plugins
from .registry import names as backend_names
from .types import Prefix, Query, Sample, Targets, Trajectory

__all__ = [
    "AlignmentError",
    "BackendError",
    "BakeConfig",
    "BakeResult",
    "Baker",
    "BatchTargets",
    "CapabilityError",
    "ConfigError",
    "DuplicateBackendError",
    "Loss",
    "MissingDependencyError",
    "Prefix",
    "PromptbakeError",
    "Query",
    "Sample",
    "SamplingConfig",
    "Student",
    "StudentCapabilities",
    "Targets",
    "Teacher",
    "TeacherCapabilities",
    "Trajectory",
    "UnknownBackendError",
    "__version__",
    "backend_names",
    "hookimpl",
    "load_plugins",
]
