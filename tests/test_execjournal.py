"""The ordermanager's exec journal (shared/execjournal.py): written whole before forwarding, read
back at start (a torn last line cut off), the base of orders before the venue, the per-client index."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared import execjournal
from shared.execjournal import ExecJournal, read_base, read_lines
from shared.execstate import ExecLine, ExecState, build, decode_line, snapshot
from shared.journal import Entry, Journal, entries_after, segments
from shared.protocol import Exec


class Log:
    """A logger that keeps (event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.records.append((event, kw))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for e, kw in self.records if e == name]


def x(exec_id: int, order_no: int, status: str = "new", cum: int = 0, leaves: int = 10, last_qty: int = 0,
      last_px: float | None = None, cid: str = "c1", **kw: Any) -> ExecLine:
    return ExecLine(f"{cid}-{order_no}", exec_id, status, last_qty, last_px, cum, leaves, last_px, 1, "AAPL", "BUY",
                    cid, order_no, 2, **kw)


def open_journal(path: Path, last_order_no: int = 0) -> tuple[ExecJournal, ExecState, Log]:
    log = Log()
    st = ExecState()
    return ExecJournal(str(path), "write", log, st, last_order_no), st, log


def test_staged_execs_are_written_in_one_commit_and_read_back(tmp_path: Path) -> None:
    j, st, _ = open_journal(tmp_path / "orders.jsonl")
    for line in (x(1, 1, order_qty=10, order_price=99.0), x(2, 2, cid="c2"),
                 x(3, 1, "partially_filled", 4, 6, 4, 99.0)):
        assert j.stage(line)
    assert not j.stage(x(3, 1, "filled", 10, 0, 6, 99.0))  # not above the highest staged
    assert st.last_exec_id == 0  # the state moves only once the lines are written
    assert [e.exec_id for e in j.commit() or []] == [1, 2, 3]
    assert st.last_exec_id == 3 and st.nonzero_positions("c1") == {"AAPL": 4}
    assert [len(j.index["c1"]), len(j.index["c2"])] == [2, 1]
    # A line is the wire's exec frame body plus ours: a strategy decodes it as an exec.
    assert msgspec.json.decode(j.line(j.index["c1"], 1), type=Exec).exec_id == 3
    j.close()
    j2, st2, log = open_journal(tmp_path / "orders.jsonl")
    assert (st2.last_exec_id, st2.nonzero_positions("c1"), j2.highest) == (3, {"AAPL": 4}, 3)
    assert [o.price for o in st2.open_orders("c1")] == [99.0]
    assert not j2.recent
    assert j2.line(j2.index["c1"], 1) == j.recent[3]  # from the file now, the same bytes
    assert [e.exec_id for e in read_lines(tmp_path / "orders.jsonl")] == [1, 2, 3]
    assert log.events("exec_journal_loaded")[0]["execs"] == 3
    j2.close()


def test_a_torn_last_line_is_cut_off_at_start(tmp_path: Path) -> None:
    j, _, _ = open_journal(tmp_path / "o.jsonl")
    j.stage(x(1, 1))
    j.stage(x(2, 2))
    j.commit()
    j.close()
    path = tmp_path / "o.jsonl.execs"
    whole = path.read_bytes()
    path.write_bytes(whole + msgspec.json.encode(x(3, 3))[:25])
    j2, st, log = open_journal(tmp_path / "o.jsonl")
    assert path.read_bytes() == whole and st.last_exec_id == 2 and j2.size == len(whole)
    assert log.events("exec_journal_repaired")[0]["dropped_bytes"] == 25
    assert j2.stage(x(3, 3)) and j2.commit()
    j2.close()
    assert [e.exec_id for e in read_lines(tmp_path / "o.jsonl")] == [1, 2, 3]


def test_a_corrupt_middle_line_is_skipped_and_said(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl.execs"
    path.write_bytes(msgspec.json.encode(x(1, 1)) + b"\n{garbage\n" + msgspec.json.encode(x(2, 2)) + b"\n")
    j, st, log = open_journal(tmp_path / "o.jsonl")
    assert st.last_exec_id == 2 and log.events("exec_journal_corrupt_line")[0]["line"] == 2
    assert j.line(j.index["c1"], 1) == msgspec.json.encode(x(2, 2))
    j.close()


def test_the_orders_before_the_venue_are_history(tmp_path: Path) -> None:
    """Created beside a journal that holds orders already: those are never routed, also after a restart."""
    j, st, log = open_journal(tmp_path / "o.jsonl", last_order_no=41)
    assert st.routed_upto == 41 and read_base(tmp_path / "o.jsonl") == 41
    assert log.events("exec_journal_base") == [{"path": f"{tmp_path}/o.jsonl.execs.base", "order_no": 41}]
    j.close()
    j2, st2, _ = open_journal(tmp_path / "o.jsonl", last_order_no=50)  # 42..50 came with the venue
    assert st2.routed_upto == 41
    j2.close()
    j3, st3, _ = open_journal(tmp_path / "fresh.jsonl")
    assert st3.routed_upto == 0 and read_base(tmp_path / "fresh.jsonl") == 0
    assert not (tmp_path / "fresh.jsonl.execs.base").exists()
    j3.close()


def test_a_failed_write_holds_the_execs_and_leaves_whole_lines(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk: the file stays at its last whole line, the execs stay staged (not in the state,
    not forwarded), tried again after PROBE_S; past HELD_MAX they are dropped for the venue to send again."""
    j, st, log = open_journal(tmp_path / "o.jsonl")
    j.stage(x(1, 1))
    j.commit()
    real = os.write

    def full(fd: int, data: Any) -> int:
        real(fd, bytes(data)[:7])  # part of a line gets out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execjournal.os, "write", full)
    j.stage(x(2, 2))
    assert j.commit() == [] and j.held and j.error == "No space left on device"
    assert (j.highest, st.last_exec_id) == (2, 1)  # held: a repeat of exec 2 is not taken twice
    assert not j.stage(x(2, 2)) and j.stage(x(3, 3))
    assert j.commit() == []  # not tried again before PROBE_S
    assert log.events("exec_journal_write_failed")[0]["errno"] == "ENOSPC"
    monkeypatch.setattr(execjournal.os, "write", real)
    assert j.commit() == []
    j.retry_at = 0.0
    assert [e.exec_id for e in j.commit() or []] == [2, 3] and not j.held and j.error == ""
    assert st.last_exec_id == 3 and log.events("exec_journal_writable")
    monkeypatch.setattr(execjournal.os, "write", full)
    monkeypatch.setattr(execjournal, "HELD_MAX", 1)
    j.stage(x(4, 4))
    j.stage(x(5, 5))
    assert j.commit() is None and not j.staged and j.highest == 3  # dropped: taken again when resent
    assert log.events("exec_journal_dropped")[0]["execs"] == 2
    monkeypatch.setattr(execjournal.os, "write", real)
    j.retry_at = 0.0
    assert j.stage(x(4, 4)) and [e.exec_id for e in j.commit() or []] == [4]
    j.close()
    assert [e.exec_id for e in read_lines(tmp_path / "o.jsonl")] == [1, 2, 3, 4]


def test_the_recent_lines_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execjournal, "RECENT", 5)
    j, _, _ = open_journal(tmp_path / "o.jsonl")
    for i in range(1, 13):
        j.stage(x(i, i))
    j.commit()
    assert sorted(j.recent) == [8, 9, 10, 11, 12]
    idx = j.index["c1"]
    assert [msgspec.json.decode(j.line(idx, i), type=Exec).exec_id for i in range(12)] == list(range(1, 13))
    assert idx.after(None) == 12 and idx.after(0) == 0 and idx.after(7) == 7 and idx.after(99) == 12
    j.close()


def test_entries_after_reads_only_the_segments_it_needs(tmp_path: Path) -> None:
    path = str(tmp_path / "o.jsonl")
    j = Journal(path, "write", Log(), segment_bytes=4096)
    for n in range(1, 31):
        j.stage(Entry(n, f"c1-{n}", "c1", "AAPL", "BUY", 1, None if n == 30 else 10.0, 1, 1, 1,
                      "market" if n == 30 else "limit", "ioc" if n == 30 else "day"))
        j.commit()
        if n % 10 == 0:
            j.roll("size")
    j.close()
    assert [e.order_no for e in entries_after(path, 25)] == [26, 27, 28, 29, 30]
    assert [e.order_no for e in entries_after(path, 8)] == list(range(9, 31))
    assert [e.order_no for e in entries_after(path, 0)] == list(range(1, 31))
    last = list(entries_after(path, 29))[0]
    assert (last.price, last.ord_type, last.tif) == (None, "market", "ioc")


def test_an_old_journal_line_reads_as_a_limit_order_for_the_day(tmp_path: Path) -> None:
    old = b'{"order_no":1,"order_id":"a","client_id":"c","symbol":"AAPL","side":"BUY","qty":1,"price":1.5,' \
          b'"ts_ns":1,"tick_ts_ns":1,"recv_ns":1}\n'
    (tmp_path / "o.jsonl").write_bytes(old)
    [e] = entries_after(tmp_path / "o.jsonl", 0)
    assert (e.price, e.ord_type, e.tif) == (1.5, "limit", "day")


# --- segments and the checkpoint ---------------------------------------------------------------------


def history(orders: int) -> list[ExecLine]:
    """Execs of ``orders`` orders of two clients: each new, most partly filled, every third ended
    (filled or canceled), so some stay open with leaves."""
    out: list[ExecLine] = []
    for no in range(1, orders + 1):
        cid = "c1" if no % 2 else "c2"
        out.append(x(len(out) + 1, no, cid=cid, order_qty=10, order_price=99.0))
        if no % 4:
            out.append(x(len(out) + 1, no, "partially_filled", 4, 6, 4, 99.0, cid=cid))
        if no % 3 == 0:
            end = "filled" if no % 2 else "canceled"
            out.append(x(len(out) + 1, no, end, 10 if end == "filled" else 4 if no % 4 else 0, 0,
                         (6 if no % 4 else 10) if end == "filled" else 0, 99.0, cid=cid))
    return out


def write_history(path: Path, lines: list[ExecLine], segment_bytes: int = 2048, per_turn: int = 3) -> ExecJournal:
    """An exec journal (left open) that took ``lines`` a few per turn, ticking between turns."""
    j = ExecJournal(str(path), "write", Log(), ExecState(), 0, segment_bytes)
    for k in range(0, len(lines), per_turn):
        for line in lines[k : k + per_turn]:
            j.stage(line)
        j.commit()
        j.tick()
    return j


def dump(st: ExecState) -> bytes:
    return msgspec.json.encode(snapshot(st))


def sent(j: ExecJournal, cid: str, after: int) -> list[int]:
    """The exec_ids a strategy logging on with ``after`` is sent, as the router pumps them."""
    idx = j.execs_of(cid, after)
    if idx is None:
        return []
    return [decode_line(j.line(idx, i)).exec_id for i in range(idx.after(after), len(idx))]


def test_the_open_segment_rolls_by_size_with_a_checkpoint_and_a_restart_reads_only_the_open_one(
        tmp_path: Path) -> None:
    lines = history(60)
    j = write_history(tmp_path / "o.jsonl", lines)
    assert j.closed >= 3 and j.size < 2048 + 3 * 400
    j.close()
    base = str(tmp_path / "o.jsonl.execs")
    assert [p.name for p in segments(base)][-1] == "o.jsonl.execs" and os.path.exists(base + ".checkpoint")
    assert [e.exec_id for e in read_lines(tmp_path / "o.jsonl")] == [e.exec_id for e in lines]  # every segment
    j2, st, log = open_journal(tmp_path / "o.jsonl")
    loaded = log.events("exec_journal_loaded")[0]
    in_open = sum(1 for _ in open(base, "rb"))
    assert (loaded["read"], loaded["execs"], loaded["segments"]) == (in_open, len(lines), j.closed)
    assert dump(st) == dump(build([], lines))  # the checkpoint and the open segment: as if read whole
    assert st.open_orders("c1") == build([], lines).open_orders("c1") and st.open_orders("c1")
    assert set(j2.index) <= {"c1", "c2"} and sum(map(len, j2.index.values())) == in_open  # the open segment's
    j2.close()


def test_a_session_boundary_rolls_the_open_segment(tmp_path: Path) -> None:
    j = ExecJournal(str(tmp_path / "o.jsonl"), "write", Log(), ExecState(), 0, 1 << 20, roll_at=0)
    j.stage(msgspec.structs.replace(x(1, 1), recv_ns=86400 * 10**9 - 1))  # just before a day's 00:00
    j.commit()
    j.tick(now_s=86400 - 10)  # the same day: no roll
    assert j.closed == 0
    j.tick(now_s=86400 + 10)  # began before today's 00:00 boundary
    assert j.closed == 1 and j.size == 0
    j.close()


def test_a_strategy_gets_what_it_missed_once_from_older_segments(tmp_path: Path) -> None:
    lines = history(60)
    mine = [e.exec_id for e in lines if e.client_id == "c1"]
    j = write_history(tmp_path / "o.jsonl", lines)
    for after in (0, mine[3], mine[len(mine) // 2], mine[-2], mine[-1]):
        assert sent(j, "c1", after) == [i for i in mine if i > after]
    j.close()
    j2, _, log = open_journal(tmp_path / "o.jsonl")  # a restart: only the open segment is indexed
    assert sent(j2, "c1", mine[-1]) == []
    assert sent(j2, "c1", mine[5]) == mine[6:]
    assert log.events("exec_journal_read_older")[0]["segments"] < j2.closed + 1
    assert sent(j2, "c1", 0) == mine and sent(j2, "c2", 0) == [e.exec_id for e in lines if e.client_id == "c2"]
    j2.close()


def test_a_replay_in_progress_carries_on_across_a_roll(tmp_path: Path) -> None:
    """The router's cursor is an exec_id: a roll that starts the index again loses it nothing."""
    lines = history(60)
    j = write_history(tmp_path / "o.jsonl", lines[:100])
    mine = [e.exec_id for e in lines if e.client_id == "c1"]
    got = sent(j, "c1", 0)[:10]  # a first batch
    for line in lines[100:]:
        j.stage(line)
    j.commit()
    assert j.roll("size")
    got += sent(j, "c1", got[-1])
    assert got == mine
    j.close()


def test_a_torn_tail_a_lost_checkpoint_and_a_roll_cut_short_read_the_same(tmp_path: Path) -> None:
    lines = history(60)
    j = write_history(tmp_path / "o.jsonl", lines)
    j.close()
    base = tmp_path / "o.jsonl.execs"
    whole = base.read_bytes()
    base.write_bytes(whole + b'{"type":"exec","order_id"')  # torn at the end of the open segment
    want = dump(build([], lines))
    j2, st, log = open_journal(tmp_path / "o.jsonl")
    assert base.read_bytes() == whole and log.events("exec_journal_repaired") and dump(st) == want
    j2.close()
    cp = Path(str(base) + ".checkpoint")
    older = cp.read_bytes()
    cp.write_bytes(b"{not json")
    j3, st3, log3 = open_journal(tmp_path / "o.jsonl")  # read from segment 1 again, then a new checkpoint
    assert log3.events("exec_journal_checkpoint_unreadable") and dump(st3) == want
    assert log3.events("exec_journal_loaded")[0]["read"] == len(lines)
    j3.close()
    assert cp.read_bytes() != older  # rewritten whole by that start
    os.unlink(cp)
    j4, st4, log4 = open_journal(tmp_path / "o.jsonl")
    assert log4.events("exec_journal_checkpoint_missing") and dump(st4) == want
    j4.close()
    j5, st5, log5 = open_journal(tmp_path / "o.jsonl")  # the checkpoint the last start wrote
    assert dump(st5) == want and log5.events("exec_journal_loaded")[0]["read"] < len(lines)
    j5.close()


def test_the_readers_see_every_segment(tmp_path: Path) -> None:
    """stack-audit's exec journal (the invariants and the harness use read_lines too; stack-top and
    the metrics: tests/test_activity.py)."""
    from shared.ops import audit

    lines = history(60)
    write_history(tmp_path / "o.jsonl", lines).close()
    assert [e.exec_id for e in audit.load_execs(tmp_path / "o.jsonl")["execs"]] == list(range(1, len(lines) + 1))


def test_a_reader_follows_a_roll_that_happens_while_it_reads(tmp_path: Path) -> None:
    lines = history(30)
    j = write_history(tmp_path / "o.jsonl", lines[:40], segment_bytes=1 << 20)
    assert j.roll("size")
    for line in lines[40:50]:
        j.stage(line)
    j.commit()
    reader = read_lines(tmp_path / "o.jsonl")
    got = [next(reader).exec_id for _ in range(40)]  # segment 1 read, the open one not opened yet
    assert j.roll("size")  # the open one is closed as segment 2 before the reader gets to it
    for line in lines[50:]:
        j.stage(line)
    j.commit()
    got += [e.exec_id for e in reader]
    assert got == [e.exec_id for e in lines]
    j.close()


def test_a_roll_that_fails_or_held_execs_leave_the_open_segment_in_use(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lines = history(30)
    j = write_history(tmp_path / "o.jsonl", lines[:20], segment_bytes=1 << 20)
    j.segment_bytes = 1  # full from now on
    real_write, real_rename = os.write, os.rename

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execjournal.os, "write", full)
    j.stage(lines[20])
    assert j.commit() == [] and j.held
    j.tick()  # never while execs are held: the open segment keeps its last whole line
    assert j.closed == 0
    monkeypatch.setattr(execjournal.os, "write", real_write)
    j.retry_at = 0.0
    assert j.commit()

    def refused(src: Any, dst: Any) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(execjournal.os, "rename", refused)
    j.tick()
    assert j.closed == 0 and j.log.events("exec_journal_roll_failed")[0]["errno"] == "EACCES"
    assert not (tmp_path / "o.jsonl.execs.next").exists()
    for line in lines[21:25]:  # execs go on into the open segment
        j.stage(line)
    assert len(j.commit() or []) == 4
    monkeypatch.setattr(execjournal.os, "rename", real_rename)
    j.tick()
    assert j.closed == 0  # not before RETRY_S
    j._roll_retry_at = 0.0
    j.tick()
    assert j.closed == 1 and j.size == 0
    j.close()
    assert [e.exec_id for e in read_lines(tmp_path / "o.jsonl")] == [e.exec_id for e in lines[:25]]
