"""The venue's state across a restart, without processes: a checkpoint restores an engine that
goes on exactly as the one it was taken from (hypothesis, on random inputs); the journal's
restore replays after it, repairs a torn tail and journals execs whose write was cut short;
``stack-replay`` reproduces a journal and names the first exec that differs."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import matching, venuestate
from shared.journal import segments
from shared.ops import replay
from shared.venuejournal import VenueJournal
from shared.venuerecords import CancelIn, Input, OrderIn, Start, Tick, apply, body, encode, exec_bodies_after


class Log:
    """A logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.records.append((level, event, kw))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.records if e == event]


SYMBOLS = ("AAPL", "MSFT")
CLIENTS = ("c1", "c2", "c3")


@st.composite
def inputs(draw: Any, n: int = 60) -> list[Input]:
    """Ticks, orders of every kind near the price, and cancels (some of unknown orders)."""
    out: list[Input] = []
    price = {s: 100.0 for s in SYMBOLS}
    order_no = 0
    ids: list[tuple[str, str]] = []
    for i in range(draw(st.integers(1, n))):
        kind = draw(st.sampled_from(("tick", "order", "order", "cancel")))
        sym = draw(st.sampled_from(SYMBOLS))
        if kind == "tick":
            price[sym] = round(price[sym] * (1 + draw(st.integers(-30, 30)) / 10_000), 2)
            out.append(Tick(sym, price[sym], i + 1, i))
        elif kind == "order":
            order_no += 1
            cid = draw(st.sampled_from(CLIENTS))
            oid = f"o{order_no}"
            ids.append((cid, oid))
            ord_type = draw(st.sampled_from(("limit", "limit", "market")))
            px = round(price[sym] * (1 + draw(st.integers(-20, 20)) / 10_000), 3)
            out.append(OrderIn(order_no, cid, oid, sym, draw(st.sampled_from(("BUY", "SELL"))),
                               draw(st.integers(1, 250)), None if ord_type == "market" and draw(st.booleans()) else px,
                               ord_type, draw(st.sampled_from(("day", "day", "ioc"))), i))
        elif ids:
            cid, oid = draw(st.sampled_from(ids))
            out.append(CancelIn(cid, oid, i))
    return out


def run(engine: matching.Engine, recs: list[Input], window: venuestate.Window | None = None) -> list[bytes]:
    out = []
    for r in recs:
        if window is not None and type(r) is OrderIn:
            window.add(r.client_id, r.order_id, r.order_no)
        out += [body(e) for e in apply(engine, r)]
    return out


@settings(max_examples=150, deadline=None)
@given(inputs(), st.data())
def test_a_restored_engine_goes_on_as_the_original(recs: list[Input], data: Any) -> None:
    cut = data.draw(st.integers(0, len(recs)))
    whole = run(matching.Engine(3.0, 40), recs)
    engine, window = matching.Engine(3.0, 40), venuestate.Window(size=4)
    first = run(engine, recs[:cut], window)
    lines = b"".join(venuestate.snapshot(engine, window, {"AAPL": ("s", 1)}, 2, 10, 0)).splitlines(keepends=True)
    head, again, window2 = venuestate.restore(lines)
    assert (head.segments, head.lines, head.ticks) == (2, 10, {"AAPL": ("s", 1)})
    assert again.open_orders() == engine.open_orders()
    assert (again.next_exec_id, again.spread_bps, again.depth) == (engine.next_exec_id, 3.0, 40)
    for s in SYMBOLS:
        assert again.quote(s) == engine.quote(s)
    assert (window2.ids, window2.floor) == (window.ids, window.floor)
    assert first + run(again, recs[cut:]) == whole


def test_the_window_forgets_the_oldest_and_keeps_a_floor() -> None:
    w = venuestate.Window(size=4)
    for no in range(1, 7):
        w.add("c", f"o{no}", no)
    assert w.verdict("c", "o6", 6) == "duplicate" and w.floor == 0  # 6 <= 1.5 x 4: all kept
    w.add("c", "o7", 7)
    assert list(w.ids.values()) == [4, 5, 6, 7] and w.floor == 3
    assert w.verdict("c", "o1", 1) == "stale"  # forgotten, but its number says it was seen
    assert w.verdict("c", "o9", 9) is None


def journal_with(tmp: Path, recs: list[Input], segment_bytes: int = 1 << 20) -> tuple[VenueJournal, Log]:
    """A journal written as the exchange writes one: each input, then its execs."""
    log = Log()
    j = VenueJournal(str(tmp / "exchange.jsonl"), "write", log, segment_bytes)
    r = j.restore(2.0, 100)
    j.stage(encode(Start("s1", 2.0, 100, 0)))
    for rec in recs:
        if type(rec) is OrderIn:
            r.window.add(rec.client_id, rec.order_id, rec.order_no)
        execs = apply(r.engine, rec)
        j.stage(encode(rec))
        for e in execs:
            j.stage_exec(body(e))
        j.commit()
        if j.due():
            j.roll(r.engine, r.window, {}, "size")
    return j, log


FLOW: list[Input] = [Tick("AAPL", 100.0, 1, 1), OrderIn(1, "c1", "a", "AAPL", "BUY", 250, 99.0, "limit", "day", 2),
                     OrderIn(2, "c2", "b", "AAPL", "SELL", 10, None, "market", "ioc", 3), Tick("AAPL", 98.9, 2, 4),
                     OrderIn(3, "c2", "c", "AAPL", "SELL", 5, 99.5, "limit", "day", 5), CancelIn("c2", "c", 6),
                     Tick("AAPL", 98.8, 3, 7)]


def renumbered(recs: list[Input]) -> list[Input]:
    """The orders made new ones: numbered in turn, their ids unique, cancels following them."""
    out: list[Input] = []
    for i, r in enumerate(recs, 1):
        if type(r) is OrderIn:
            r = OrderIn(i, r.client_id, f"{r.order_id}{i}", r.symbol, r.side, r.qty, r.price, r.ord_type, r.tif,
                        r.ts_ns)
        elif type(r) is CancelIn:
            r = CancelIn(r.client_id, f"{r.order_id}{i - 1}", r.ts_ns)
        out.append(r)
    return out


def test_the_checkpoint_is_written_by_a_child_one_at_a_time_and_a_failure_is_logged(tmp_path: Path) -> None:
    """A roll forks the checkpoint's writer and goes on; a roll while one writes waits for it first;
    a writer that fails is logged with its errno."""
    recs = renumbered(FLOW * 40)
    j, log = journal_with(tmp_path, recs[:100], segment_bytes=4096)
    j.wait_checkpoint()
    written = log.events("journal_checkpoint_written")
    assert written and [e["segment"] for e in written] == [e["segment"] for e in log.events("journal_rolled")]
    busy = os.fork()
    if busy == 0:  # stands for a checkpoint still being written
        time.sleep(0.5)
        os._exit(0)
    j.child = (busy, 0, time.monotonic())
    (tmp_path / "exchange.jsonl.checkpoint.tmp").mkdir()  # the next writer's open fails: EISDIR
    j.stage(encode(Start("s1", 2.0, 100, 0)))
    j.commit()
    assert j.roll(matching.Engine(), venuestate.Window(), {}, "size")  # (the writer fails: any state will do)
    assert log.events("journal_checkpoint_written")[-1]["segment"] == 0  # the stand-in, waited for
    assert j.child is not None and j.child[0] != busy  # and the next writer forked
    j.close()  # waits for the writer
    failed = log.events("journal_checkpoint_failed")
    assert [(e["errno"], e["segment"]) for e in failed] == [("EISDIR", j.closed)], failed


def test_restore_replays_after_the_checkpoint_and_matches_a_replay_from_scratch(tmp_path: Path) -> None:
    recs = renumbered(FLOW * 40)
    j, _ = journal_with(tmp_path, recs, segment_bytes=4096)
    j.close()
    assert len(segments(tmp_path / "exchange.jsonl")) > 3
    log = Log()
    j2 = VenueJournal(str(tmp_path / "exchange.jsonl"), "write", log, 4096)
    r = j2.restore(2.0, 100)
    assert r.checkpoint and r.diverged == 0 and not r.missing
    scratch = matching.Engine()
    run(scratch, recs)
    assert r.engine.open_orders() == scratch.open_orders() and r.engine.next_exec_id == scratch.next_exec_id
    assert r.lines < 60  # only the open segment was replayed
    assert [i for i, _ in r.recent] == list(range(scratch.next_exec_id - len(r.recent), scratch.next_exec_id))
    older = list(exec_bodies_after(tmp_path / "exchange.jsonl", 5))  # a peer further behind: from the files
    assert [i for i, _ in older] == list(range(6, scratch.next_exec_id))
    assert [b for _, b in older] == run(matching.Engine(), recs)[5:]
    j2.close()
    res = replay.replay(tmp_path / "exchange.jsonl")
    assert res.difference is None and res.execs == scratch.next_exec_id - 1


def test_a_torn_tail_is_cut_off_and_execs_cut_short_are_journaled(tmp_path: Path) -> None:
    j, _ = journal_with(tmp_path, FLOW)
    j.close()
    path = tmp_path / "exchange.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["k"] == "exec"  # the partial fill of the last tick
    lost = lines[-1]
    path.write_bytes(b"".join(lines[:-1]) + b'{"k":"order","order_no":9,"cli')  # a write cut short
    log = Log()
    j2 = VenueJournal(str(path), "write", log)
    r = j2.restore(2.0, 100)
    j2.close()
    torn, again = log.events("journal_repaired")
    assert torn["dropped_bytes"] == len(b'{"k":"order","order_no":9,"cli') and again["execs_journaled"] == 1
    assert path.read_bytes().splitlines(keepends=True)[-1] == lost  # derived again, journaled again
    assert r.recent[-1][1][4:] == b"{" + lost[len(b'{"k":"exec",'):].rstrip()
    assert replay.replay(path).difference is None


def test_replay_names_the_first_exec_that_differs(tmp_path: Path) -> None:
    j, _ = journal_with(tmp_path, FLOW)
    j.close()
    path = tmp_path / "exchange.jsonl"
    out = io.BytesIO()
    assert replay.main([str(path)], stdout=out) == 0
    derived = out.getvalue().splitlines()
    journaled = [ln for ln in path.read_bytes().splitlines() if ln.startswith(b'{"k":"exec"')]
    assert [b'{"k":"exec",' + d[1:] for d in derived] == journaled
    text = path.read_bytes()
    bad = text.replace(b'"last_px":99.0', b'"last_px":99.5', 1)  # the first partial fill
    assert bad != text
    path.write_bytes(bad)
    res = replay.replay(path)
    assert res.difference is not None and res.difference.startswith("exec 4 at "), res.difference
    assert replay.main([str(path), "-q"]) == 1
    path.write_bytes(text.replace(b'"qty":250', b'"qty":251'))  # an input changed: every later exec differs
    res = replay.replay(path)
    assert res.difference is not None and res.difference.startswith("exec 1 at "), res.difference


@pytest.mark.parametrize(("exec_id", "says"), [(7, "exec 7, derived from the input at"), (3, "exec 3 at")])
def test_replay_of_a_journal_missing_an_exec_fails(tmp_path: Path, exec_id: int, says: str) -> None:
    j, _ = journal_with(tmp_path, FLOW)
    j.close()
    path = tmp_path / "exchange.jsonl"
    lines = [ln for ln in path.read_bytes().splitlines(keepends=True) if json.loads(ln).get("exec_id") != exec_id]
    path.write_bytes(b"".join(lines))
    res = replay.replay(path)
    assert res.difference is not None and res.difference.startswith(says), res.difference
