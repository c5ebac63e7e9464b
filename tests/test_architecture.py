"""The library imports one way: every module of lib/fewclip stands on a layer and imports
only from its own layer or lower ones, and no modules import each other in a loop.

The layers, lowest first (a package stands on one layer with all its modules, except
``prompting`` below ``methods``, so that prompt learning never reaches into the method
files). Every import counts: at module level, inside a function (lazy) or under
``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
PACKAGE = "fewclip"

#: (layer, the top-level modules or packages of fewclip on it), lowest first.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"", "validation", "metrics", "parallel", "config", "progress"}),
    ("data", {"data", "offline", "images"}),
    ("models and features", {"backbones", "features", "pretrain"}),
    ("fitting", {"fitting", "training"}),
    ("prompt learning", {"prompting"}),
    ("methods", {"methods"}),
    ("runs", {"inputs", "protocols", "runner", "results", "sweep", "cluster", "demo"}),
    ("evidence", {"evidence", "coverage", "notebook"}),
    (
        "reports",
        {"claims", "ledger", "verdict_rules", "comparisons", "paper", "plots", "compare"}
        | {"explorer", "reports"},
    ),
    ("interface", {"cli", "__main__"}),
]
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module under lib/fewclip."""
    out = {}
    for path in sorted((LIB / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fewclip modules that module ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` where one exists
            subs = [f"{source}.{alias.name}" for alias in node.names]
            targets = [source] + [s for s in subs if s in modules]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import fewclip.x.y`` -> nearest module
                target = target.rpartition(".")[0]
            if target.split(".")[0] == PACKAGE and target != name:
                found.add(target)
    return found


def top_level(module: str) -> str:
    """``fewclip.methods.base`` -> ``methods``; ``fewclip`` -> ``""``; every ``__main__``
    (an entry point) -> ``__main__``."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    missing = sorted({top_level(m) for m in graph} - set(LAYER_OF))
    assert not missing, f"give these fewclip modules a layer in LAYERS: {missing}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a lower layer to a higher one, as a readable line."""

    def layer(module: str) -> int:
        return LAYER_OF.get(top_level(module), -1)

    def named(module: str) -> str:
        return f"{module} ({LAYERS[layer(module)][0] if layer(module) >= 0 else 'no layer'})"

    return [
        f"{named(source)} imports {named(target)}"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer(target) > layer(source)
    ]


def test_no_import_runs_up_a_layer(graph):
    upward = upward_imports(graph)
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_prompting_imports_nothing_from_methods(graph):
    wrong = {
        m: sorted(t for t in ts if top_level(t) == "methods")
        for m, ts in graph.items()
        if top_level(m) == "prompting"
    }
    assert not {m: ts for m, ts in wrong.items() if ts}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle(graph):
    loops = cycles(graph)
    assert not loops, "modules that import each other in a loop: " + "; ".join(
        " <-> ".join(c) for c in loops
    )


def test_the_checks_catch_an_upward_import_and_a_cycle():
    wrong = {
        "fewclip.prompting.x": {"fewclip.methods.base", "fewclip.fitting"},
        "fewclip.methods.base": {"fewclip.fitting", "fewclip.prompting.x"},
        "fewclip.fitting": set(),
    }
    assert upward_imports(wrong) == [
        "fewclip.prompting.x (prompt learning) imports fewclip.methods.base (methods)"
    ]
    assert cycles(wrong) == [["fewclip.methods.base", "fewclip.prompting.x"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    entry = {"fewclip.reports.__main__": {"fewclip.cli"}, "fewclip.cli": {"fewclip.reports"}}
    assert upward_imports(entry) == []


def test_the_reader_resolves_relative_and_lazy_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from ..fitting import FitResult\n"
        "from . import text_prompts\n"
        "def f():\n"
        "    from ..methods.base import accuracy\n"
    )
    modules = {
        "fewclip.fitting": source,
        "fewclip.methods.base": source,
        "fewclip.methods": source,
        "fewclip.prompting": source,
        "fewclip.prompting.text_prompts": source,
        "fewclip.prompting.mod": source,
    }
    assert imported_modules("fewclip.prompting.mod", source, modules) == {
        "fewclip.fitting",
        "fewclip.prompting",
        "fewclip.prompting.text_prompts",
        "fewclip.methods.base",
    }
