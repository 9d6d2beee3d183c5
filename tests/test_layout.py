"""The package's layout: the runtime below, the operator's tools beside it (shared/ops/).

Runtime modules never import ``shared.ops``; no program's module imports another
program's; every daemon script has its module of the same name; no module of
``shared/`` reaches itself again through its imports (a circle), lazy ones included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import ROOT

PROGRAMS = ("gateway", "bootstrap", "orderbook", "strategy", "ordermanager", "exchange", "auditor", "metrics")
RUNTIME = sorted(p for p in (ROOT / "shared").glob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module a file imports, absolute (``from shared import x`` counts as ``shared.x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.name)
def test_runtime_never_imports_ops(path: Path) -> None:
    bad = sorted(m for m in imports(path) if m == "shared.ops" or m.startswith("shared.ops."))
    assert not bad, f"{path.name} imports {bad}: the runtime must not depend on shared/ops/"


@pytest.mark.parametrize("program", PROGRAMS)
def test_no_program_imports_another(program: str) -> None:
    others = {f"shared.{p}" for p in PROGRAMS if p != program}
    assert not imports(ROOT / "shared" / f"{program}.py") & others


@pytest.mark.parametrize("program", PROGRAMS)
def test_each_daemon_has_its_module(program: str) -> None:
    assert f"shared.{program}" in imports(ROOT / "daemons" / f"{program}.py")


def test_the_checks_see_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from shared.ops import faults\nimport shared.ops.bench.run\nfrom shared import ops\n")
    assert {"shared.ops", "shared.ops.faults", "shared.ops.bench.run"} <= imports(bad)


def modules(root: Path, package: str = "shared") -> dict[str, Path]:
    """Every module under ``root`` by its dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def circles(mods: dict[str, Path]) -> Iterator[list[str]]:
    """Each import circle among ``mods`` once, as the modules along it (a depth-first search)."""
    edges = {m: sorted(i for i in imports(p) if i in mods and i != m) for m, p in mods.items()}
    done: set[str] = set()
    for start in sorted(mods):
        path: list[str] = []
        stack = [(start, iter(edges[start]))]
        on_path = {start}
        path.append(start)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
                done.add(node)
            elif nxt in on_path:
                yield [*path[path.index(nxt):], nxt]
            elif nxt not in done:
                stack.append((nxt, iter(edges[nxt])))
                on_path.add(nxt)
                path.append(nxt)


def test_no_import_circle_in_shared() -> None:
    found = [" -> ".join(c) for c in circles(modules(ROOT / "shared"))]
    assert not found, "import circles: " + "; ".join(found)


def test_the_circle_check_sees_a_circle(tmp_path: Path) -> None:
    (tmp_path / "room").mkdir()
    (tmp_path / "room" / "__init__.py").write_text("")
    (tmp_path / "room" / "a.py").write_text("from shared.room import b\n")
    (tmp_path / "room" / "b.py").write_text("def f():\n    from shared.room.c import g\n")  # lazy counts too
    (tmp_path / "room" / "c.py").write_text("from shared.room.a import x\n")
    (tmp_path / "d.py").write_text("from shared.room import a\n")
    found = list(circles(modules(tmp_path)))
    assert found and all(c[0] == c[-1] for c in found)
    assert {"shared.room.a", "shared.room.b", "shared.room.c"} == set(found[0])


@pytest.mark.parametrize("program", [*PROGRAMS, "prometheus"])
def test_a_daemon_checks_its_config_before_its_heavy_imports(program: str, tmp_path: Path) -> None:
    """A bad config exits before the program's own modules load (about 1 s on a busy machine, as
    long as supervisord's startsecs): a start bound to fail is never RUNNING, so a crash loop
    ends in FATAL. Judged by what it imported, not by a clock."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "daemons" / f"{program}.py")],
                       env={**os.environ, "STACK_CONFIG": str(tmp_path / "missing.toml")},
                       capture_output=True, text=True, timeout=60)
    said = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
    loaded = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert r.returncode == 2 and len(said) == 1 and said[0].startswith(f"{program}: bad config: "), r.stderr[-500:]
    heavy = {"structlog", "msgspec", "orjson", "shared.lifecycle", f"shared.{program}"} - {"shared.prometheus"}
    if program != "prometheus":  # a thin exec of Prometheus: nothing heavy to put off
        assert not loaded & heavy, sorted(loaded & heavy)
