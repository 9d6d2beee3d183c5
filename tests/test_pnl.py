"""Positions and P&L (shared/pnl.py) against a table computed by hand, through a sign flip."""

from __future__ import annotations

from typing import Any

import pytest

from shared import pnl

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
    return {"order_no": no, "order_id": f"o{no}", "client_id": client, "symbol": symbol, "side": side,
            "qty": qty, "price": price, "ts_ns": 1, "tick_ts_ns": 1, "recv_ns": 2}


def journal() -> list[dict[str, Any]]:
    out = [entry(i + 1, "hand", "AAPL", s, q, p) for i, (s, q, p, *_) in enumerate(HAND)]
    n = len(out)
    out += [entry(n + 1, "hand", "MSFT", "BUY", 3, 200.0), entry(n + 2, "other", "AAPL", "SELL", 2, 60.0),
            entry(n + 3, "hand", "GOOGL", "SELL", 1, 150.0), entry(n + 4, "hand", "GOOGL", "BUY", 1, 140.25)]
    return out


def test_report_marks_each_position() -> None:
    """Marked at AAPL 50 and MSFT 210; GOOGL (flat) has no mark, its unrealized is still 0."""
    doc = pnl.report(pnl.positions(journal()), {"AAPL": 50.0, "MSFT": 210.0})
    hand = doc["hand"]
    assert hand["symbols"] == {
        # short 4 at 52, mark 50: 4 * (52 - 50) = +8
        "AAPL": {"position": -4, "avg_price": 52.0, "realized": -219.0, "unrealized": 8.0, "total": -211.0,
                 "mark": 50.0},
        "GOOGL": {"position": 0, "avg_price": None, "realized": 9.75, "unrealized": 0.0, "total": 9.75, "mark": None},
        "MSFT": {"position": 3, "avg_price": 200.0, "realized": 0.0, "unrealized": 30.0, "total": 30.0, "mark": 210.0},
    }
    assert (hand["realized"], hand["unrealized"], hand["total"]) == (-209.25, 38.0, -171.25)
    assert doc["other"] == {"realized": 0.0, "unrealized": 20.0, "total": 20.0, "symbols": {
        "AAPL": {"position": -2, "avg_price": 60.0, "realized": 0.0, "unrealized": 20.0, "total": 20.0,
                 "mark": 50.0}}}


def test_no_mark_makes_unrealized_unknown() -> None:
    """No book (no marks): an open position's unrealized is None, and so are the client's sums
    that include it; realized is known all the same."""
    doc = pnl.report(pnl.positions(journal()), {})
    assert doc["hand"]["symbols"]["AAPL"]["unrealized"] is None and doc["hand"]["symbols"]["AAPL"]["total"] is None
    assert doc["hand"]["symbols"]["GOOGL"]["unrealized"] == 0.0
    assert (doc["hand"]["realized"], doc["hand"]["unrealized"], doc["hand"]["total"]) == (-209.25, None, None)


@pytest.mark.parametrize("bad", [
    {"side": "HOLD"}, {"qty": 0}, {"qty": "3"}, {"qty": True}, {"price": -1.0}, {"price": None}, {"client_id": None},
    {"symbol": 5},
], ids=lambda b: "_".join(f"{k}_{v}" for k, v in b.items()))
def test_malformed_entries_are_skipped(bad: dict[str, Any]) -> None:
    entries = [entry(1, "c", "AAPL", "BUY", 1, 10.0), {**entry(2, "c", "AAPL", "BUY", 1, 10.0), **bad}]
    book = pnl.positions(entries)
    assert book["c"]["AAPL"].qty == 1


def test_rounding_leaves_no_float_dust() -> None:
    """0.1 + 0.2 style sums come out as the decimals a person expects."""
    entries = [entry(1, "c", "AAPL", "BUY", 1, 0.1), entry(2, "c", "AAPL", "SELL", 1, 0.4),
               entry(3, "c", "AAPL", "BUY", 3, 0.1), entry(4, "c", "AAPL", "SELL", 3, 0.2)]
    doc = pnl.report(pnl.positions(entries), {})
    assert doc["c"]["realized"] == 0.6
