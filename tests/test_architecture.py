"""The shape of the code, enforced: one import direction without circles, and plugins that use
only the declared plugin API (docs/architecture.md, docs/plugins.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "promptbake"
# Layers, lowest first; a module may import its own layer and the layers below it (app: any).
LAYERS = {"core": 0, "run": 1, "stages": 2, "baker": 3, "app": 4}
# The built-in plugin stands beside the layers: like any plugin it uses the core only.
BUILTIN = "builtin"
# What plugins may import: the package (promptbake.core re-exported) and the documented HF building blocks.
PLUGIN_API = {"promptbake", "promptbake.builtin.peft", "promptbake.builtin.scoring", "promptbake.builtin.models"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("core", "run", "stages", BUILTIN):
        return parts[1]
    if module == "promptbake.baker":
        return "baker"
    return "app"  # promptbake itself, cli, techniques, reevaluate, compare


def imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) of every import in ``path`` outside ``if TYPE_CHECKING:`` blocks;
    ``from . import x`` counts as importing the submodule x."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").is_file()
                out.append((sub if is_module else target, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        edges[name] = {m for m, _ in imports(path) if m.startswith("promptbake.") and m != name}
    return edges


def test_imports_go_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        here = module_name(path)
        mine = layer_of(here)
        for target, line in imports(path):
            if not target.startswith("promptbake.") or layer_of(target) == mine:
                continue
            theirs = layer_of(target)
            if mine == BUILTIN:
                ok = theirs == "core"
            elif theirs == BUILTIN:
                ok = mine == "app"  # the app may use the built-in HF machinery (merge, compare)
            else:
                ok = LAYERS[theirs] < LAYERS[mine]
            if not ok:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target} ({theirs})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_circles():
    edges = graph()
    done: set[str] = set()
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycles.append(" -> ".join([*stack[stack.index(node):], node]))
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*stack, node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("plugin", sorted(p.name for p in (ROOT / "plugins").iterdir() if p.is_dir()))
def test_plugins_import_only_the_declared_api(plugin):
    wrong = []
    for path in (ROOT / "plugins" / plugin).glob("promptbake_*/**/*.py"):
        for target, line in imports(path):
            if (target == "promptbake" or target.startswith("promptbake.")) and target not in PLUGIN_API:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not wrong, "plugins reaching past the plugin API (docs/plugins.md):\n" + "\n".join(wrong)


def test_promptbake_never_uses_its_old_import_paths():
    from promptbake._moved import MOVED

    wrong = [f"{path.relative_to(ROOT)}:{line}: {target}" for path in PACKAGE.rglob("*.py")
             for target, line in imports(path) if target in MOVED]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("old", "name"), [
    ("promptbake.scoring", "sparse_targets"), ("promptbake.scoring", "response_logits"),
    ("promptbake.students.peft", "PeftStudent"), ("promptbake.teachers.hf", "HFTeacher"),
    ("promptbake.inference", "METADATA_FILE"), ("promptbake.interfaces", "Teacher"),
    ("promptbake.checkpoint", "save_torch_state"), ("promptbake.probes", "LanguageProbe"),
    ("promptbake.fidelity", "evaluate_run"), ("promptbake.models", "EMBEDDED"),
])
def test_the_old_import_paths_work_for_one_release_and_warn(old, name):
    import importlib
    import sys

    from promptbake._moved import MOVED

    for module in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        del sys.modules[module]  # imported by an earlier test: import it afresh
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to"):
        module = importlib.import_module(old)
    new = next(importlib.import_module(m) for m in MOVED[old] if hasattr(importlib.import_module(m), name))
    assert getattr(module, name) is getattr(new, name)


def test_every_module_is_small_and_the_baker_smaller():
    sizes = {path.relative_to(ROOT): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert sizes[Path("promptbake/baker.py")] <= 220
    assert not {p: n for p, n in sizes.items() if n > 450}
