"""The fault suite's checks on records, by tables: each must catch what it is for."""

from __future__ import annotations

from typing import Any

import pytest

from shared.ops import proxy
from shared.ops.invariants import ack_problems, journal_problems, restart_problems, strategy_problems


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
