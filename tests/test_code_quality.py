"""The code as the next engineer meets it: ruff clean, mypy clean, layers that import
only what is below them, and no import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

PACKAGE = REPO / "pylontech_exporter"
#: Modules that show a snapshot: they may use the snapshot and the readings, never a source.
PRESENTATION = ("cache", "collector", "server", "landing", "dump")
#: What the presentation layer may import from this package.
PRESENTATION_MAY_IMPORT = {
    "snapshot",
    "models",
    "errors",
    "_version",
    "config",
    "logging_setup",
    "webconfig",
    "collector",
    "cache",
    "dump",  # the landing page words alarms and numbers as dump does
    "deadline",
    "exposition",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (at any depth, also in functions)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [target] + [f"{target}.{a.name}".strip(".") for a in node.names]
            elif node.module and node.module.startswith("pylontech_exporter"):
                target = node.module.removeprefix("pylontech_exporter").strip(".")
                names = [target] + [f"{target}.{a.name}".strip(".") for a in node.names]
            else:
                continue
            found.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pylontech_exporter."):
                    found.add(alias.name.removeprefix("pylontech_exporter."))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {n for n in found if n in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once (as found by a depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt == "" or nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circles():
    graph = {name: deps - {""} for name, deps in import_graph().items() if name}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_presentation_depends_on_the_snapshot_not_on_a_source():
    graph = import_graph()
    for name in PRESENTATION:
        unexpected = graph[name] - PRESENTATION_MAY_IMPORT
        assert not unexpected, f"{name} imports {sorted(unexpected)}"


def test_errors_is_a_leaf():
    assert import_graph()["errors"] == set()


def test_reading_the_version_loads_no_protocol_stack():
    code = (
        "import sys; from pylontech_exporter import __version__;"
        "import pylontech_exporter.collector, pylontech_exporter.landing;"
        "print(sorted(m for m in sys.modules if m == 'serial' or '.rs485' in m))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_library_face_gives_every_documented_name():
    import pylontech_exporter

    for name in pylontech_exporter.__all__:
        assert getattr(pylontech_exporter, name) is not None
    with pytest.raises(AttributeError):
        pylontech_exporter.nothing_of_that_name  # noqa: B018


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_ruff_is_clean():
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = _run("ruff", "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_mypy_is_clean():
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
