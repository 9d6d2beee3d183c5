"""Positions and P&L per client and symbol, from the venue's fills: pure, no I/O.

Contract §9: a position is what filled, each fill (an exec with ``last_qty``
> 0) at its ``last_px``. Cost is the average cost of the open position: a
fill on the side of the position (or from flat) moves the average; one
against it realizes ``closed qty x (price - average)`` (sign of the position)
and leaves the average as it was; the part of a fill beyond flat opens a new
position at the fill's price. Unrealized P&L is ``position x (mark -
average)``, the mark being the book's latest price; with no mark, it is
unknown (None), but a flat position's is 0. What is still open (the leaves
of orders not ended) is reported beside, never counted as filled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DIGITS = 6  # money and prices in the report are rounded to this


class Position:
    """One client's position in one symbol, its average cost and realized P&L."""

    __slots__ = ("avg_price", "qty", "realized")

    def __init__(self, qty: int = 0, avg_price: float = 0.0, realized: float = 0.0) -> None:
        self.qty, self.avg_price, self.realized = qty, avg_price, realized

    def fill(self, signed_qty: int, price: float) -> None:
        """Apply one fill (BUY > 0, SELL < 0) at ``price``."""
        pos = self.qty
        if pos == 0 or (pos > 0) == (signed_qty > 0):
            self.avg_price = (abs(pos) * self.avg_price + abs(signed_qty) * price) / (abs(pos) + abs(signed_qty))
            self.qty = pos + signed_qty
            return
        closed = min(abs(pos), abs(signed_qty))
        self.realized += closed * (price - self.avg_price) * (1 if pos > 0 else -1)
        self.qty = pos + signed_qty
        if self.qty == 0:
            self.avg_price = 0.0
        elif (self.qty > 0) != (pos > 0):  # through zero: the rest opens at this price
            self.avg_price = price

    def unrealized(self, mark: float | None) -> float | None:
        """``qty x (mark - average)``: 0 when flat, None with no mark."""
        if self.qty == 0:
            return 0.0
        return None if mark is None else self.qty * (mark - self.avg_price)


Positions = dict[str, dict[str, Position]]  # client_id -> symbol -> Position


def _field(x: Any, key: str) -> Any:
    return x.get(key) if isinstance(x, Mapping) else getattr(x, key, None)


def positions(execs: Iterable[Any]) -> Positions:
    """Every client's positions from exec lines (mappings or ``shared.execstate.ExecLine``) in exec_id
    order: their fills; execs without a fill and malformed ones are skipped."""
    out: Positions = {}
    for x in execs:
        cid, sym, side = _field(x, "client_id"), _field(x, "symbol"), _field(x, "side")
        qty, price = _field(x, "last_qty"), _field(x, "last_px")
        if (not isinstance(cid, str) or not isinstance(sym, str) or side not in ("BUY", "SELL")
                or not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0
                or not isinstance(price, (int, float)) or isinstance(price, bool) or price <= 0):
            continue
        pos = out.setdefault(cid, {}).get(sym)
        if pos is None:
            pos = out[cid][sym] = Position()
        pos.fill(qty if side == "BUY" else -qty, float(price))
    return out


class Open:
    """One client's open orders: how many, and their leaves per symbol as [buy, sell]."""

    __slots__ = ("orders", "symbols")

    def __init__(self, orders: int = 0, symbols: dict[str, list[int]] | None = None) -> None:
        self.orders, self.symbols = orders, symbols or {}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, DIGITS) + 0.0  # + 0.0: no -0.0


def report(book: Positions, marks: Mapping[str, float], open_orders: Mapping[str, Open] | None = None
           ) -> dict[str, Any]:
    """Contract §8's ``clients`` document (with §9's additions): per client ``realized``,
    ``unrealized``, ``total``, ``open_orders`` (a count) and ``symbols[<symbol>]`` with ``position``,
    ``avg_price`` (None when flat), ``realized``, ``unrealized``, ``total``, ``mark`` (None when the
    book has none), ``open_buy`` and ``open_sell`` (leaves); an unknown part makes a sum unknown. A
    client or symbol with open orders and no fill is listed, flat."""
    opens = open_orders or {}
    clients: dict[str, Any] = {}
    for cid in sorted(set(book) | set(opens)):
        held = book.get(cid, {})
        o = opens.get(cid, Open())
        symbols: dict[str, Any] = {}
        realized = 0.0
        unrealized: float | None = 0.0
        for sym in sorted(set(held) | set(o.symbols)):
            p = held.get(sym) or Position()
            mark = marks.get(sym)
            u = p.unrealized(mark)
            buy, sell = o.symbols.get(sym, (0, 0))
            symbols[sym] = {"position": p.qty, "avg_price": _r(p.avg_price) if p.qty else None,
                            "realized": _r(p.realized), "unrealized": _r(u),
                            "total": None if u is None else _r(p.realized + u), "mark": mark,
                            "open_buy": buy, "open_sell": sell}
            realized += p.realized
            unrealized = None if u is None or unrealized is None else unrealized + u
        clients[cid] = {"realized": _r(realized), "unrealized": _r(unrealized),
                        "total": None if unrealized is None else _r(realized + unrealized),
                        "open_orders": o.orders, "symbols": symbols}
    return clients
