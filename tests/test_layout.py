"""The package's layout: the runtime below, the operator's tools beside it (shared/ops/).

Runtime modules never import ``shared.ops``; no program's module imports another
program's; every daemon script has its module of the same name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.config import ROOT

PROGRAMS = ("gateway", "bootstrap", "orderbook", "strategy", "ordermanager", "auditor", "metrics")
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
    bad.write_text("from shared.ops import faults\nimport shared.ops.bench\nfrom shared import ops\n")
    assert {"shared.ops", "shared.ops.faults", "shared.ops.bench"} <= imports(bad)
