"""The package's import structure: no cycles between modules, and every import goes down the layers

    config, errors < model < data < io < inference < eval < training < commands (moe_lm/*.py)

so a reader can take in each layer knowing only those below it. Every `import` counts, those inside functions
too. The checks run on any package directory, and are shown to fail on a planted cycle and an upward import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "moe_lm"
LAYERS = {"config": 0, "errors": 0, "model": 1, "data": 2, "io": 3, "inference": 4, "eval": 5, "training": 6}
COMMANDS = 7  # moe_lm/*.py: the commands and their shared command line


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package at `root` (a package is its __init__)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: line of the first such import}."""
    names = module_names(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in names.items():
        edges = graph.setdefault(name, {})
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import mod` depends on pkg.mod when it is a module, else on pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            for target in targets:
                while target and target not in names:  # `import moe_lm.model.moe` names the module itself
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def layer_of(module: str, layers: dict[str, int] = LAYERS, top: int = COMMANDS) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package's __init__
        return top
    return layers.get(parts[1], top)


def layer_violations(root: Path, layers: dict[str, int] = LAYERS, top: int = COMMANDS) -> list[str]:
    """'file:line: a imports b (layer i above j)' for each import that goes up the layers."""
    names = module_names(root)
    bad = []
    for module, edges in sorted(import_graph(root).items()):
        for target, line in sorted(edges.items()):
            if layer_of(target, layers, top) > layer_of(module, layers, top):
                bad.append(f"{names[module].relative_to(root.parent)}:{line}: {module} imports {target}, a higher "
                           f"layer")
    return bad


def test_no_import_cycles() -> None:
    assert find_cycles(import_graph(PACKAGE)) == []


def test_imports_go_down_the_layers() -> None:
    assert layer_violations(PACKAGE) == []


def test_every_subpackage_has_a_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} - {"resources"}
    assert subpackages <= set(LAYERS), f"give these a layer in LAYERS: {sorted(subpackages - set(LAYERS))}"


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pkg"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_a_planted_cycle_and_an_upward_import_are_found(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from pkg.high.e import g\n",  # an upward import inside a function
        "high/__init__.py": "",
        "high/b.py": "from pkg.high import c\n",
        "high/c.py": "import pkg.high.b\nfrom . import d\n",
        "high/d.py": "from ..low import a\n",
        "high/e.py": "g = 1\n",
    })
    layers = {"low": 0, "high": 1}
    assert find_cycles(import_graph(pkg)) == [["pkg.high.b", "pkg.high.c"]]
    assert layer_violations(pkg, layers, top=2) == ["pkg/low/a.py:2: pkg.low.a imports pkg.high.e, a higher layer"]
    assert import_graph(pkg)["pkg.high.d"] == {"pkg.low.a": 1}  # relative imports resolve


def test_a_clean_package_passes(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"__init__.py": "", "low/__init__.py": "", "low/a.py": "",
                              "high/__init__.py": "from pkg.low import a\n"})
    assert find_cycles(import_graph(pkg)) == []
    assert layer_violations(pkg, {"low": 0, "high": 1}, top=2) == []
