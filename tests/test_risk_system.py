"""Per-client risk, halt/resume and P&L on a private stack under the real supervisord, through the
contract only: each limit refused with its detail (``max_position`` counting the filled position
and the open quantity on the order's side), a halt that outlives an ordermanager restart, and
``stack-audit --json``'s positions and P&L from the venue's fills, marked to the real book.

The gateway replays constant prices (AAPL 60, MSFT 200, GOOGL 150), so the marks and the venue's
quote are known (spread 2 bps: AAPL 59.994 / 60.006, MSFT 199.98 / 200.02; 100 shares each side),
and the strategy, on flat averages, never trades.
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
from shared.execjournal import read_lines
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


def send(c: OrderClient, orders: list[tuple[str, int, float | None]], symbol: str = "AAPL") -> list[Any]:
    """Send orders in one write (pipelined, so they arrive within the same second); their answers.
    A price of None makes a market order without a price, else a limit order for the day."""
    ids = [f"o-{next(_ids)}" for _ in orders]
    now = time.time_ns()
    c.send_raw(b"".join(frame(Order(order_id=i, symbol=symbol, side=side, qty=qty, price=price,  # type: ignore[arg-type]
                                    ord_type="limit" if price is not None else "market",
                                    tif="day" if price is not None else "ioc", ts_ns=now, tick_ts_ns=now))
                        for i, (side, qty, price) in zip(ids, orders, strict=True)))
    # A reject goes out at once, an ack after the turn's journal write: match them by order_id.
    answers = {a.order_id: a for a in (c.recv_type(Ack, Reject, timeout=10) for _ in orders)}
    assert set(answers) == set(ids)
    return [answers[i] for i in ids]


def outcome(a: Any) -> str:
    return "ack" if isinstance(a, Ack) else f"{a.reason}: {a.detail}"


def execs(stack: Stack, cid: str) -> list[Any]:
    """The client's execs in the ordermanager's exec journal."""
    return [x for x in read_lines(stack.cfg.resolve(stack.cfg.ordermanager.journal)) if x.client_id == cid]


def fills(stack: Stack, cid: str, n: int) -> list[Any]:
    """Wait until the client has ``n`` fills journaled; its execs."""
    return stack.wait_for(lambda: (x := execs(stack, cid)) and sum(1 for e in x if e.last_qty) >= n and x)


# (client_id, orders that fill first, orders then sent at once, what each of those gets: "ack" or the
# start of "risk: <detail>"). Buys at 1.0 and sells at 1000.0 rest (and never meet another client's
# order here); buys above 60.006, sells below 59.994 fill at the quote.
LIMITS = [
    ("r-default", [], [("BUY", 1000, 1.0), ("BUY", 1, 1.0), ("SELL", 1000, 1000.0), ("SELL", 1, 1000.0)],
     ["ack", "risk: max_position: AAPL position 0 and 1000 open to buy would become 1001, over the limit 1000",
      "ack", "risk: max_position: AAPL position 0 and 1000 open to sell would become -1001"]),
    ("r-pos", [("BUY", 15, 61.0)], [("BUY", 5, 1.0), ("BUY", 1, 1.0), ("SELL", 36, 59.0), ("SELL", 35, 59.0)],
     ["ack", "risk: max_position: AAPL position 15 and 5 open to buy would become 21, over the limit 20",
      "risk: max_position: AAPL position 15 would become -21", "ack"]),
    ("r-notional", [], [("BUY", 50, 100.0), ("BUY", 50, 100.01), ("SELL", 1, 5000.5), ("BUY", 1, None)],
     ["ack", "risk: max_notional: 50 x 100.01 = 5000.50 is over the limit 5000",
      "risk: max_notional: 1 x 5000.5 = 5000.50 is over the limit 5000",
      "risk: max_notional: a market order needs a price"]),
    ("r-rate", [], [("BUY", 1, 1.0)] * 5,
     ["ack"] * 3 + ["risk: max_orders_per_s: 3 orders accepted in the last second, the limit"] * 2),
]


@pytest.mark.parametrize(("cid", "first", "orders", "want"), LIMITS, ids=[c[0] for c in LIMITS])
def test_each_limit_refuses_with_its_detail(stack: Stack, cid: str, first: list[tuple[str, int, float]],
                                            orders: list[tuple[str, int, float | None]], want: list[str]) -> None:
    """Each limit, default or per-client, refuses with ``risk`` and a detail naming it; the
    refusals are logged as ``order_rejected`` and never journaled. ``max_position`` counts what
    filled and the leaves of the open orders on the order's side (those of this same write too)."""
    with logged_on(stack, cid) as c:
        if first:
            assert [outcome(a) for a in send(c, first)] == ["ack"] * len(first)
            fills(stack, cid, len(first))
        answers = send(c, orders)
        got = [outcome(a) for a in answers]
        assert all(g.startswith(w) for g, w in zip(got, want, strict=True)), got
        if cid == "r-rate":  # a second later the window has room again
            time.sleep(1.1)
            assert outcome(send(c, [("BUY", 1, 1.0)])[0]) == "ack"
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
        first = send(c, [("BUY", 1, 61.0)])[0]
        assert outcome(first) == "ack"
        r = run(str(ROOT / "deploy" / "halt"), cid, stack=stack)
        assert r.returncode == 0 and r.stdout.startswith(f"halted {cid}: the ordermanager"), r
        got = outcome(send(c, [("BUY", 1, 61.0)])[0])
        assert got.startswith(f"risk: halted: order entry of {cid} is stopped"), got
        c.order(first.order_id, "AAPL", "BUY", 1, 61.0)  # a resend of what was acked before: acked again
        dup = c.recv_type(Ack, Reject, timeout=10)
        assert isinstance(dup, Ack) and dup.duplicate and dup.order_no == first.order_no, dup
        with logged_on(stack, "r-bystander") as other:
            assert outcome(send(other, [("BUY", 1, 1.0)])[0]) == "ack"
    finally:
        c.close()

    stack.ctl("restart", "ordermanager", check=True)
    stack.wait_for(lambda: len(stack.events("ordermanager", "listening")) >= 2, timeout=60)
    with logged_on(stack, cid) as c:
        assert outcome(send(c, [("SELL", 1, 59.0)])[0]).startswith("risk: halted")
        r = run(str(ROOT / "deploy" / "resume"), cid, stack=stack)
        assert r.returncode == 0 and r.stdout.startswith(f"resumed {cid}"), r
        assert outcome(send(c, [("SELL", 1, 59.0)])[0]) == "ack"
    fills(stack, cid, 2)

    changes = [(r["event"], r["client_id"]) for r in stack.log("ordermanager")
               if r["event"] in ("client_halted", "client_resumed")]
    assert changes == [("client_halted", cid), ("client_resumed", cid)]
    assert [r["clients"] for r in stack.events("ordermanager", "halts_loaded")] == [[cid]]
    doc = audit_json(stack, "--segment", stack.segment)
    assert [(e["event"], e["client_id"]) for e in doc["halts"]["events"]] == changes
    assert doc["halts"]["halted"] == []
    # Both of its acked orders filled: bought 1 at the ask, sold 1 at the bid, flat.
    assert doc["clients"][cid]["symbols"]["AAPL"] == {"position": 0, "avg_price": None, "realized": -0.012,
                                                      "unrealized": 0.0, "total": -0.012, "mark": 60.0,
                                                      "open_buy": 0, "open_sell": 0}


def audit_json(stack: Stack, *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "shared.ops.audit", "--logs", str(stack.logs), "--json", *args],
                       capture_output=True, text=True, timeout=120, check=True)
    return json.loads(r.stdout)


def test_audit_json_has_pnl_from_the_fills_marked_to_the_book(stack: Stack) -> None:
    """Orders through a flip of AAPL from long to short, and MSFT long, each filled at the venue's
    quote, and one buy far below the market that rests: the audit's ``clients`` as worked by hand,
    marked to the book (AAPL 60, MSFT 200); and the text report shows the tables."""
    cid = "r-pnl"
    with logged_on(stack, cid) as c:
        # BUY 10 at 60.006; SELL 25 at 59.994 closes 10 (-0.12) and opens 15 short at 59.994; BUY 5 at
        # 60.006 covers 5 (-0.06). An order at its own price is not a fill: the buy at 48 rests.
        assert [outcome(a) for a in send(c, [("BUY", 10, 61.0), ("SELL", 25, 59.0), ("BUY", 5, 61.0),
                                             ("BUY", 4, 48.0)])] == ["ack"] * 4
        assert outcome(send(c, [("BUY", 3, 201.0)], symbol="MSFT")[0]) == "ack"
    fills(stack, cid, 4)
    doc = audit_json(stack, "--segment", stack.segment)
    assert doc["clients"][cid] == {
        "realized": -0.18, "unrealized": -0.12, "total": -0.3, "open_orders": 1, "symbols": {
            # short 10 at 59.994, marked at 60: -10 * (60 - 59.994) = -0.06
            "AAPL": {"position": -10, "avg_price": 59.994, "realized": -0.18, "unrealized": -0.06, "total": -0.24,
                     "mark": 60.0, "open_buy": 4, "open_sell": 0},
            "MSFT": {"position": 3, "avg_price": 200.02, "realized": 0.0, "unrealized": -0.06, "total": -0.06,
                     "mark": 200.0, "open_buy": 0, "open_sell": 0}}}
    assert [(o["symbol"], o["side"], o["qty"], o["price"], o["leaves_qty"]) for o in doc["open_orders"]
            if o["client_id"] == cid] == [("AAPL", "BUY", 4, 48.0, 4)]
    text = subprocess.run([sys.executable, "-m", "shared.ops.audit", "--logs", str(stack.logs),
                           "--segment", stack.segment], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "POSITIONS AND P&L" in text and "OPEN ORDERS" in text and "FILLS" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(cid + " ")]
    assert ["r-pnl", "AAPL", "-10", "59.994", "60", "-0.18", "-0.06", "-0.24", "4", "0"] in rows, text
    assert ["r-pnl", "*", "-", "-", "-", "-0.18", "-0.12", "-0.3", "1", "open", "-"] in rows, text
    assert ["r-pnl", "AAPL", "3", "15", "25", "60.006", "59.994"] in [r[:7] for r in rows], text


def test_audit_without_a_book_leaves_unrealized_unknown(stack: Stack, tmp_path: Path) -> None:
    """A segment that is not there: marks and unrealized are null, realized still counts."""
    doc = audit_json(stack, "--segment", "ts_no_such_segment")
    aapl = doc["clients"]["r-pnl"]["symbols"]["AAPL"]
    assert (aapl["mark"], aapl["unrealized"], aapl["total"], aapl["realized"]) == (None, None, None, -0.18)
    assert doc["clients"]["r-pnl"]["unrealized"] is None
