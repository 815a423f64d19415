"""The layout of promptkit's own code (docs/architecture.md): layers whose imports point
down, no import cycles, no private name used across modules, no module over 800 lines.

Read from the source with :mod:`ast`, every import counted (those inside functions too),
so a cycle cannot hide in a function body.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "promptkit"

#: Each package's layer: a module imports only from its own layer or below (and within
#: ``ops``, one operation never imports another: see OPERATIONS_APART).
LAYERS = {
    "core": 0,
    "formats": 1, "text": 1,
    "io": 2,
    "ops": 3,
    "provenance": 4, "runner": 4, "ray": 4,
    "commands": 5,
    "cli": 6,
    "api": 7, "entry": 7, "__main__": 7, "": 7,
}
#: The modules of ``ops`` that may import other modules of ``ops``: the base every
#: operation builds on and the filler words they share know none of them, and the
#: registry above them knows all.
OPS_SHARED = {"promptkit.ops", "promptkit.ops.base", "promptkit.ops.padding",
              "promptkit.ops.registry"}
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import of ours."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module not in MODULES:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES
                             else (module, alias.name, node.lineno))
    return [f for f in found if f[0] != name]


def _layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


EDGES = {name: _imports(name, path) for name, path in MODULES.items()}


def test_no_import_cycles():
    graph = defaultdict(set)
    for name, imports in EDGES.items():
        graph[name] |= {target for target, _, _ in imports}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_imports_point_down():
    upward = sorted(f"{name}:{line} imports {target}" for name, imports in EDGES.items()
                    for target, _, line in imports if _layer(target) > _layer(name))
    assert len(upward) <= 1, "\n".join(upward)


def test_operations_do_not_import_each_other():
    def operation(module: str) -> str | None:
        """The operation a module of ``ops`` belongs to (a package's modules are one)."""
        parts = module.split(".")
        return None if module in OPS_SHARED or parts[:2] != ["promptkit", "ops"] else parts[2]

    sideways = sorted(f"{name}:{line} imports {target}" for name, imports in EDGES.items()
                      for target, _, line in imports
                      if operation(name) and operation(target)
                      and operation(name) != operation(target))
    assert not sideways, "\n".join(sideways)


def test_no_private_name_crosses_modules():
    private = sorted(f"{name}:{line} takes {target}.{taken}" for name, imports in EDGES.items()
                     for target, taken, line in imports
                     if taken and taken.startswith("_") and not taken.startswith("__"))
    assert not private, "\n".join(private)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_800_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"
