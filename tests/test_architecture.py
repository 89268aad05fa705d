"""The house rules: stages import only downwards, no import circle, no room too big to know."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "metastop"

# Lower stages first: a module may import its own stage and the stages listed before it.
STAGES = ("curves", "ingest", "predict", "stop", "adapt", "integrations", "evaluate", "ops", "cli")
BASE = {"errors", "_lazy", "_checks", "__init__"}
OFF_STAGE = {"generate": "adapt"}  # generate/ (dev corpus) trains runs with the adapt levers: up to adapt
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every metastop module that ``name`` imports, at any depth of its code."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        elif (node.module or "").startswith("metastop."):
            target = node.module[len("metastop."):]
        else:
            continue
        for alias in node.names:
            full = f"{target}.{alias.name}" if target else alias.name
            out.add(full if full in modules else target)
    return {m for m in out if m in modules} - {name}


def _stage(module: str) -> int:
    head = module.split(".")[0]
    head = OFF_STAGE.get(head, head)
    return STAGES.index(head) if head in STAGES else -1


def test_no_import_circle():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items() if p.name != "__init__.py"}
    graph = {n: {d for d in deps if d in graph} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_imports_point_down_the_stages():
    modules = _modules()
    upward = [f"{name} imports {dep}" for name, path in modules.items()
              for dep in _imports(name, path, modules)
              if name.split(".")[0] not in BASE and _stage(dep) > _stage(name)]
    assert upward == []


def test_no_module_too_big_to_know():
    sizes = {name: sum(1 for _ in path.open()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_every_stage_says_what_it_is_for():
    for stage in STAGES + ("generate",):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 12, f"metastop/{stage}/__init__.py needs a docstring"


def test_the_checker_sees_a_circle(tmp_path):
    """The circle check itself can fail: two modules importing each other are caught."""
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert _imports("a", modules["a"], modules) == {"b"}
    assert _imports("b", modules["b"], modules) == {"a"}
