"""Positions and P&L from fills (shared/pnl.py) against a table computed by hand, through a sign flip;
orders still open are reported beside, never counted."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared import pnl
from shared.execstate import decode_line

# One client in AAPL, fill by fill: (side, qty, price) -> position, average cost, realized, worked by hand.
HAND = [
    # side   qty  price   position avg     realized
    ("BUY",  10, 100.0,   10,     100.0,  0.0),     # opens long at 100
    ("BUY",  10, 110.0,   20,     105.0,  0.0),     # (10*100 + 10*110) / 20
    ("SELL",  5, 120.0,   15,     105.0,  75.0),    # closes 5: 5 * (120 - 105); the average stays
    ("SELL", 25,  90.0,  -10,      90.0, -150.0),   # closes 15: 15 * (90 - 105) = -225; the other 10 open short at 90
    ("SELL", 10,  80.0,  -20,      85.0, -150.0),   # adds to the short: (10*90 + 10*80) / 20
    ("BUY",   5,  70.0,  -15,      85.0, -75.0),    # covers 5: 5 * (85 - 70) = +75
    ("BUY",  15,  95.0,    0,       0.0, -225.0),   # covers 15: 15 * (85 - 95) = -150; flat
    ("BUY",   4,  50.5,    4,      50.5, -225.0),   # opens long again from flat
    ("SELL",  8,  52.0,   -4,      52.0, -219.0),   # closes 4: 4 * (52 - 50.5) = +6; 4 open short at 52
]


def test_fill_by_fill_against_the_hand_table() -> None:
    p = pnl.Position()
    for i, (side, qty, price, pos, avg, realized) in enumerate(HAND):
        p.fill(qty if side == "BUY" else -qty, price)
        assert (p.qty, p.avg_price, p.realized) == (pos, avg, realized), (i, side, qty, price)


def entry(no: int, client: str, symbol: str, side: str, qty: int, price: float) -> dict[str, Any]:
    """Exec number ``no``: one order filled in full at ``price``."""
    return {"type": "exec", "order_id": f"o{no}", "exec_id": no, "status": "filled", "last_qty": qty,
            "last_px": price, "cum_qty": qty, "leaves_qty": 0, "avg_px": price, "ts_ns": 1, "symbol": symbol,
            "side": side, "client_id": client, "order_no": no, "recv_ns": 2}


def journal() -> list[dict[str, Any]]:
    out = [entry(i + 1, "hand", "AAPL", s, q, p) for i, (s, q, p, *_) in enumerate(HAND)]
    n = len(out)
    out += [entry(n + 1, "hand", "MSFT", "BUY", 3, 200.0), entry(n + 2, "other", "AAPL", "SELL", 2, 60.0),
            entry(n + 3, "hand", "GOOGL", "SELL", 1, 150.0), entry(n + 4, "hand", "GOOGL", "BUY", 1, 140.25)]
    return out


NO_OPEN = {"open_buy": 0, "open_sell": 0}


def test_report_marks_each_position() -> None:
    """Marked at AAPL 50 and MSFT 210; GOOGL (flat) has no mark, its unrealized is still 0."""
    doc = pnl.report(pnl.positions(journal()), {"AAPL": 50.0, "MSFT": 210.0})
    hand = doc["hand"]
    assert hand["symbols"] == {
        # short 4 at 52, mark 50: 4 * (52 - 50) = +8
        "AAPL": {"position": -4, "avg_price": 52.0, "realized": -219.0, "unrealized": 8.0, "total": -211.0,
                 "mark": 50.0, **NO_OPEN},
        "GOOGL": {"position": 0, "avg_price": None, "realized": 9.75, "unrealized": 0.0, "total": 9.75, "mark": None,
                  **NO_OPEN},
        "MSFT": {"position": 3, "avg_price": 200.0, "realized": 0.0, "unrealized": 30.0, "total": 30.0, "mark": 210.0,
                 **NO_OPEN},
    }
    assert (hand["realized"], hand["unrealized"], hand["total"]) == (-209.25, 38.0, -171.25)
    assert doc["other"] == {"realized": 0.0, "unrealized": 20.0, "total": 20.0, "open_orders": 0, "symbols": {
        "AAPL": {"position": -2, "avg_price": 60.0, "realized": 0.0, "unrealized": 20.0, "total": 20.0,
                 "mark": 50.0, **NO_OPEN}}}


def test_no_mark_makes_unrealized_unknown() -> None:
    """No book (no marks): an open position's unrealized is None, and so are the client's sums
    that include it; realized is known all the same."""
    doc = pnl.report(pnl.positions(journal()), {})
    assert doc["hand"]["symbols"]["AAPL"]["unrealized"] is None and doc["hand"]["symbols"]["AAPL"]["total"] is None
    assert doc["hand"]["symbols"]["GOOGL"]["unrealized"] == 0.0
    assert (doc["hand"]["realized"], doc["hand"]["unrealized"], doc["hand"]["total"]) == (-209.25, None, None)


@pytest.mark.parametrize("bad", [
    {"side": "HOLD"}, {"last_qty": 0}, {"last_qty": "3"}, {"last_qty": True}, {"last_px": -1.0}, {"last_px": None},
    {"client_id": None}, {"symbol": 5},
], ids=lambda b: "_".join(f"{k}_{v}" for k, v in b.items()))
def test_malformed_entries_are_skipped(bad: dict[str, Any]) -> None:
    entries = [entry(1, "c", "AAPL", "BUY", 1, 10.0), {**entry(2, "c", "AAPL", "BUY", 1, 10.0), **bad}]
    book = pnl.positions(entries)
    assert book["c"]["AAPL"].qty == 1


def test_exec_lines_count_as_their_mappings() -> None:
    lines = [decode_line(msgspec.json.encode(e)) for e in journal()]
    assert pnl.report(pnl.positions(lines), {"AAPL": 50.0}) == pnl.report(pnl.positions(journal()), {"AAPL": 50.0})


def test_only_fills_count_and_open_orders_are_reported_beside() -> None:
    """A ``new`` and a ``canceled`` exec move nothing; a partial fill counts what filled, at its price.
    Open orders are listed per client (a count) and per symbol (leaves by side), also with no fill."""
    new = {**entry(1, "c", "AAPL", "BUY", 10, 100.0), "status": "new", "last_qty": 0, "last_px": None,
           "cum_qty": 0, "leaves_qty": 10}
    part = {**entry(2, "c", "AAPL", "BUY", 4, 99.5), "status": "partially_filled", "order_no": 1, "leaves_qty": 6}
    gone = {**part, "exec_id": 3, "status": "canceled", "last_qty": 0, "last_px": None}
    doc = pnl.report(pnl.positions([new, part, gone]), {"AAPL": 100.0},
                     {"c": pnl.Open(1, {"MSFT": [0, 7]}), "d": pnl.Open(2, {"AAPL": [5, 0], "GOOGL": [1, 1]})})
    assert doc["c"]["open_orders"] == 1 and doc["c"]["symbols"]["AAPL"] == {
        "position": 4, "avg_price": 99.5, "realized": 0.0, "unrealized": 2.0, "total": 2.0, "mark": 100.0,
        "open_buy": 0, "open_sell": 0}
    assert doc["c"]["symbols"]["MSFT"] == {"position": 0, "avg_price": None, "realized": 0.0, "unrealized": 0.0,
                                           "total": 0.0, "mark": None, "open_buy": 0, "open_sell": 7}
    assert doc["d"]["open_orders"] == 2 and doc["d"]["total"] == 0.0
    assert {s: (v["open_buy"], v["open_sell"], v["position"]) for s, v in doc["d"]["symbols"].items()} == {
        "AAPL": (5, 0, 0), "GOOGL": (1, 1, 0)}


def test_rounding_leaves_no_float_dust() -> None:
    """0.1 + 0.2 style sums come out as the decimals a person expects."""
    entries = [entry(1, "c", "AAPL", "BUY", 1, 0.1), entry(2, "c", "AAPL", "SELL", 1, 0.4),
               entry(3, "c", "AAPL", "BUY", 3, 0.1), entry(4, "c", "AAPL", "SELL", 3, 0.2)]
    doc = pnl.report(pnl.positions(entries), {})
    assert doc["c"]["realized"] == 0.6
