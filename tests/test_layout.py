"""The package's layout is its architecture, read top-down: the command and its launchers, the API, the two
kinds of workers, what they share (core), the model code. These tests hold the code to it: no module imports
one above its layer, no import circles (lazy imports included), and every folder says what it is."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "imageclf"
#: Layer of each part (by its first name under imageclf): a module may import only its own layer and below.
LAYERS = {"cli": 5, "__main__": 5, "launch": 4, "api": 3, "workers": 2, "core": 1, "client": 0, "models": 0,
          "settings": 0, "settings_reference": 0, "__init__": 0}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its code (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name and t != "imageclf"}
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def test_no_module_imports_one_from_a_layer_above_it():
    known = modules()
    upward = [(name, target) for name, path in known.items() for target in imports(name, path, known)
              if layer(target) > layer(name)]
    assert not upward, upward


def test_the_api_never_imports_the_model_worker_and_core_imports_no_worker():
    known = modules()
    for name, path in known.items():
        targets = imports(name, path, known)
        if name.startswith("imageclf.api"):
            assert not {t for t in targets if t.startswith("imageclf.workers.model")}, name
        if name.startswith(("imageclf.core", "imageclf.models")):
            assert not {t for t in targets if t.startswith(("imageclf.workers", "imageclf.api"))}, name


def test_there_are_no_import_circles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not circles, circles


def test_every_folder_says_what_it_is():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"


def test_the_celery_task_names_are_those_messages_already_queued_carry():
    """Messages queued in Redis by a release from before the move name their tasks; the names must not move."""
    import importlib

    from imageclf.core.celery_app import celery_app

    for module in celery_app.conf.imports:
        importlib.import_module(module)
    ours = {name for name in celery_app.tasks if not name.startswith("celery.")}
    assert ours == {"classify", "job_step", "job_chunk", "deliver_webhook"}, ours
