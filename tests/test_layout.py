"""The package layout's import rules, read from the source (function-level imports included):
stages import only downward, no module cycle, and serving never reaches training, data
preparation or TRL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tunesmith"

# Lowest first; a module may import its own stage and the stages before it, never a later one.
LAYERS: list[set[str]] = [
    {"", "errors"},
    {"config"},
    {"artifacts", "html_report", "store"},
    {"model_card", "registry", "monitor"},
    {"tasks"},
    {"models"},
    {"data", "inference", "collect"},
    {"training"},
    {"evaluation", "jobs"},
    {"export", "serve", "tune"},
    {"cli", "__main__"},
]
RANK = {stage: i for i, layer in enumerate(LAYERS) for stage in layer}
NEVER_FROM_SERVE = ("tunesmith.training", "tunesmith.data", "trl")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (external ones by their top-level name)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name if a.name.startswith("tunesmith") else a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("tunesmith"):
                found.add(node.module.split(".")[0])
                continue
            for alias in node.names:  # `from tunesmith.models import loading` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _is_module(sub) else node.module)
    return found


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_stage_has_a_layer() -> None:
    assert {_stage(m) for m in GRAPH} <= set(RANK), "add new stages to LAYERS"


def test_stages_import_only_downward() -> None:
    upward = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() for i in deps
                    if i.startswith("tunesmith") and RANK[_stage(i)] > RANK[_stage(m)])
    assert not upward


def test_no_import_cycles() -> None:
    internal = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(internal[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [module, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(internal):
        if module not in state:
            visit(module, [module])


def test_serving_never_reaches_training_data_preparation_or_trl() -> None:
    """Any run folder can be served without the training side installed or imported."""
    reached: dict[str, str] = {}  # module -> the module that imported it
    todo = [m for m in GRAPH if m.startswith("tunesmith.serve")]
    seen = set(todo)
    while todo:
        module = todo.pop()
        for dep in GRAPH.get(module, ()):
            reached.setdefault(dep, module)
            if dep in GRAPH and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    bad = sorted(f"{dep} (imported by {by})" for dep, by in reached.items()
                 if dep == "trl" or dep.startswith(NEVER_FROM_SERVE[:2]))
    assert not bad


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The scanner sees function-level imports and `from package import module` (the forms a slip would take)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from tunesmith.training import run\n    import trl\n")
    assert _imports(source) == {"tunesmith.training.run", "trl"}
