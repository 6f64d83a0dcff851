"""The architecture holds: no import cycles, small modules and functions (README "Architecture")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with the dev extra (import-linter)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sdk", "cli", "converters", "runtimes", "demo_app", "hw_profiles")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# Exceptions, each named with its reason in the README's architecture section.
ALLOWED: dict[str, int] = {
    # The LiteRT quantizer's tests: one module-scoped model (its own shape, which the size and
    # per-mode tolerance assertions are about), exported and quantized once per mode.
    "tests/converters/test_quantize_tflite.py": 450,
}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the import cycles of a module graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _sources() -> list[Path]:
    return sorted(p for folder in (*PACKAGES, "tests") for p in (ROOT / folder).rglob("*.py"))


def test_import_graph_succeeds_with_no_cycle() -> None:
    # grimp counts imports inside functions too, so a lazy import that dodges a cycle is one.
    built = grimp.build_graph(*PACKAGES)
    graph = {m: set(built.find_modules_directly_imported_by(m)) for m in built.modules}
    # A package's __init__ importing its own children is not a cycle of the code's layers.
    for module, imported in graph.items():
        imported.discard(module)
        graph[module] = {m for m in imported if not module.startswith(m + ".")}
    assert _strongly_connected(graph) == []


def test_strongly_connected_fails_with_a_cycle() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_succeed_within_size_limits() -> None:
    too_big = []
    for path in _sources():
        name = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > ALLOWED.get(name, MAX_MODULE_LINES):
            too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                key = f"{name}:{node.name}"
                if length > ALLOWED.get(key, MAX_FUNCTION_LINES):
                    too_big.append(f"{key}: {length} lines")
    assert too_big == []


def test_sdk_core_contract_succeeds_with_every_core_module_listed() -> None:
    # import-linter's forbidden contract names its sources one by one: a new core module must join it.
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c.get("forbidden_modules") == ["sdk.qa"]]
    core = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "sdk").rglob("*.py")
    }
    core = {m for m in core if m != "sdk" and not m.startswith("sdk.qa") and m.count(".") == 1}
    assert core - set(contract["source_modules"]) == set()


def test_cli_parser_succeeds_without_importing_tensorflow() -> None:
    # Every command module is imported to build the parser: none may pull in TensorFlow at import
    # time, or `shelfedge --version` takes seconds and prints TensorFlow's start-up lines.
    import subprocess
    import sys

    code = "import sys, cli; cli.build_parser(); print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
