"""The order journal (contract §6, §8): lines, reload, torn and corrupt lines; the lock, the
de-duplication window, segments and the checkpoint; a write on a full filesystem (a real tmpfs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import journal
from shared.config import ROOT
from shared.journal import Entry, Journal
from shared.journalfiles import JournalLocked, read_checkpoint
from shared.ops.chaos import disk

FIELDS = {"order_no", "order_id", "client_id", "symbol", "side", "qty", "price", "ts_ns", "tick_ts_ns", "recv_ns",
          "ord_type", "tif"}  # contract §6's, and 1.2's ord_type and tif (a line without them: limit, day)


class FakeLog:
    """Records every call as (level, event, fields)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, event: str, **kw: Any) -> None:
        self.calls.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._record("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._record("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._record("error", event, **kw)

    def events(self, level: str | None = None) -> list[str]:
        """The events logged, at one level or all."""
        return [e for lv, e, _ in self.calls if level is None or lv == level]

    def find(self, event: str) -> dict[str, Any]:
        """The fields of the one call of ``event``."""
        hits = [kw for _, e, kw in self.calls if e == event]
        assert len(hits) == 1, self.calls
        return hits[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "orders.jsonl"


@pytest.fixture
def opened() -> Iterator[list[Journal]]:
    """Journals opened by a test, closed after it."""
    js: list[Journal] = []
    yield js
    for j in js:
        j.close()


def open_journal(path: Path, opened: list[Journal], sync: str = "write", **kw: Any) -> tuple[Journal, FakeLog]:
    """A journal on ``path`` with a recording logger, closed after the test; the
    ones opened before are closed first (a restart: only one may hold the lock)."""
    while opened:
        opened.pop().close()
    log = FakeLog()
    j = Journal(str(path), sync, log, **kw)
    opened.append(j)
    return j, log


def entry(no: int, order_id: str, client_id: str = "c1", symbol: str = "AAPL", side: str = "BUY",
          qty: int = 10) -> Entry:
    """A journal entry with made-up times."""
    return Entry(no, order_id, client_id, symbol, side, qty, 100.0 + no / 4, 1000 + no, 900 + no, 1100 + no)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_new_journal_is_empty(path: Path, opened: list[Journal]) -> None:
    j, log = open_journal(path, opened)
    assert (j.last_no, j.window, j.positions, j.last_id) == (0, {}, {}, {})
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    lock = Path(str(path) + ".lock")
    assert lock.stat().st_mode & 0o777 == 0o600 and lock.read_text() == f"{os.getpid()}\n"
    assert log.events("warning") == log.events("error") == []


def test_stage_commit_writes_one_line_per_order(path: Path, opened: list[Journal]) -> None:
    j, _ = open_journal(path, opened)
    j.stage(entry(1, "a-1"))
    j.stage(entry(2, "a-2", side="SELL", qty=3))
    assert j.last_no == 2 and j.lookup("c1", "a-2") == 2  # indexed at once
    assert path.read_bytes() == b""  # written only at commit
    assert j.commit() is True
    assert j.commit() is True  # nothing staged: nothing to do
    got = lines(path)
    assert [set(line) for line in got] == [FIELDS, FIELDS]
    assert got[0] == {"order_no": 1, "order_id": "a-1", "client_id": "c1", "symbol": "AAPL", "side": "BUY",
                      "qty": 10, "price": 100.25, "ts_ns": 1001, "tick_ts_ns": 901, "recv_ns": 1101,
                      "ord_type": "limit", "tif": "day"}
    assert (got[1]["order_no"], got[1]["side"], got[1]["qty"]) == (2, "SELL", 3)
    assert path.read_bytes().endswith(b"\n")


def test_fsync_policy_writes_too(path: Path, opened: list[Journal]) -> None:
    j, _ = open_journal(path, opened, sync="fsync")
    j.stage(entry(1, "a-1"))
    assert j.commit()
    assert len(lines(path)) == 1


def test_close_commits_what_is_staged(path: Path) -> None:
    j = Journal(str(path), "write", FakeLog())
    j.stage(entry(1, "a-1"))
    j.close()
    assert len(lines(path)) == 1


def fill(path: Path, opened: list[Journal]) -> None:
    """Three orders of two clients, committed."""
    j, _ = open_journal(path, opened)
    j.stage(entry(1, "a-1", "c1", "AAPL", "BUY", 10))
    j.stage(entry(2, "b-1", "c2", "MSFT", "SELL", 5))
    j.stage(entry(3, "a-2", "c1", "AAPL", "SELL", 20))
    j.commit()


def test_reload_rebuilds_the_state(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    j, log = open_journal(path, opened)
    assert j.last_no == 3
    assert j.window == {"c1": {"a-1": 1, "a-2": 3}, "c2": {"b-1": 2}}
    assert j.positions == {"c1": {"AAPL": -10}, "c2": {"MSFT": -5}}
    assert j.last_id == {"c1": "a-2", "c2": "b-1"}
    loaded = log.find("journal_loaded")
    assert (loaded["orders"], loaded["last_order_no"]) == (3, 3)
    assert log.events("warning") == log.events("error") == []


def test_appends_after_reload(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    j, _ = open_journal(path, opened)
    j.stage(entry(j.last_no + 1, "a-3"))
    j.commit()
    assert [line["order_no"] for line in lines(path)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "tail",
    [
        b'{"order_no": 4, "order_id": "a-3", "client_id": "c1", "sym',  # half an object
        b"{",
        json.dumps({"order_no": 4, "order_id": "a-3", "client_id": "c1", "symbol": "AAPL", "side": "BUY", "qty": 1,
                    "price": 1.0, "ts_ns": 1, "tick_ts_ns": 1, "recv_ns": 1}).encode(),  # whole, but no newline
    ],
    ids=["half_object", "one_brace", "no_newline"],
)
def test_torn_last_line_is_cut_off(path: Path, opened: list[Journal], tail: bytes) -> None:
    fill(path, opened)
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    j, log = open_journal(path, opened)
    assert path.read_bytes() == good
    rep = log.find("journal_repaired")
    assert rep["dropped_bytes"] == len(tail)
    assert "journal_repaired" in log.events("warning")
    assert j.last_no == 3 and j.lookup("c1", "a-3") is None
    assert j.positions == {"c1": {"AAPL": -10}, "c2": {"MSFT": -5}}
    # the next order continues contiguously, on a line of its own
    j.stage(entry(j.last_no + 1, "a-3"))
    j.commit()
    assert [line["order_no"] for line in lines(path)] == [1, 2, 3, 4]
    j2, log2 = open_journal(path, opened)
    assert j2.last_no == 4 and log2.events("warning") == []


def test_torn_line_in_an_otherwise_empty_journal(path: Path, opened: list[Journal]) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"order_no": 1, "ord')
    j, log = open_journal(path, opened)
    assert path.read_bytes() == b""
    assert j.last_no == 0 and log.events("warning") == ["journal_repaired"]


def test_corrupt_middle_line_is_logged_and_skipped(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    raw = path.read_bytes().split(b"\n")
    raw[1] = b'{"order_no": 2, "garbage'
    path.write_bytes(b"\n".join(raw))
    before = path.read_bytes()
    j, log = open_journal(path, opened)
    err = log.find("journal_corrupt_line")
    assert err["line"] == 2
    assert "journal_corrupt_line" in log.events("error")
    assert path.read_bytes() == before  # a middle line is never cut away
    assert j.window == {"c1": {"a-1": 1, "a-2": 3}}
    assert j.last_no == 3
    assert j.positions == {"c1": {"AAPL": -10}}
    j.stage(entry(j.last_no + 1, "a-3"))
    j.commit()
    assert path.read_bytes().endswith(b"\n")
    assert [json.loads(x)["order_no"] for x in path.read_bytes().splitlines() if x != raw[1]] == [1, 3, 4]


def test_wrong_field_type_counts_as_corrupt(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    raw = path.read_bytes().split(b"\n")
    raw[0] = raw[0].replace(b'"qty":10', b'"qty":"10"')
    assert b'"qty":"10"' in raw[0]
    path.write_bytes(b"\n".join(raw))
    j, log = open_journal(path, opened)
    assert log.find("journal_corrupt_line")["line"] == 1
    assert j.lookup("c1", "a-1") is None and j.last_no == 3


# --- one owner ----------------------------------------------------------------


def test_a_second_journal_on_the_same_path_is_refused(path: Path, opened: list[Journal]) -> None:
    j, _ = open_journal(path, opened)
    j.stage(entry(1, "a-1"))
    j.commit()
    with pytest.raises(JournalLocked) as refused:
        Journal(str(path), "write", FakeLog())
    assert refused.value.holder == os.getpid()
    j.stage(entry(2, "a-2"))  # the owner goes on, untouched
    j.commit()
    j2, _ = open_journal(path, opened)  # closes the first: the lock is free again
    assert j2.last_no == 2 and [x["order_no"] for x in lines(path)] == [1, 2]


LOCKER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from shared.journal import Journal
class Quiet:
    def info(self, *a, **k): pass
    warning = error = info
j = Journal(sys.argv[1], "write", Quiet())
print("locked", flush=True)
time.sleep(60)
"""


def test_another_process_holds_the_journal_until_it_dies(path: Path, opened: list[Journal]) -> None:
    path.parent.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), str(ROOT)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        with pytest.raises(JournalLocked) as refused:
            Journal(str(path), "write", FakeLog())
        assert refused.value.holder == proc.pid
        assert f"pid {proc.pid}" in str(refused.value)
        proc.kill()  # kill -9: the kernel drops its lock with it
        proc.wait(10)
        j, _ = open_journal(path, opened)
        assert j.last_no == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- the de-duplication window ------------------------------------------------


def orders(j: Journal, first: int, last: int, client: str = "c1", per_commit: int = 10) -> None:
    """Orders ``first..last`` of one client (ids ``<client>-<n>``), committed every ``per_commit``."""
    for n in range(first, last + 1):
        j.stage(entry(n, f"{client}-{n}", client, side="BUY" if n % 2 else "SELL"))
        if n % per_commit == 0 or n == last:
            assert j.commit()


def test_the_window_keeps_each_clients_last_ids(path: Path, opened: list[Journal]) -> None:
    j, _ = open_journal(path, opened, window=64)
    orders(j, 1, 300)
    j.stage(entry(301, "other-1", "other"))
    j.commit()
    assert all(j.lookup("c1", f"c1-{n}") == n for n in range(237, 301))  # the last 64, always
    assert 64 <= len(j.window["c1"]) <= 96 and j.lookup("other", "other-1") == 301
    j, log = open_journal(path, opened, window=64)  # a restart from the open segment
    assert [j.lookup("c1", f"c1-{n}") for n in range(237, 301)] == list(range(237, 301))
    assert j.lookup("c1", "c1-236") is None and len(j.window["c1"]) == 64
    assert log.find("journal_loaded")["orders"] == 301
    j.roll("size")
    j, log = open_journal(path, opened, window=64)  # a restart from the checkpoint
    assert [j.lookup("c1", f"c1-{n}") for n in range(237, 301)] == list(range(237, 301))
    assert len(j.window["c1"]) == 64 and j.lookup("other", "other-1") == 301
    assert log.find("journal_loaded")["read"] == 0


# --- segments and the checkpoint ----------------------------------------------


def state(j: Journal) -> tuple[Any, ...]:
    """What a restart must rebuild: order numbers, positions, last ids, the window."""
    return (j.last_no, j.orders, {c: {s: q for s, q in p.items() if q} for c, p in j.positions.items()},
            dict(j.last_id), {c: list(ids.items())[-j.window_size:] for c, ids in j.window.items()})


def rolled(path: Path, opened: list[Journal], n: int, segment_bytes: int = 2000) -> Journal:
    """A journal of ``n`` orders of two clients, rolled by size on the way."""
    j, _ = open_journal(path, opened, segment_bytes=segment_bytes)
    for i in range(1, n + 1):
        cid = "c1" if i % 3 else "c2"
        j.stage(entry(i, f"{cid}-{i}", cid, "AAPL" if i % 2 else "MSFT", "BUY" if i % 4 else "SELL", i % 7 + 1))
        j.commit()
        j.tick()
    return j


def test_rolls_by_size_into_numbered_segments(path: Path, opened: list[Journal]) -> None:
    j = rolled(path, opened, 60)
    log: FakeLog = j.log
    closed = journal.closed_segments(path)
    assert [n for n, _ in closed] == list(range(1, len(closed) + 1)) and len(closed) >= 4
    line = max(len(x) for _, p in closed for x in p.read_bytes().splitlines()) + 1
    assert all(2000 <= p.stat().st_size < 2000 + 2 * line for _, p in closed)
    assert [e["order_no"] for e in journal.read(path)] == list(range(1, 61))
    assert journal.segments(path) == [p for _, p in closed] + [path]
    rolls = [kw for _, ev, kw in log.calls if ev == "journal_rolled"]
    assert [r["segment"] for r in rolls] == [n for n, _ in closed] and {r["reason"] for r in rolls} == {"size"}
    cp = read_checkpoint(path)
    assert cp is not None and cp.segments == len(closed)
    assert cp.last_no == cp.orders == sum(len(p.read_bytes().splitlines()) for _, p in closed)
    assert {p.name.removeprefix(path.name) for p in path.parent.iterdir()} == \
        {"", ".lock", ".checkpoint", *(f".{n}" for n, _ in closed)}


def test_closed_segments_never_change(path: Path, opened: list[Journal]) -> None:
    j = rolled(path, opened, 40)
    before = {p: p.read_bytes() for _, p in journal.closed_segments(path)}
    j, _ = open_journal(path, opened, segment_bytes=2000)
    orders(j, 41, 80, per_commit=1)
    j.roll("size")
    after = {p: p.read_bytes() for _, p in journal.closed_segments(path)}
    assert {p: after[p] for p in before} == before and len(after) > len(before)


def test_restart_reads_the_checkpoint_and_the_open_segment_only(path: Path, opened: list[Journal]) -> None:
    j = rolled(path, opened, 100)
    want = state(j)
    for _, p in journal.closed_segments(path):  # wreck every closed segment: a restart must not read them
        p.write_bytes(b"x" * p.stat().st_size)
    j, log = open_journal(path, opened, segment_bytes=2000)
    assert state(j) == want
    assert log.find("journal_loaded")["read"] == len(path.read_bytes().splitlines())
    assert log.events("warning") == log.events("error") == []
    j.stage(entry(101, "c1-101"))
    assert j.commit() and j.last_no == 101


def test_a_roll_cut_short_is_finished_at_start(path: Path, opened: list[Journal]) -> None:
    """Died after closing segment n, before its checkpoint: the restart reads
    segment n too, and writes the checkpoint; a half-made next segment goes."""
    j = rolled(path, opened, 30)
    old_cp = Path(str(path) + ".checkpoint").read_bytes()
    orders(j, 31, 60, client="c3")
    assert j.roll("size")
    want = state(j)
    Path(str(path) + ".checkpoint").write_bytes(old_cp)
    Path(str(path) + ".next").write_bytes(b"")
    n, last = journal.closed_segments(path)[-1]
    j, log = open_journal(path, opened, segment_bytes=2000)
    assert state(j) == want and not Path(str(path) + ".next").exists()
    cp = read_checkpoint(path)
    assert cp is not None and cp.segments == n
    assert log.find("journal_loaded")["read"] == len(last.read_bytes().splitlines()) > 30
    j, log = open_journal(path, opened, segment_bytes=2000)
    assert state(j) == want and log.find("journal_loaded")["read"] == 0


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_without_a_good_checkpoint_every_segment_is_read(path: Path, opened: list[Journal], damage: str) -> None:
    j = rolled(path, opened, 50)
    want = state(j)
    cp = Path(str(path) + ".checkpoint")
    if damage == "missing":
        cp.unlink()
    else:
        cp.write_bytes(b'{"segments": 3, "ord')
    j, log = open_journal(path, opened, segment_bytes=2000)
    assert state(j) == want
    assert log.find("journal_loaded")["read"] == 50
    assert (log.events("warning"), log.events("error")) == (
        (["journal_checkpoint_missing"], []) if damage == "missing" else ([], ["journal_checkpoint_unreadable"]))
    assert read_checkpoint(path) is not None  # written again


@pytest.mark.parametrize(("now", "minute", "want"), [
    ("2024-03-05T17:00:00", 17 * 60, "2024-03-05T17:00:00"),
    ("2024-03-05T16:59:59", 17 * 60, "2024-03-04T17:00:00"),
    ("2024-03-05T17:00:01", 17 * 60, "2024-03-05T17:00:00"),
    ("2024-03-05T00:10:00", 0, "2024-03-05T00:00:00"),
    ("2024-03-05T23:59:00", 23 * 60 + 59, "2024-03-05T23:59:00"),
])
def test_boundary_before(now: str, minute: int, want: str) -> None:
    def ts(iso: str) -> float:
        return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp()
    assert journal.boundary_before(ts(now), minute) == ts(want)


def test_rolls_at_the_session_boundary(path: Path, opened: list[Journal]) -> None:
    boundary = dt.datetime(2024, 3, 5, 21, 30, tzinfo=dt.UTC).timestamp()
    j, log = open_journal(path, opened, roll_at=21 * 60 + 30)

    def order(n: int, at: float) -> None:
        ns = int(at * 1e9)
        j.stage(Entry(n, f"c1-{n}", "c1", "AAPL", "BUY", 1, 100.0, ns, ns, ns))
        assert j.commit()

    order(1, boundary - 60)
    j.tick(boundary - 1)
    assert journal.closed_segments(path) == []
    j.tick(boundary + 1)  # the session ended: what it journaled is a segment of its own
    assert [n for n, _ in journal.closed_segments(path)] == [1]
    assert log.find("journal_rolled")["reason"] == "session"
    order(2, boundary + 2)
    j.tick(boundary + 3)
    j.tick(boundary + 86399)
    assert len(journal.closed_segments(path)) == 1
    # down across the next boundary: the restart's first turn closes the old session
    j, log = open_journal(path, opened, roll_at=21 * 60 + 30)
    j.tick(boundary + 86400 + 5)
    assert [n for n, _ in journal.closed_segments(path)] == [1, 2]
    j.tick(boundary + 2 * 86400 + 5)  # nothing journaled since: no empty segment
    assert len(journal.closed_segments(path)) == 2
    j, _ = open_journal(path, opened)  # no roll_at: never by time
    order(3, boundary)
    j.tick(boundary + 10 * 86400)
    assert len(journal.closed_segments(path)) == 2


# --- a full disk, for real ----------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs of the test's own (CI runs as root), unmounted after it."""
    with disk.tmpfs(tmp_path / "fs", 256 * 1024) as mnt:
        yield mnt


def test_a_failed_write_is_undone_then_writes_resume(small_fs: Path, opened: list[Journal]) -> None:
    path = small_fs / "orders.jsonl"
    j, log = open_journal(path, opened)
    orders(j, 1, 3)
    ballast = disk.fill(small_fs)
    try:
        n = 3
        while True:  # the last block may still take a few lines
            want, good = state(j), path.read_bytes()
            for i in range(n + 1, n + 21):
                j.stage(entry(i, f"c2-{i}", "c2", "MSFT", "SELL", 2))
            if not j.commit():
                break
            n += 20
            assert n < 5000, "the disk never filled"
        assert path.read_bytes() == good  # back at its last whole line
        assert state(j) == want and j.committed_no == j.last_no == n
        assert j.lookup("c2", f"c2-{n + 1}") is None
        failed = log.find("journal_write_failed")
        assert (failed["errno"], failed["orders"]) == ("ENOSPC", 20) and "journal_write_failed" in log.events("error")
        assert not j.available and not j.may_try(time.monotonic())
        assert j.may_try(time.monotonic() + journal.PROBE_S)
        for i in range(n + 1, n + 21):  # the same again: still no room
            j.stage(entry(i, f"c2-{i}", "c2", "MSFT", "SELL", 2))
        assert not j.commit()  # undone again, but not logged again so soon
        assert log.events("error") == ["journal_write_failed"] and path.read_bytes() == good
    finally:
        disk.release(ballast)
    j.stage(entry(n + 1, f"c2-{n + 1}", "c2"))
    assert j.commit() and j.available
    assert log.find("journal_writable")["down_ms"] >= 0
    assert [x["order_no"] for x in lines(path)] == list(range(1, n + 2))
    j, _ = open_journal(path, opened)
    assert j.last_no == n + 1 and j.lookup("c2", f"c2-{n + 1}") == n + 1


def test_a_checkpoint_that_cannot_be_written_costs_only_time(small_fs: Path, opened: list[Journal]) -> None:
    path = small_fs / "orders.jsonl"
    j, log = open_journal(path, opened, window=64)
    orders(j, 1, 200)
    want = state(j)
    with disk.full(small_fs):
        assert j.roll("size")  # the segment is closed; its checkpoint finds no room
        assert log.find("journal_checkpoint_failed")["errno"] == "ENOSPC"
    assert read_checkpoint(path) is None and [n for n, _ in journal.closed_segments(path)] == [1]
    j, log = open_journal(path, opened, window=64)
    assert state(j) == want and log.find("journal_loaded")["read"] == 200
    assert read_checkpoint(path) is not None  # written at this start
