"""The plugin API: everything a teacher, student, loss or probe plugin may use, re-exported by
``promptbake`` itself (``from promptbake import Teacher, Targets, sparse_targets``).

Torch-free to import: helpers that need torch import it when called. docs/plugins.md
documents each name; ``tests/test_architecture.py`` checks that the plugins under
``plugins/`` use nothing else of promptbake (besides the documented HF building blocks in
``promptbake.builtin.peft``, ``promptbake.builtin.scoring`` and ``promptbake.builtin.models``).
"""

from __future__ import annotations

from .atomic import write_json, write_text
from .batching import batches
from .config import BakeConfig
from .decoding import EXTRAS as SAMPLING_EXTRAS
from .endpoints import Endpoint, EndpointDown, EndpointPool, endpoint_urls
from .errors import (
    AlignmentError,
    BackendError,
    CapabilityError,
    ConfigError,
    DuplicateBackendError,
    MissingDependencyError,
    PromptbakeError,
    PromptbakeWarning,
    UnknownBackendError,
    http_failure,
    server_detail,
)
from .hookspecs import hookimpl
from .interfaces import (
    BatchTargets,
    Exporter,
    ExportResult,
    Loss,
    SamplingConfig,
    Side,
    Student,
    StudentCapabilities,
    TargetKind,
    Teacher,
    TeacherCapabilities,
    pad_topk,
)
from .metadata import METADATA_FILE, read_metadata
from .plugins import load_plugins, temporary_plugin
from .probes import LogLik, Probe
from .progress import counter, progress
from .registry import names as backend_names
from .state import load_torch_state, load_weights, save_torch_state
from .targets import log1mexp, sparse_targets
from .types import (
    BakedRun,
    Prefix,
    PromptMixture,
    Query,
    Sample,
    Targets,
    Trajectory,
    prompt_sha256,
)

__all__ = [
    "METADATA_FILE",
    "SAMPLING_EXTRAS",
    "AlignmentError",
    "BackendError",
    "BakeConfig",
    "BakedRun",
    "BatchTargets",
    "CapabilityError",
    "ConfigError",
    "DuplicateBackendError",
    "Endpoint",
    "EndpointDown",
    "EndpointPool",
    "ExportResult",
    "Exporter",
    "LogLik",
    "Loss",
    "MissingDependencyError",
    "Prefix",
    "Probe",
    "PromptMixture",
    "PromptbakeError",
    "PromptbakeWarning",
    "Query",
    "Sample",
    "SamplingConfig",
    "Side",
    "Student",
    "StudentCapabilities",
    "TargetKind",
    "Targets",
    "Teacher",
    "TeacherCapabilities",
    "Trajectory",
    "UnknownBackendError",
    "backend_names",
    "batches",
    "counter",
    "endpoint_urls",
    "hookimpl",
    "http_failure",
    "load_plugins",
    "load_torch_state",
    "load_weights",
    "log1mexp",
    "pad_topk",
    "progress",
    "prompt_sha256",
    "read_metadata",
    "save_torch_state",
    "server_detail",
    "sparse_targets",
    "temporary_plugin",
    "write_json",
    "write_text",
]
