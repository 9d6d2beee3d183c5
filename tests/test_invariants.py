"""The fault suite's checks on records, by tables: each must catch what it is for."""

from __future__ import annotations

from typing import Any

import pytest

from shared.execstate import ExecLine
from shared.ops.chaos import proxy
from shared.ops.chaos.invariants import (
    ack_problems,
    delivery_problems,
    exec_problems,
    fill_problems,
    journal_problems,
    restart_problems,
    strategy_problems,
)


def entry(no: int, oid: str, side: str = "BUY", qty: int = 10, sym: str = "AAPL", cid: str = "s-1") -> dict[str, Any]:
    return {"order_no": no, "order_id": oid, "client_id": cid, "symbol": sym, "side": side, "qty": qty}


GOOD = [entry(1, "a"), entry(2, "b", "SELL", 20), entry(3, "x", cid="other"), entry(4, "c", "BUY", 20)]


@pytest.mark.parametrize(("journal", "problem"), [
    (GOOD, None),
    ([], None),
    ([entry(1, "a"), entry(2, "a", "SELL")], "more than once"),
    ([entry(1, "a"), entry(2, "a", cid="other")], None),  # unique per client only
    ([entry(1, "a"), entry(3, "b", "SELL")], "not contiguous"),
    ([entry(2, "a")], "not contiguous"),
    ([entry(1, "a"), entry(2, "b")], "beyond"),  # +20: an order repeated
    ([entry(1, "a", "SELL", 20)], "beyond"),
    ([entry(1, "a"), entry(2, "b", sym="MSFT"), entry(3, "c", "SELL", 20)], None),
])
def test_journal_problems(journal: list[dict[str, Any]], problem: str | None) -> None:
    found = journal_problems(journal, {"s-1": 10})
    assert (problem is None and not found) or (problem is not None and any(problem in p for p in found)), found


@pytest.mark.parametrize(("acks", "bad"), [
    ([("s-1", "a", 1), ("s-1", "b", 2), ("other", "x", 3)], 0),
    ([("s-1", "a", 2)], 1),  # wrong order_no
    ([("s-1", "zz", 9)], 1),  # acked, never journaled
    ([("other", "a", 1)], 1),  # the id of another client
])
def test_ack_problems(acks: list[tuple[str, str, int]], bad: int) -> None:
    assert len(ack_problems(GOOD, acks)) == bad


def st(process: str, to: str, pid: int | None) -> dict[str, Any]:
    return {"process": process, "to_state": to, "pid": pid}


@pytest.mark.parametrize(("audit", "bad"), [
    ([st("gw", "EXITED", 10), st("gw", "STARTING", None), st("gw", "RUNNING", 11)], 0),
    ([st("gw", "STOPPING", 10), st("gw", "RUNNING", 11)], 0),
    ([st("gw", "RUNNING", 11)], 1),  # the exit is missing
    ([st("gw", "EXITED", 10)], 1),  # the new pid never RUNNING
    ([st("ob", "EXITED", 10), st("ob", "RUNNING", 11)], 2),  # another program's records
])
def test_restart_problems(audit: list[dict[str, Any]], bad: int) -> None:
    assert len(restart_problems(audit, "gw", 10, 11)) == bad


def ev(event: str, pid: int = 1, **kw: Any) -> dict[str, Any]:
    return {"event": event, "pid": pid, **kw}


UP = [ev("started"), ev("book_fresh"), ev("logged_on")]


@pytest.mark.parametrize(("log", "problem"), [
    ([*UP, ev("order_sent", order_id="1")], None),
    ([ev("started"), ev("book_fresh"), ev("order_sent", order_id="1")], "link was down"),
    ([ev("started"), ev("logged_on"), ev("order_sent", order_id="1")], "stale"),
    ([*UP, ev("disconnected", stream="orders"), ev("order_sent", order_id="1")], "link was down"),
    ([*UP, ev("disconnected", stream="news"), ev("order_sent", order_id="1")], None),
    ([*UP, ev("book_stale"), ev("order_sent", order_id="1")], "stale"),
    ([*UP, ev("book_stale"), ev("book_fresh"), ev("order_sent", order_id="1")], None),
    ([*UP, ev("started", pid=2), ev("order_sent", pid=2, order_id="1")], "link was down"),  # a new process
])
def test_strategy_problems(log: list[dict[str, Any]], problem: str | None) -> None:
    found = strategy_problems(log)
    assert (problem is None and not found) or (problem is not None and any(problem in p for p in found)), found


@pytest.mark.parametrize(("spec", "want"), [
    ("latency:ms=200,jitter=50", {"type": "latency", "stream": "both", "ms": 200, "jitter": 50}),
    ("blackhole:stream=upstream", {"type": "blackhole", "stream": "upstream"}),
    ("limit_data", {"type": "limit_data", "stream": "both", "bytes": 1000}),
])
def test_parse_toxic(spec: str, want: dict[str, Any]) -> None:
    assert proxy.parse_toxic(spec) == want


@pytest.mark.parametrize("spec", ["nope", "latency:ms", "latency:ms=-1", "latency:bogus=1", "slicer:stream=sideways",
                                  "bandwidth:rate=0"])
def test_parse_toxic_refuses(spec: str) -> None:
    with pytest.raises(proxy.ToxicError):
        proxy.parse_toxic(spec)
def test_journal_problems_bound_each_client_apart() -> None:
    two = [entry(1, "a"), entry(2, "b", cid="c-2"), entry(3, "c", cid="c-2"), entry(4, "d", cid="free"),
           entry(5, "e", cid="free")]
    assert journal_problems(two, {"s-1": 10, "c-2": 20, "free": None}) == []
    found = journal_problems(two, {"s-1": 10, "c-2": 10})
    assert len(found) == 1 and found[0].startswith("c-2 position 20 AAPL beyond ±10"), found


# --- contract §9: the exec journal, fills, delivery ------------------------------------------------


def x(exec_id: int, no: int, status: str, last_qty: int = 0, cum: int = 0, leaves: int = 0, side: str = "BUY",
      cid: str = "s-1", oid: str | None = None, sym: str = "AAPL", recv_ns: int = 0) -> ExecLine:
    return ExecLine(oid or f"o{no}", exec_id, status, last_qty, 100.0 if last_qty else None, cum, leaves,
                    100.0 if cum else None, 1, sym, side, cid, no, recv_ns or exec_id * 10**9)


def order(no: int, qty: int = 10, side: str = "BUY", cid: str = "s-1", tif: str = "day", recv_ns: int = 1,
          sym: str = "AAPL") -> dict[str, Any]:
    return {"order_no": no, "order_id": f"o{no}", "client_id": cid, "symbol": sym, "side": side, "qty": qty,
            "tif": tif, "recv_ns": recv_ns}


ORDERS = [order(1), order(2, side="SELL"), order(3, tif="ioc")]
LIFE = [x(1, 1, "new", leaves=10), x(2, 2, "new", side="SELL", leaves=10), x(3, 1, "partially_filled", 4, 4, 6),
        x(4, 3, "new", leaves=10), x(5, 3, "expired", cum=0), x(6, 1, "filled", 6, 10, 0)]


@pytest.mark.parametrize(("execs", "problem"), [
    (LIFE, None),
    ([], None),
    (LIFE[:2], None),  # open orders are fine
    ([*LIFE, x(6, 2, "canceled")], "more than once"),
    ([LIFE[1], LIFE[0]], "not increasing"),
    ([x(1, 9, "new")], "no such order"),
    ([x(1, 1, "new", oid="zz")], "no such order"),
    ([x(1, 1, "new", cid="other")], "no such order"),
    ([x(1, 1, "filled", 10, 10)], "before its new"),
    ([*LIFE, x(7, 1, "canceled", cum=10)], "after it ended filled"),  # a second terminal
    ([LIFE[0], x(2, 1, "partially_filled", 4, 5, 5)], "cum_qty 5, its fills sum to 4"),
    ([LIFE[0], x(2, 1, "filled", 11, 11, 0)], "qty 10"),
    ([LIFE[0], x(4, 1, "partially_filled", 1, 1, 9)], None),  # a gap in exec_ids (another client's)
    ([x(1, 3, "new", leaves=10), x(9, 1, "new", leaves=10)], "ioc order_no 3 (s-1/o3) never ended"),
    ([x(1, 3, "new", leaves=10), x(2, 1, "new", leaves=10)], None),  # within the grace
])
def test_exec_problems(execs: list[ExecLine], problem: str | None) -> None:
    found = exec_problems(execs, ORDERS)
    assert (problem is None and not found) or (problem is not None and any(problem in p for p in found)), found


def test_exec_problems_leave_the_orders_before_the_venue_alone() -> None:
    assert exec_problems([x(1, 3, "new", leaves=10)], ORDERS, base=2) == []
    assert "no such order" in exec_problems([x(1, 2, "new")], ORDERS, base=2)[0]


def logon(cid: str, last: int | None, positions: dict[str, int]) -> dict[str, Any]:
    return {"event": "logon", "client_id": cid, "last_exec_id": last, "positions": positions, "ts": "t"}


FILLS = [x(1, 1, "new", leaves=10), x(2, 1, "filled", 10, 10), x(3, 2, "new", side="SELL", cid="c-2", leaves=5),
         x(4, 2, "partially_filled", 3, 3, 2, side="SELL", cid="c-2"), x(5, 3, "new", side="SELL", leaves=10),
         x(6, 3, "filled", 10, 10, side="SELL")]


@pytest.mark.parametrize(("logons", "problem"), [
    ([logon("s-1", None, {}), logon("s-1", 2, {"AAPL": 10}), logon("c-2", 4, {"AAPL": -3}), logon("s-1", 6, {})],
     None),
    ([logon("s-1", 2, {})], "its fills make {'AAPL': 10}"),
    ([logon("s-1", 6, {"AAPL": 10})], "its fills make {}"),  # flat: not listed
    ([logon("s-1", None, {"AAPL": 10})], "before any exec"),
    ([logon("s-1", 99, {})], "not in the exec journal"),
    ([logon("s-1", 4, {})], "(of c-2)"),  # a last_exec_id of another client's exec
])
def test_fill_problems_logon_positions(logons: list[dict[str, Any]], problem: str | None) -> None:
    found = fill_problems(FILLS, {}, logons)
    assert (problem is None and not found) or (problem is not None and any(problem in p for p in found)), found


def test_fill_problems_bound_each_client_on_fills_and_check_the_audit() -> None:
    assert fill_problems(FILLS, {"s-1": 10, "c-2": 3}, []) == []
    found = fill_problems(FILLS, {"s-1": 10, "c-2": 2}, [])
    assert len(found) == 1 and found[0].startswith("c-2 filled position -3 AAPL beyond ±2 after exec 4"), found
    # An order acked but not filled moves nothing: 10 filled, +20 open is no breach of ±10.
    assert fill_problems([*FILLS, x(7, 4, "new", leaves=20)], {"s-1": 10}, []) == []
    audit = {"s-1": {"symbols": {"AAPL": {"position": 0}}}, "c-2": {"symbols": {"AAPL": {"position": -3}}}}
    assert fill_problems(FILLS, {}, [], audit) == []
    audit["c-2"]["symbols"]["AAPL"]["position"] = -5
    assert fill_problems(FILLS, {}, [], audit) == ["audit: c-2 positions {'AAPL': -5}, its fills make {'AAPL': -3}"]


def test_fill_problems_allow_what_a_counted_order_left_unfilled() -> None:
    """At +10 the rule sells 20; with the sell still open (exposure -10) the signal turns and it buys 20.
    The sell expires unfilled (another client took the quote's bid), the buy fills: +30, as the rule of
    contract §7 counts an open order as done. Beyond that, or without a decision that counted it, a breach."""
    seen = {"position": 10, "open_orders": [{"order_id": "o2", "side": "SELL", "qty": 20, "cum_qty": 0,
                                             "leaves_qty": 20}]}
    journal = [order(1, tif="ioc"), order(2, 20, "SELL", tif="ioc"), {**order(3, 20, tif="ioc"), "ctx": seen},
               order(4, tif="ioc")]
    execs = [x(1, 1, "new", leaves=10), x(2, 1, "filled", 10, 10), x(3, 2, "new", side="SELL", leaves=20),
             x(4, 2, "expired", side="SELL"), x(5, 3, "new", leaves=20), x(6, 3, "filled", 20, 20)]
    assert fill_problems(execs, {"s-1": 10}, [], journal=journal) == []
    found = fill_problems(execs, {"s-1": 10}, [], journal=[*journal[:2], order(3, 20, tif="ioc")])
    assert found == ["s-1 filled position 30 AAPL beyond ±10 after exec 6 (o3)"], found
    more = [*execs, x(7, 4, "new", leaves=10), x(8, 4, "filled", 10, 10)]
    assert fill_problems(more, {"s-1": 10}, [], journal=journal) == [
        "s-1 filled position 40 AAPL beyond ±10 after exec 8 (o4)"]
    # What a counted sell left lets the position go above the bound only.
    down = [x(1, 2, "new", side="SELL", leaves=20), x(2, 2, "expired", side="SELL"),
            x(3, 1, "new", side="SELL", leaves=10), x(4, 1, "filled", 10, 10, side="SELL"),
            x(5, 4, "new", side="SELL", leaves=10), x(6, 4, "filled", 10, 10, side="SELL")]
    assert fill_problems(down, {"s-1": 10}, [], journal=journal) == [
        "s-1 filled position -20 AAPL beyond ±10 after exec 6 (o4)"]


def rx(pid: int, event: str, exec_id: int | None = None, last: int | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"pid": pid, "event": event, "ts": "t"}
    if event == "logged_on":
        r["last_exec_id"] = last
    else:
        r["exec_id"] = exec_id
    return r


@pytest.mark.parametrize(("records", "problem", "missing"), [
    ([rx(1, "logged_on"), rx(1, "exec_received", 1), rx(1, "exec_received", 2), rx(1, "exec_received", 5),
      rx(1, "exec_received", 6)], None, None),
    # a restart: the new process took 1..2 from its logon_ack's figures, then gets the rest live
    ([rx(1, "logged_on"), rx(1, "exec_received", 1), rx(2, "logged_on", last=2), rx(2, "exec_received", 5),
      rx(2, "exec_received", 6)], None, None),
    ([rx(1, "logged_on"), rx(1, "exec_received", 1), rx(2, "logged_on", last=2), rx(2, "exec_received", 5)],
     None, "execs not received: [6]"),
    ([rx(1, "logged_on"), rx(1, "exec_received", 1), rx(1, "exec_received", 2), rx(1, "exec_received", 2),
      rx(1, "exec_received", 5), rx(1, "exec_received", 6)], "received more than once: [2]", None),
    ([rx(1, "logged_on"), rx(1, "exec_received", 1), rx(2, "logged_on"), rx(2, "exec_received", 1),
      rx(2, "exec_received", 2), rx(2, "exec_received", 5), rx(2, "exec_received", 6)], "more than once: [1]", None),
    ([rx(1, "logged_on", last=6), rx(1, "exec_duplicate", 6)], "exec_duplicate 6", None),
    ([rx(1, "started")], None, None),  # not logged on yet: nothing is due
])
def test_delivery_problems(records: list[dict[str, Any]], problem: str | None, missing: str | None) -> None:
    found, lost = delivery_problems(FILLS, {"s-1": records})
    assert (problem is None and not found) or (problem is not None and any(problem in p for p in found)), found
    assert (missing is None and not lost) or (missing is not None and any(missing in p for p in lost)), lost
