"""The shape of the package that docs/store.md describes, checked so that it stays: modules of
one idea each, the store's facade small, no shared-store branch outside the coordination, no
sleeping in place of waiting, and no import cycle."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

pytestmark = pytest.mark.once  # the source's shape: the C pass runs it (conftest.py)

PACKAGE = pathlib.Path(__file__).parents[2] / "streamlib"
MIRRORED_DECODERS = {("codec/_python.py", "_index")}
"""Functions that mirror the C codec line for line (native/segment_codec.c): kept whole."""


def modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text())
            for p in sorted(PACKAGE.rglob("*.py"))}


def source(name: str) -> str:
    return (PACKAGE / name).read_text()


def test_the_store_facade_is_small_and_no_module_holds_two_ideas() -> None:
    assert len(source("store.py").splitlines()) <= 450
    long = {name: len(source(name).splitlines()) for name in modules()
            if len(source(name).splitlines()) > 800}
    assert not long, long


def test_no_function_is_longer_than_a_screen_or_two() -> None:
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 80 and (name, node.name) not in MIRRORED_DECODERS:
                    long.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_only_the_metadata_package_knows_its_backends() -> None:
    found = [f"{name}:{n}" for name in modules() if not name.startswith("meta/")
             for n, line in enumerate(source(name).splitlines(), 1)
             if re.search(r"isinstance\(.*ManifestMetadataStore", line)]
    assert not found, found


def test_time_sleep_is_only_the_retry_backoff() -> None:
    found = [(name, line) for name in modules() for line in source(name).splitlines()
             if "time.sleep" in line]
    assert [name for name, _ in found] == ["io.py"], found
    assert "backoff" in found[0][1], "the retry backoff's pause says so"


def test_the_stream_handle_calls_nothing_private_of_the_store() -> None:
    text = source("stream.py")
    assert "_store." not in text
    assert not re.search(r"\b_paths\._", text)


def runtime_imports(tree: ast.Module) -> set[str]:
    """The streamlib modules ``tree`` imports when it is imported: at module and class level,
    not under TYPE_CHECKING (an import inside a function runs when the function does, after
    every module it names has loaded)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("streamlib"))
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                assert not node.level, "streamlib imports by absolute names"
                if base.startswith("streamlib"):
                    if base != "streamlib":  # the top package: only the modules named count
                        found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    visit(inner)

    visit(tree.body)
    return found


def test_no_import_cycle_among_the_modules() -> None:
    names = {}
    for name, tree in modules().items():
        dotted = "streamlib." + name.removesuffix(".py").replace("/", ".")
        names[dotted.removesuffix(".__init__")] = tree
    graph = {mod: {dep for dep in runtime_imports(tree) if dep in names and dep != mod}
             for mod, tree in names.items()}
    cycles = []
    state: dict[str, int] = {}

    def walk(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                walk(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            walk(mod, [mod])
    assert not cycles, cycles


def test_every_module_logs_under_its_own_name() -> None:
    """``logging.getLogger(__name__)``: the logger of streamlib/shared/fencing.py is
    ``streamlib.shared.fencing`` (docs/guide.md, "Logging"), under its package's."""
    found = [f"{name}:{n}: {line.strip()}" for name in modules()
             for n, line in enumerate(source(name).splitlines(), 1)
             if "getLogger(" in line and "getLogger(__name__)" not in line
             and name != "__init__.py"  # the root's NullHandler
             and "werkzeug" not in line]  # the moto server's, quietened
    assert not found, found
