"""deploy/bench --quick: the report has every row and its numbers parse.

No thresholds: speed is judged by the full bench, not by timed tests.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

from shared.config import ROOT

ROWS = [
    "two-hop floor p50 / p99", "tick-to-trade p50 strategy ", "tick-to-trade p99 strategy-s4",
    "strategy windows at 50,000 ticks/s", "idle strategy, no news",
    "tick-to-trade p50", "tick-to-trade p99 ", "tick-to-trade p99.9", "tick-to-trade max", "tick-to-trade mean",
    "tick-to-trade samples", "price feed into the book", "price feed gaps / slow-consumer drops / lost",
    "tick → book p50", "tick → book p99", "ordermanager, 4 pipelining clients", "ordermanager orders acked / journaled",
    "book read from Python", "RSS gateway", "RSS orderbook", "RSS strategy", "RSS ordermanager", "RSS bootstrap",
    "RSS auditor", "RSS ordermanager after", "book segment", "book bytes per symbol",
    "recovery kill -9 gateway → book fresh p50", "recovery kill -9 gateway → book fresh p99",
    "recovery kill -9 ordermanager → acks flow p50", "recovery kill -9 ordermanager → acks flow p99",
]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?")


def _number(cell: str) -> float:
    m = NUMBER.match(cell.strip())
    assert m, f"no number in {cell!r}"
    return float(m.group(0).replace(",", ""))


def test_bench_quick_report_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    r = subprocess.run([str(ROOT / "deploy" / "bench"), "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| figure | stack | reference")
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(cells) == 7 for cells in body)
    figures = [cells[0] for cells in body]
    for name in ROWS:
        assert any(f.startswith(name) for f in figures), f"row {name!r} missing"
    for figure, stack, ref, ratio, seed, _target, verdict in body:
        _number(stack)
        for cell in (ref, ratio, seed):
            if cell and cell != "–":
                _number(cell)
        assert verdict in ("", "pass", "FAIL"), (figure, verdict)
    assert out.read_text().startswith(r.stdout.strip())
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").stat().st_size > 0


JOURNAL_ROWS = [
    "journal written", "restart after", "journal load at start", "RSS ordermanager in operation",
    "RSS ordermanager peak", "disk full under load: ordermanager crashes", "disk full under load: acked orders lost",
    "disk full under load: orders answered unavailable", "disk full under load: space back → next ack",
]


def test_bench_journal_quick_report_shape(tmp_path: Path) -> None:
    """deploy/bench --journal --quick: every row, numbers that parse, and the full disk run (CI runs as root)."""
    out = tmp_path / "bench-journal.md"
    r = subprocess.run([str(ROOT / "deploy" / "bench"), "--journal", "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| figure | stack | reference")
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(cells) == 6 for cells in body)
    for name in JOURNAL_ROWS:
        assert any(cells[0].startswith(name) for cells in body), f"row {name!r} missing"
    for figure, stack, _ref, _ratio, _target, verdict in body:
        _number(stack)
        assert verdict in ("", "pass", "FAIL"), (figure, verdict)
    assert out.read_text().startswith(r.stdout.strip())
