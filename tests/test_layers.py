"""Imports point one way (DESIGN "Layers"; README "Layout").

Between packages: simulation -> server, client -> strategies -> xr0_core. Inside xr0_core:
base -> data / models -> ssl -> train -> privacy / eval / secagg / export -> site -> audit -> deploy / report ->
dashboard -> cli.
Every ``import`` statement counts wherever it stands (module level, inside a function, under ``if``), relative
ones resolved; a module may import its own area and the areas of lower layers, never a peer or a higher one,
and no chain of imports between xr0_core modules may come back to where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level names it must never import
FORBIDDEN = {
    "xr0_core": {"flwr", "strategies", "server", "client", "simulation", "cli"},
    "strategies": {"server", "client", "simulation", "cli"},
    "server": {"client", "simulation", "cli"},
    "client": {"server", "simulation", "cli"},
    "simulation": {"cli"},
}

# Inside xr0_core, lowest layer first. An area is a sub-package or a root module; root modules not named
# here are "base" (config, registry, runtime, atomic, record_keys, console, htmlpage).
XR0_CORE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("base",),
    ("data", "models"),
    ("ssl",),
    ("train",),
    ("privacy", "eval", "secagg", "export"),
    ("site",),
    ("audit",),
    ("deploy", "report"),
    ("dashboard",),
    ("cli",),
)
ROOT_MODULE_AREAS = {"export": "export", "export_text": "export", "report": "report", "model_card": "report"}
LEVEL = {area: i for i, layer in enumerate(XR0_CORE_LAYERS) for area in layer}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports (absolute dotted names; ``from a import b`` is ``a.b`` when that is a module
    in ``known``, else ``a``), from every import statement in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import z
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # a sub-module by name, else a name defined in ``module`` itself
                sub = f"{module}.{alias.name}"
                out.add(sub if sub in known else module)
    return out


def imported_roots(path: Path) -> set[str]:
    return {m.split(".")[0] for m in imports(path, path.parent, set()) if m}


def graph(root: Path, package: str = "xr0_core") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (the package's own ``__init__`` chain not counted)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    known = set(files)
    return {m: {t for t in imports(p, root, known) if t in known and t != m} for m, p in files.items()}


def area(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package's own __init__
    if len(parts) == 2 and parts[1] not in LEVEL:
        return ROOT_MODULE_AREAS.get(parts[1], "base")  # a root module
    return parts[1]


def upward_arrows(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            a, b = area(src), area(dst)
            if a != b and LEVEL[b] >= LEVEL[a]:
                bad.append(f"{src} -> {dst} ({a} may not import {b})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# ---------------------------------------------------------------------------------------------- the tree
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_the_wrong_way(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} imports layers above it: {bad}"


def test_every_xr0_core_area_has_a_layer():
    areas = {area(m) for m in graph(ROOT)}
    assert areas <= set(LEVEL), f"place these in XR0_CORE_LAYERS (and README's Layout): {sorted(areas - set(LEVEL))}"


def test_xr0_core_imports_point_down_inside():
    bad = upward_arrows(graph(ROOT))
    assert not bad, "imports inside xr0_core that point up or sideways:\n" + "\n".join(bad)


def test_no_import_cycle_inside_xr0_core():
    found = cycles(graph(ROOT))
    assert not found, f"import cycles inside xr0_core (file level or through function-level imports): {found}"


# ---------------------------------------------------------------------------------------------- the checker
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from flwr.app import Message\n    import server.run\n")
    assert {"flwr", "server"} <= imported_roots(f)


def test_the_checker_flags_a_function_level_upward_arrow_and_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "xr0_core/__init__.py": "",
        "xr0_core/train/__init__.py": "",
        "xr0_core/train/loop.py": "def step():\n    from xr0_core.privacy.dp import noise\n",
        "xr0_core/privacy/__init__.py": "",
        "xr0_core/privacy/dp.py": "from ..train import loop\n\ndef noise():\n    pass\n",
        "xr0_core/eval/__init__.py": "",
        "xr0_core/eval/a.py": "from . import b\n",
        "xr0_core/eval/b.py": "if True:\n    import xr0_core.eval.a\n",
    })
    edges = graph(root)
    assert edges["xr0_core.privacy.dp"] == {"xr0_core.train.loop"}  # relative import resolved
    assert upward_arrows(edges) == ["xr0_core.train.loop -> xr0_core.privacy.dp (train may not import privacy)"]
    assert sorted(cycles(edges)) == [["xr0_core.eval.a", "xr0_core.eval.b"],
                                     ["xr0_core.privacy.dp", "xr0_core.train.loop"]]


def test_peers_of_one_layer_may_not_import_each_other(tmp_path):
    root = _tree(tmp_path, {"xr0_core/__init__.py": "", "xr0_core/eval/__init__.py": "",
                            "xr0_core/eval/x.py": "from xr0_core.privacy import units\n",
                            "xr0_core/privacy/__init__.py": "", "xr0_core/privacy/units.py": ""})
    assert upward_arrows(graph(root)) == ["xr0_core.eval.x -> xr0_core.privacy.units (eval may not import privacy)"]


# ---------------------------------------------------------------------------------------------- the tests
def _is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def test_no_test_module_imports_another():
    """Shared test code lives in helper modules (tests/tiny.py, tests/privacy/dpdata.py, ...); a test module or a
    conftest imported by another file would run its tests twice and tie unrelated tests together."""
    files = {module_name(p, ROOT): p for p in sorted((ROOT / "tests").rglob("*.py"))}
    bad = []
    for name, path in files.items():
        for target in imports(path, ROOT, set(files)):
            if target in files and target != name and _is_test_module(target):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not bad, "\n".join(bad)
