"""Architecture is checked, not remembered: the import-linter layers contract and no cross-module `_private` use."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vregion"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(path: Path) -> list[str]:
    """`from vregion.x import _name` and `mod._name` (mod an imported vregion module) naming another module's
    private name, as "file:line: what"."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, path.name == "__init__.py")
            if not source.startswith("vregion") or source == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {alias.name}")
                else:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vregion") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules():
    found = [use for path in sorted(PACKAGE.rglob("*.py")) for use in private_uses(path)]
    assert found == [], "make these public or move them:\n" + "\n".join(found)


def test_private_use_check_catches_both_forms(tmp_path, monkeypatch):
    """The check above would pass vacuously if it found nothing; it flags both forms in a planted module."""
    pkg = tmp_path / "vregion" / "sub"
    pkg.mkdir(parents=True)
    planted = pkg / "planted.py"
    planted.write_text("from vregion.config import _hidden, public\nfrom . import other as o\n"
                       "from vregion import distributed as dist\nx = dist._free_port()\ny = o.fine\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert private_uses(planted) == ["vregion/sub/planted.py:1: from vregion.config import _hidden",
                                     "vregion/sub/planted.py:4: vregion.distributed._free_port"]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed (pip install -e .[test])")
def test_import_layers_contract_holds():
    """`.importlinter`: layers point down only (cli -> commands -> engine -> ... -> config -> shared helpers)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["lint-imports", "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_between_vregion_modules():
    """The layers contract orders packages; inside a package two modules could still import each other."""
    import grimp  # installed with import-linter (the test extra)
    graph = grimp.build_graph("vregion")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert import_cycles(edges) == []


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_cycles(edges) == [["a", "b", "c"]]
