"""No pickle anywhere: tensors go through safetensors, any torch.load is weights_only=True."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for p in [*ROOT.glob("promptbake/**/*.py"), *ROOT.glob("plugins/*/promptbake_*/**/*.py")]]


def _calls(tree: ast.AST, owner: str, name: str):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                and isinstance(node.func.value, ast.Name) and node.func.value.id == owner):
            yield node


def test_sources_never_pickle():
    assert len(SOURCES) > 20
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & {str(n).split(".")[0] for n in names}, path
        assert not list(_calls(tree, "torch", "save")), f"{path}: torch.save pickles; use safetensors"
        for call in _calls(tree, "torch", "load"):
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, path


def is_pickle(data: bytes) -> bool:
    """Pickle protocol 2+ streams start with 0x80 then the protocol; torch.save writes a zip of them."""
    return (len(data) > 1 and data[0] == 0x80 and data[1] in range(2, 6)) or data.startswith(b"PK\x03\x04")


def test_the_pickle_detector_detects_pickles(tmp_path):
    import pickle

    import torch

    torch.save({"x": torch.ones(2)}, tmp_path / "t.pt")
    assert is_pickle(pickle.dumps({"a": 1})) and is_pickle((tmp_path / "t.pt").read_bytes())
    assert not is_pickle(b'{"json": true}')
