"""Layers one way: the library never imports its applications, applications import no other application (the demo
may use the pipelines), and no modules import each other in a cycle.

The imports are read from the source with `ast`, the lazy ones inside functions included, so a test run does not
need (or hide behind) an import having happened.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.common import APPLICATIONS, PACKAGE, REPO_ROOT, module_files

ALLOWED_BETWEEN_APPLICATIONS = {("demo", "pipelines")}


def layer(module: str) -> str:
    """ "library", or the application a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in APPLICATIONS else "library"


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (top level, functions, conditionals)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from X import Y` imports module X.Y when there is one, else a name of X
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a name inside a module: the module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {module: imported_modules(module, path, set(modules)) for module, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from the library into an application, or from one application into another (except allowed)."""
    wrong = []
    for module, targets in graph.items():
        for target in sorted(targets):
            source_layer, target_layer = layer(module), layer(target)
            if source_layer == target_layer or target_layer == "library":
                continue
            if (source_layer, target_layer) not in ALLOWED_BETWEEN_APPLICATIONS:
                wrong.append(f"{module} -> {target}")
    return wrong


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_graph_is_read():
    graph = import_graph()
    # the walk sees lazy imports inside functions and relative imports at every depth
    assert f"{PACKAGE}.tiny" in graph[f"{PACKAGE}.commands"]  # imported inside run_tiny
    assert f"{PACKAGE}.pipelines.saving" in graph[f"{PACKAGE}.pipelines.longclip_sd.pipeline"]
    assert f"{PACKAGE}.pipelines.generate" in graph[f"{PACKAGE}.pipelines.commands"]


def test_no_upward_import():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert import_cycles(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    graph = {
        f"{PACKAGE}.cli": {f"{PACKAGE}.training.train"},
        f"{PACKAGE}.training.train": {f"{PACKAGE}.training.features", f"{PACKAGE}.cli"},
        f"{PACKAGE}.training.features": {f"{PACKAGE}.training.train"},
        f"{PACKAGE}.demo.app": {f"{PACKAGE}.pipelines.generate", f"{PACKAGE}.training.train"},
        f"{PACKAGE}.pipelines.generate": set(),
    }
    assert upward_imports(graph) == [
        f"{PACKAGE}.cli -> {PACKAGE}.training.train",
        f"{PACKAGE}.demo.app -> {PACKAGE}.training.train",
    ]
    assert import_cycles(graph) == [[f"{PACKAGE}.cli", f"{PACKAGE}.training.features", f"{PACKAGE}.training.train"]]
