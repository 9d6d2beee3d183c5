"""deploy/bench --quick: the report has every row and its numbers parse.

No thresholds: speed is judged by the full bench, not by timed tests.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import ROOT

ROWS = [
    "two-hop floor p50 / p99", "4-relay floor p50 / p99", "tick-to-trade p50 strategy (µs), 1 strategy",
    "tick-to-trade p50 strategy (µs), 4 strategies", "tick-to-trade p99 strategy-s4 (µs), 4 strategies",
    "strategy windows at 50,000 ticks/s", "idle strategy, no news",
    "tick-to-trade p99.9 (µs), 1 strategy together", "tick-to-trade max (µs), 4 strategies together",
    "tick-to-trade mean",
    "tick-to-trade samples, 1 strategy", "tick-to-trade samples, 4 strategies", "price feed into the book",
    "price feed gaps / slow-consumer drops / lost",
    "tick → book p50", "tick → book p99", "ordermanager, 4 pipelining clients", "ordermanager orders acked / journaled",
    "order entry, one outside client, 4 × 2,500 orders pipelined", "order entry acked / journaled",
    "order entry's work floor",
    "book read from Python", "RSS gateway", "RSS orderbook", "RSS strategy", "RSS ordermanager", "RSS bootstrap",
    "RSS auditor", "RSS ordermanager after", "book segment", "book bytes per symbol",
    "recovery kill -9 gateway → book fresh p50", "recovery kill -9 gateway → book fresh p99",
    "recovery kill -9 ordermanager → acks flow p50", "recovery kill -9 ordermanager → acks flow p99",
    "backtest of the §7 rule", "backtest peak RSS",
    "RSS exchange", "matching engine, ", "exchange restart, 10,000 resting, ",
    "four-hop floor, decision → new / fill", "decision → new p50 at the strategy (µs), 1 strategy",
    "decision → fill p99 at the strategy (µs), 1 strategy", "decision → new / fill samples, 1 strategy",
]
TAPE_ROWS = [
    "stack-record beside the gateway at 20,000 price ticks/s", "stack-record gaps / missed ticks / slow-consumer drops",
    "stack-record CPU", "stack-record ticks per CPU second", "gateway serving a tape at speed 0, 50,500 records",
    "gateway serving a tape at speed 0: CPU per tick",
]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?")


def _number(cell: str, figure: str = "") -> float:
    m = NUMBER.match(cell.strip())
    assert m, f"no number in {cell!r} ({figure})"
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
    for name in ROWS + TAPE_ROWS:
        assert any(f.startswith(name) for f in figures), f"row {name!r} missing"
    for figure, stack, ref, ratio, seed, _target, verdict in body:
        _number(stack, figure)
        for cell in (ref, ratio, seed):
            if cell and cell != "–":
                _number(cell, figure)
        assert verdict in ("", "pass", "FAIL"), (figure, verdict)
        if figure.startswith("tick-to-trade p50 strategy"):  # each beside the floor of as many relays, judged
            assert ref.endswith("two-hop floor" if figure.endswith(", 1 strategy") else "4-relay floor"), figure
            assert verdict, figure
    assert out.read_text().startswith(r.stdout.strip())
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").stat().st_size > 0


def test_fourhop_quick(tmp_path: Path) -> None:
    """python -m shared.ops.bench.fourhop, small: the floor's rows and the strategy's decision → new and → fill
    beside it, with numbers that make sense (the floor's fills after their news); no speed is judged."""
    r = subprocess.run([sys.executable, "-m", "shared.ops.bench.fourhop", "--seconds", "2", "--floor-seconds", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    body = {cells[0]: cells for cells in ([c.strip() for c in ln.strip("|").split("|")]
                                          for ln in r.stdout.splitlines()[2:] if ln.startswith("|"))}
    assert all(len(cells) == 7 for cells in body.values()), body

    def row(start: str) -> list[str]:
        return next(cells for f, cells in body.items() if f.startswith(start))

    floor = row("four-hop floor, decision → new / fill p50 / p99 (µs), ")
    assert _number(floor[0].rsplit("(µs), ", 1)[1]) >= 50, floor[0]  # orders through it, at the stack's pace
    for cell in (floor[1], floor[2]):  # new p50 / p99 / fill p50 / p99, idle and while trading
        new50, new99, fill50, fill99 = (_number(x) for x in cell.split(" / "))
        assert 0 < new50 <= new99 and 0 < fill50 <= fill99 and new50 <= fill50 and new99 <= fill99, cell
    got = {}
    for what in ("new", "fill"):
        for q in ("p50", "p99"):
            cells = row(f"decision → {what} {q} at the strategy (µs), 1 strategy, market orders")
            got[what, q] = _number(cells[1], cells[0])
            assert got[what, q] > 0 and _number(cells[2]) > 0 and _number(cells[3]) > 0, cells
            assert cells[2].endswith("four-hop floor"), cells
            assert cells[6] in (("pass", "FAIL") if q == "p50" else ("",)), cells
    assert got["new", "p50"] <= got["new", "p99"] and got["fill", "p50"] <= got["fill", "p99"], got
    samples = row("decision → new / fill samples, 1 strategy")[1]
    new, fill, orders = (int(x.replace(",", "")) for x in re.findall(r"[\d,]+", samples)[:3])
    assert 0 < new <= orders and 0 < fill <= orders and "market" in samples, samples


def test_bench_tape_quick_report_shape() -> None:
    """deploy/bench --tape --quick: the real gateway and stack-record alone, then a tape served at speed 0;
    every row, numbers that parse, and nothing left behind (the processes are children that end)."""
    r = subprocess.run([str(ROOT / "deploy" / "bench"), "--tape", "--quick"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| figure | stack | reference")
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [cells[0] for cells in body] and all(len(cells) == 7 for cells in body)
    for name in TAPE_ROWS:
        assert sum(cells[0].startswith(name) for cells in body) == 1, f"row {name!r} missing"
    for figure, stack, ref, ratio, _seed, _target, verdict in body:
        for cell in (*stack.split(" / "), ref, ratio):
            if cell and cell != "–":
                _number(cell, figure)
        assert verdict in ("", "pass", "FAIL"), (figure, verdict)
    assert "- Tape: the gateway" in r.stdout


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


AB_ROWS = [
    "two-hop floor p50 / p99", "order entry, one outside client, 4 × 2,500 orders pipelined",
    "order entry, each run in turn", "order entry acked / rejected / journaled",
    "tick-to-trade p50, 1 strategy, all strategies", "tick-to-trade p99, 1 strategy, slowest strategy",
    "tick-to-trade samples, 1 strategy",
]


def _worktrees() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout


def test_bench_against_head_quick(tmp_path: Path) -> None:
    """deploy/bench --quick --against HEAD: both sides run, each on its own tree's code, every order
    answered and journaled once; the worktree is gone afterwards."""
    out = tmp_path / "ab.md"
    r = subprocess.run([str(ROOT / "deploy" / "bench"), "--quick", "--against", "HEAD", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| figure | this tree | HEAD (")
    body = {cells[0]: cells for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}
    assert all(len(cells) == 7 for cells in body.values())
    for name in AB_ROWS:
        assert any(f.startswith(name) for f in body), f"row {name!r} missing"
    for figure, cells in body.items():
        if figure.startswith(("order entry, one", "tick-to-trade p")):
            for cell in (cells[1], cells[2], cells[3]):
                _number(cell)
        if figure.startswith("tick-to-trade p"):
            assert cells[4].endswith("two-hop floor"), figure
            _number(cells[5]), _number(cells[6])
    counts = next(cells for f, cells in body.items() if f.startswith("order entry acked"))
    assert counts[1] == counts[2] == "10,000 / 0 / 10,000", counts
    notes = out.read_text()
    assert notes.startswith(r.stdout.strip())
    this, other = re.findall(r"code from (\S+)/shared \(", notes)
    assert Path(this) == ROOT and Path(other) != ROOT and "tsab" in other, notes
    assert other not in _worktrees()
    assert not Path(other).exists()


def test_worktree_removed_on_failure() -> None:
    """The A/B worktree goes even when the run inside it fails; a bad revision makes none."""
    from shared.ops.bench.ab import SideError, worktree

    seen = []
    with pytest.raises(RuntimeError, match="inside"), worktree("HEAD") as (tree, sha):
        seen.append(tree)
        assert (tree / "shared" / "ops" / "bench" / "ab.py").exists() and len(sha) == 40
        assert str(tree) in _worktrees()
        raise RuntimeError("inside")
    assert not seen[0].exists() and str(seen[0]) not in _worktrees()
    before = _worktrees()
    with pytest.raises(SideError, match="rev-parse"), worktree("no-such-revision-xyz"):
        pass
    assert _worktrees() == before


def test_suite_table_has_a_row_per_figure() -> None:
    """deploy/bench --suite's table, from results of the shape its run returns (its parts run live
    in the tests whose thresholds they took over: test_ring, test_badinput, test_faults)."""
    from shared.ops.bench import suite

    res = {"load": 1.0, "ring": {"ticks_per_s": 1e5, "readers": [
               {"want": 20, "windows": 3000, "unavailable": 3, "seconds": 3.0}]},
           "acks": {"quiet": {"p50": 1.0, "p99": 2.0, "max": 3.0, "n": 10},
                    "barrage": {"p50": 4.0, "p99": 5.0, "max": 6.0, "n": 10}, "frames": 500},
           "kill_switch": {"beyond_ms": [12.0, 30.0], "stale_ms": 500}, "hb_100": 0, "hb_250": 1}
    table = suite.table(res)
    assert "| tick ring: writer ticks/s beside 2 readers (aiming at 100k) | 100,000 | ≥ 90,000 |" in table
    assert "| tick ring: 20-tick windows/s (read / could not) | 1,000 / 1.0 |" in table
    assert "4.0 / 5.0 / 6.0" in table and "| 12 / 30 |" in table
    assert "| links dropped with no fault at heartbeat_ms = 250 | 1 | 0 |" in table
