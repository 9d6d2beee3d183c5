"""Per-client risk, halt/resume and P&L on a private stack under the real supervisord, through the
contract only: each limit refused with its detail, a halt that outlives an ordermanager restart,
and ``stack-audit --json``'s positions and P&L from the real journal, marked to the real book.

The gateway replays constant prices (AAPL 60, MSFT 200, GOOGL 150), so the marks are known and
the strategy, on flat averages, never trades.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.config import ROOT
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack, LogonAck, Order, Reject, frame

RISK = {"max_position": 1000, "max_orders_per_s": 0, "max_notional": 0,
        "clients": {"r-pos": {"max_position": 20}, "r-notional": {"max_notional": 5000.0},
                    "r-rate": {"max_orders_per_s": 3}}}
MARKS = {"AAPL": 60.0, "MSFT": 200.0, "GOOGL": 150.0}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("risk")
    replay = d / "prices.csv"
    replay.write_text("".join(f"{s},{p}\n" for s, p in MARKS.items()))
    s = Stack(d, {"risk": RISK, "gateway": {"replay": str(replay), "price_rate": 30.0},
                  "ordermanager": {"heartbeat_ms": 1000}})
    try:
        s.start(timeout=60)
        yield s
    finally:
        s.stop()


def logged_on(stack: Stack, cid: str) -> OrderClient:
    c = stack.wait_for(lambda: _connect(stack), timeout=60)
    assert isinstance(c.logon(cid, stack.token), LogonAck)
    return c


def _connect(stack: Stack) -> OrderClient | None:
    try:
        return OrderClient(stack.cfg.ordermanager.host, stack.cfg.ordermanager.port, timeout=10)
    except OSError:
        return None


def send(c: OrderClient, orders: list[tuple[str, int, float]], symbol: str = "AAPL") -> list[Any]:
    """Send orders in one write (pipelined, so they arrive within the same second); their answers."""
    ids = [f"o-{next(_ids)}" for _ in orders]
    now = time.time_ns()
    c.send_raw(b"".join(frame(Order(order_id=i, symbol=symbol, side=side, qty=qty, price=price,  # type: ignore[arg-type]
                                    ts_ns=now, tick_ts_ns=now))
                        for i, (side, qty, price) in zip(ids, orders, strict=True)))
    # A reject goes out at once, an ack after the turn's journal write: match them by order_id.
    answers = {a.order_id: a for a in (c.recv_type(Ack, Reject, timeout=10) for _ in orders)}
    assert set(answers) == set(ids)
    return [answers[i] for i in ids]


def outcome(a: Any) -> str:
    return "ack" if isinstance(a, Ack) else f"{a.reason}: {a.detail}"


# (client_id, orders sent at once, what each gets: "ack" or the start of "risk: <detail>")
LIMITS = [
    ("r-default", [("BUY", 1000, 1.0), ("BUY", 1, 1.0), ("SELL", 2000, 1.0), ("SELL", 1, 1.0)],
     ["ack", "risk: max_position: AAPL position 1000 would become 1001, over the limit 1000", "ack",
      "risk: max_position: AAPL position -1000 would become -1001"]),
    ("r-pos", [("BUY", 20, 60.0), ("BUY", 1, 60.0), ("SELL", 41, 60.0), ("SELL", 40, 60.0)],
     ["ack", "risk: max_position: AAPL position 20 would become 21, over the limit 20",
      "risk: max_position: AAPL position 20 would become -21", "ack"]),
    ("r-notional", [("BUY", 50, 100.0), ("BUY", 50, 100.01), ("SELL", 1, 5000.5)],
     ["ack", "risk: max_notional: 50 x 100.01 = 5000.50 is over the limit 5000",
      "risk: max_notional: 1 x 5000.5 = 5000.50 is over the limit 5000"]),
    ("r-rate", [("BUY", 1, 60.0)] * 5,
     ["ack"] * 3 + ["risk: max_orders_per_s: 3 orders accepted in the last second, the limit"] * 2),
]


@pytest.mark.parametrize(("cid", "orders", "want"), LIMITS, ids=[c[0] for c in LIMITS])
def test_each_limit_refuses_with_its_detail(stack: Stack, cid: str, orders: list[tuple[str, int, float]],
                                            want: list[str]) -> None:
    """Each limit, default or per-client, refuses with ``risk`` and a detail naming it; the
    refusals are logged as ``order_rejected`` and never journaled."""
    with logged_on(stack, cid) as c:
        answers = send(c, orders)
        got = [outcome(a) for a in answers]
        assert all(g.startswith(w) for g, w in zip(got, want, strict=True)), got
        if cid == "r-rate":  # a second later the window has room again
            time.sleep(1.1)
            assert outcome(send(c, [("BUY", 1, 60.0)])[0]) == "ack"
    refused = {a.order_id: a.detail for a in answers if isinstance(a, Reject)}
    logged = stack.wait_for(lambda: (x := {r["order_id"]: r for r in stack.events("ordermanager", "order_rejected")
                                           if r["order_id"] in refused}) and len(x) == len(refused) and x)
    assert {oid: (r["reason"], r["detail"], r["client_id"]) for oid, r in logged.items()} == {
        oid: ("risk", d, cid) for oid, d in refused.items()}
    assert not set(refused) & {e["order_id"] for e in stack.journal()}


def run(*args: str, stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], env=stack.env, capture_output=True, text=True, timeout=120)


def test_halt_survives_a_restart_and_resume_trades_again(stack: Stack) -> None:
    """deploy/halt: the client's orders get ``risk`` ``halted…``, others trade on; the halt outlives
    an ordermanager restart; deploy/resume: acks again. The log and the audit show both, once."""
    cid = "r-halt"
    c = logged_on(stack, cid)
    try:
        first = send(c, [("BUY", 1, 60.0)])[0]
        assert outcome(first) == "ack"
        r = run(str(ROOT / "deploy" / "halt"), cid, stack=stack)
        assert r.returncode == 0 and r.stdout.startswith(f"halted {cid}: the ordermanager"), r
        got = outcome(send(c, [("BUY", 1, 60.0)])[0])
        assert got.startswith(f"risk: halted: order entry of {cid} is stopped"), got
        c.order(first.order_id, "AAPL", "BUY", 1, 60.0)  # a resend of what was acked before: acked again
        dup = c.recv_type(Ack, Reject, timeout=10)
        assert isinstance(dup, Ack) and dup.duplicate and dup.order_no == first.order_no, dup
        with logged_on(stack, "r-bystander") as other:
            assert outcome(send(other, [("BUY", 1, 60.0)])[0]) == "ack"
    finally:
        c.close()

    stack.ctl("restart", "ordermanager", check=True)
    stack.wait_for(lambda: len(stack.events("ordermanager", "listening")) >= 2, timeout=60)
    with logged_on(stack, cid) as c:
        assert outcome(send(c, [("SELL", 1, 60.0)])[0]).startswith("risk: halted")
        r = run(str(ROOT / "deploy" / "resume"), cid, stack=stack)
        assert r.returncode == 0 and r.stdout.startswith(f"resumed {cid}"), r
        assert outcome(send(c, [("SELL", 1, 60.0)])[0]) == "ack"

    changes = [(r["event"], r["client_id"]) for r in stack.log("ordermanager")
               if r["event"] in ("client_halted", "client_resumed")]
    assert changes == [("client_halted", cid), ("client_resumed", cid)]
    assert [r["clients"] for r in stack.events("ordermanager", "halts_loaded")] == [[cid]]
    doc = audit_json(stack, "--segment", stack.segment)
    assert [(e["event"], e["client_id"]) for e in doc["halts"]["events"]] == changes
    assert doc["halts"]["halted"] == []
    # Both of its acked orders are in its P&L: bought 1 and sold 1 at 60, flat.
    assert doc["clients"][cid]["symbols"]["AAPL"] == {"position": 0, "avg_price": None, "realized": 0.0,
                                                      "unrealized": 0.0, "total": 0.0, "mark": 60.0}


def audit_json(stack: Stack, *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "shared.ops.audit", "--logs", str(stack.logs), "--json", *args],
                       capture_output=True, text=True, timeout=120, check=True)
    return json.loads(r.stdout)


def test_audit_json_has_pnl_from_the_journal_marked_to_the_book(stack: Stack) -> None:
    """Orders through a flip of AAPL from long to short, and MSFT long: the audit's ``clients`` as
    worked by hand, marked to the book (AAPL 60, MSFT 200); and the text report shows the table."""
    cid = "r-pnl"
    with logged_on(stack, cid) as c:
        # BUY 10 @ 100; SELL 25 @ 90 closes 10 (-100) and opens 15 short at 90; BUY 5 @ 80 covers 5 (+50).
        assert [outcome(a) for a in send(c, [("BUY", 10, 100.0), ("SELL", 25, 90.0), ("BUY", 5, 80.0)])] == ["ack"] * 3
        assert outcome(send(c, [("BUY", 3, 190.0)], symbol="MSFT")[0]) == "ack"
    doc = audit_json(stack, "--segment", stack.segment)
    assert doc["clients"][cid] == {
        "realized": -50.0, "unrealized": 330.0, "total": 280.0, "symbols": {
            # short 10 at 90, marked at 60: -10 * (60 - 90) = +300
            "AAPL": {"position": -10, "avg_price": 90.0, "realized": -50.0, "unrealized": 300.0, "total": 250.0,
                     "mark": 60.0},
            "MSFT": {"position": 3, "avg_price": 190.0, "realized": 0.0, "unrealized": 30.0, "total": 30.0,
                     "mark": 200.0}}}
    text = subprocess.run([sys.executable, "-m", "shared.ops.audit", "--logs", str(stack.logs),
                           "--segment", stack.segment], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "POSITIONS AND P&L" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(cid + " ")]
    assert ["r-pnl", "AAPL", "-10", "90", "60", "-50", "300", "250"] in rows, text
    assert ["r-pnl", "*", "-", "-", "-", "-50", "330", "280"] in rows, text


def test_audit_without_a_book_leaves_unrealized_unknown(stack: Stack, tmp_path: Path) -> None:
    """A segment that is not there: marks and unrealized are null, realized still counts."""
    doc = audit_json(stack, "--segment", "ts_no_such_segment")
    aapl = doc["clients"]["r-pnl"]["symbols"]["AAPL"]
    assert (aapl["mark"], aapl["unrealized"], aapl["total"], aapl["realized"]) == (None, None, None, -50.0)
    assert doc["clients"]["r-pnl"]["unrealized"] is None
