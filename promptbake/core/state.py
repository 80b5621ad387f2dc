"""Training state without pickle, for students that checkpoint: trainable weights, optimizer
and scheduler state and the RNG state in safetensors, the rest in JSON (part of the plugin API:
the ``peft`` and ``trl`` students use it, and a third-party torch student can)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_json

if TYPE_CHECKING:
    import torch

TENSORS_FILE = "training_state.safetensors"


META_FILE = "training_state.json"


def save_torch_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any = None, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Trainable parameters, optimizer and scheduler state and torch's RNG state, pickle-free;
    ``extra`` tensors are stored beside them under their own names (:func:`load_torch_state` returns them)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {
        f"param.{name}": p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    tensors.update({f"extra.{name}": t.detach().contiguous().cpu() for name, t in (extra or {}).items()})
    save_file(tensors, str(folder / TENSORS_FILE))
    meta = {"param_groups": opt["param_groups"], "optimizer_scalars": scalars,
            "scheduler": scheduler.state_dict() if scheduler is not None else None}
    write_json(folder / META_FILE, meta)


def load_torch_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any = None) -> dict[str, torch.Tensor]:
    """Restore what :func:`save_torch_state` wrote into a model and optimizer built the same way;
    return the ``extra`` tensors it stored."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    tensors = load_file(str(folder / TENSORS_FILE))
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    _copy_params(tensors, model)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}


def load_weights(folder: str | Path, model: torch.nn.Module) -> None:
    """Only the trainable parameters of what :func:`save_torch_state` wrote (the training is over)."""
    from safetensors.torch import load_file

    _copy_params(load_file(str(Path(folder) / TENSORS_FILE)), model)


def _copy_params(tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                params[key[len("param."):]].copy_(value)
