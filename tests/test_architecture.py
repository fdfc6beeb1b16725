"""The import contract: layers point down only, no cycles, module-level imports except heavy optional ones.

Layers, bottom to top: errors < io < core < evaluation < extrapolation < forecasting < training < tune < apps
(docs/ARCHITECTURE.md).
A module may import its own layer or lower ones; the module graph (every rlcast import, wherever it is) has no cycle.
A function-level import is allowed only for a heavy optional dependency (OPTIONAL), with a comment on its line, and
in `apps.cli`, whose commands import their modules lazily so that `rlcast --help` starts fast.
"""

import ast
from pathlib import Path

import rlcast

LAYERS = ["errors", "io", "core", "evaluation", "extrapolation", "forecasting", "training", "tune", "apps"]
OPTIONAL = {"vllm", "ray", "matplotlib", "tensorboard"}
LAZY_MODULES = {"rlcast.apps.cli"}
PACKAGE = Path(rlcast.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "rlcast" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def imports(path: Path):
    """(imported module, line, nested in a function, source line) for every import statement."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    nested.add(id(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            known = modules()
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]
        else:
            continue
        for target in targets:
            yield target, node.lineno, id(node) in nested, lines[node.lineno - 1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {t for t, *_ in imports(path) if t in known and t != name} for name, path in known.items()}


def test_every_module_sits_in_a_layer():
    assert [m for m in modules() if m != "rlcast" and layer(m) is None] == []


def test_layers_point_down_only():
    upward = [f"{name} -> {t}" for name, targets in graph().items() for t in targets
              if layer(name) is not None and layer(t) is not None and layer(t) > layer(name)]
    assert upward == []


def test_no_import_cycle():
    g, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_function_level_imports_only_for_heavy_optional_dependencies():
    bad = []
    for name, path in modules().items():
        if name in LAZY_MODULES:
            continue
        for target, line, nested, text in imports(path):
            if nested and not (target.split(".")[0] in OPTIONAL and "#" in text):
                bad.append(f"{path.relative_to(PACKAGE)}:{line}: {text.strip()}")
    assert bad == []


def test_the_checker_sees_a_violation(tmp_path):
    """The walker itself: a nested import and an upward import are found in a synthetic module."""
    path = tmp_path / "mod.py"
    path.write_text("from rlcast.apps import cli\n\ndef f():\n    import json\n")
    found = list(imports(path))
    assert ("rlcast.apps.cli", 1, False, "from rlcast.apps import cli") in found
    assert any(t == "json" and nested for t, _, nested, _ in found)
