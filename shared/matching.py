"""The venue's matching engine (contract §9 rules 1-3): pure, no I/O, no clock, no randomness.

State changes only through ``order``, ``cancel`` and ``tick``; each returns the execs it
caused, in the order they happened (in a fill, the incoming order's exec before the resting
one's), so the same inputs given to a fresh Engine give equal execs (what replay relies on).
Quote prices are ``round(x, 6)`` of the formula, so every platform derives the same quote;
client prices are used as given (as floats). Before a symbol's first tick a market order just
expires: with no venue price there is nothing to trade it against. There is no self-trade
prevention: a client's order may meet its own resting one (``contra`` is then its own id).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

import msgspec

SIDES = ("BUY", "SELL")
ORD_TYPES = ("limit", "market")
TIFS = ("day", "ioc")
QUOTE_DECIMALS = 6
VENUE = "venue"  # the contra of a fill against the venue's quote
COMPACT_SLACK = 16  # a level's canceled entries are dropped once they outnumber its live ones by this


class Exec(msgspec.Struct, frozen=True, gc=False):
    """One execution report of one order (contract §9 ``exec``), plus who was on the other side."""

    exec_id: int
    order_no: int
    client_id: str
    order_id: str
    symbol: str
    side: str
    status: str  # "new" | "partially_filled" | "filled" | "canceled" | "expired"
    last_qty: int
    last_px: float | None
    cum_qty: int
    leaves_qty: int
    avg_px: float | None
    ts_ns: int
    contra: str = ""  # "" (no fill), "venue" (the quote) or the other client's client_id


class Resting(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of one resting order (``Engine.open_orders``)."""

    order_no: int
    client_id: str
    order_id: str
    symbol: str
    side: str
    qty: int
    price: float
    cum_qty: int
    leaves_qty: int


class _Order:
    """An accepted order's mutable state; ``live`` while it rests in a book."""

    __slots__ = ("order_no", "client_id", "order_id", "symbol", "side", "qty", "price", "cum_qty", "notional",
                 "live")

    def __init__(self, order_no: int, client_id: str, order_id: str, symbol: str, side: str, qty: int,
                 price: float | None) -> None:
        self.order_no = order_no
        self.client_id = client_id
        self.order_id = order_id
        self.symbol = symbol
        self.side = side
        self.qty = qty
        self.price = price
        self.cum_qty = 0
        self.notional = 0.0  # sum of last_qty * last_px, for avg_px
        self.live = False


class _Level:
    """The orders at one price in time order; canceled ones stay (lazily deleted) until skipped."""

    __slots__ = ("orders", "live")

    def __init__(self) -> None:
        self.orders: deque[_Order] = deque()
        self.live = 0


class _Side:
    """One side of a symbol's client orders: price -> level, and the prices sorted ascending."""

    __slots__ = ("levels", "prices")

    def __init__(self) -> None:
        self.levels: dict[float, _Level] = {}
        self.prices: list[float] = []

    def add(self, o: _Order) -> None:
        assert o.price is not None
        level = self.levels.get(o.price)
        if level is None:
            level = self.levels[o.price] = _Level()
            insort(self.prices, o.price)
        level.orders.append(o)
        level.live += 1
        o.live = True

    def head(self, price: float) -> _Order:
        """The first live order at ``price`` (a level in ``levels`` always has one)."""
        orders = self.levels[price].orders
        while not orders[0].live:
            orders.popleft()
        return orders[0]

    def remove(self, o: _Order) -> None:
        """Take ``o`` out; O(1) but for dropping an emptied price, never a scan of the level."""
        assert o.price is not None
        o.live = False
        level = self.levels[o.price]
        level.live -= 1
        if level.live == 0:
            del self.levels[o.price]
            del self.prices[bisect_left(self.prices, o.price)]
        elif len(level.orders) > 2 * level.live + COMPACT_SLACK:
            # an old order at the head with churn behind it would otherwise keep every canceled one
            level.orders = deque(x for x in level.orders if x.live)


class _Book:
    """One symbol: the clients' bids and asks, and the venue's quote (None until the first tick)."""

    __slots__ = ("bids", "asks", "bid", "bid_left", "ask", "ask_left")

    def __init__(self) -> None:
        self.bids, self.asks = _Side(), _Side()
        self.bid: float | None = None
        self.ask: float | None = None
        self.bid_left = self.ask_left = 0


def _price(x: float) -> float:
    """A finite positive price as a float, or ValueError."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not (math.isfinite(x) and x > 0):
        raise ValueError(f"price must be a finite number > 0, not {x!r}")
    return float(x)


def _checked_price(side: str, qty: int, price: float | None, ord_type: str, tif: str) -> float | None:
    """The order's price as a float, or ValueError naming what is wrong with the order."""
    if side not in SIDES:
        raise ValueError(f"side must be BUY or SELL, not {side!r}")
    if ord_type not in ORD_TYPES:
        raise ValueError(f"ord_type must be limit or market, not {ord_type!r}")
    if tif not in TIFS:
        raise ValueError(f"tif must be day or ioc, not {tif!r}")
    if type(qty) is not int or qty <= 0:  # not bool either
        raise ValueError(f"qty must be an int > 0, not {qty!r}")
    if price is None and ord_type == "limit":
        raise ValueError("a limit order needs a price")
    return None if price is None else _price(price)


class Engine:
    """Price-time matching of client orders against each other and the venue's quote, per symbol.

    Every order seen is remembered (for de-duplication) for the engine's life."""

    def __init__(self, spread_bps: float = 2.0, depth: int = 100, next_exec_id: int = 1) -> None:
        if not (math.isfinite(spread_bps) and 0 <= spread_bps < 2e4):
            raise ValueError(f"spread_bps must be in [0, 20000), not {spread_bps!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, not {depth!r}")
        self.spread_bps = spread_bps
        self.depth = depth
        self.next_exec_id = next_exec_id
        self._books: dict[str, _Book] = {}
        self._live: dict[tuple[str, str], _Order] = {}  # resting orders by (client_id, order_id)
        self._seen: set[tuple[str, str]] = set()

    def order(self, order_no: int, client_id: str, order_id: str, symbol: str, side: str, qty: int,
              price: float | None, ord_type: str = "limit", tif: str = "day", ts_ns: int = 0) -> list[Exec]:
        """Accept one order: its ``new``, its fills (and the resting sides'), then expiry or rest.

        A (client_id, order_id) seen before gives [] (the order routed again); bad input raises ValueError."""
        if not (type(qty) is int and qty > 0 and side in SIDES and ord_type in ORD_TYPES and tif in TIFS
                and (type(price) is float and 0.0 < price < math.inf or price is None and ord_type == "market")):
            price = _checked_price(side, qty, price, ord_type, tif)  # the common case is the one test above
        key = (client_id, order_id)
        if key in self._seen:
            return []
        self._seen.add(key)
        o = _Order(order_no, client_id, order_id, symbol, side, qty, price)
        book = self._books.get(symbol) or self._books.setdefault(symbol, _Book())
        out = [self._exec(o, "new", 0, None, ts_ns)]
        market = ord_type == "market"
        if not (market and book.ask is None):  # no quote yet: a market order has no price to trade at
            self._match(book, o, out, ts_ns)
        if o.cum_qty < qty:
            if market or tif == "ioc":
                out.append(self._exec(o, "expired", 0, None, ts_ns))
            else:
                (book.bids if side == "BUY" else book.asks).add(o)
                self._live[key] = o
        return out

    def cancel(self, client_id: str, order_id: str, ts_ns: int = 0) -> list[Exec] | None:
        """End a resting order: [its ``canceled`` exec], or None if it is not one of this client's resting orders."""
        o = self._live.pop((client_id, order_id), None)
        if o is None:
            return None
        book = self._books[o.symbol]
        (book.bids if o.side == "BUY" else book.asks).remove(o)
        return [self._exec(o, "canceled", 0, None, ts_ns)]

    def tick(self, symbol: str, price: float, ts_ns: int = 0) -> list[Exec]:
        """A new price: renew the quote around it, then trade the resting orders it crosses, at their own prices."""
        p = _price(price)
        half = self.spread_bps / 1e4 / 2
        book = self._books.get(symbol) or self._books.setdefault(symbol, _Book())
        book.bid = bid = round(p * (1 - half), QUOTE_DECIMALS)
        book.ask = ask = round(p * (1 + half), QUOTE_DECIMALS)
        book.bid_left = book.ask_left = self.depth
        out: list[Exec] = []
        bids, asks = book.bids, book.asks
        # resting buys the new ask reaches, best (highest) first
        while book.ask_left and bids.prices and bids.prices[-1] >= ask:
            px = bids.prices[-1]
            r = bids.head(px)
            q = min(r.qty - r.cum_qty, book.ask_left)
            book.ask_left -= q
            self._fill_resting(bids, r, q, px, VENUE, out, ts_ns)
        while book.bid_left and asks.prices and asks.prices[0] <= bid:
            px = asks.prices[0]
            r = asks.head(px)
            q = min(r.qty - r.cum_qty, book.bid_left)
            book.bid_left -= q
            self._fill_resting(asks, r, q, px, VENUE, out, ts_ns)
        return out

    def open_orders(self, client_id: str | None = None) -> list[Resting]:
        """Snapshots of the resting orders (of one client, or all), by order_no."""
        orders = sorted((o for o in self._live.values() if client_id is None or o.client_id == client_id),
                        key=lambda o: o.order_no)
        # a resting order always has a price (a market order never rests): the "or" is for the type checker
        return [Resting(o.order_no, o.client_id, o.order_id, o.symbol, o.side, o.qty, o.price or 0.0, o.cum_qty,
                        o.qty - o.cum_qty) for o in orders]

    def quote(self, symbol: str) -> tuple[float, int, float, int] | None:
        """(bid, shares left at the bid, ask, shares left at the ask), or None before the symbol's first tick."""
        book = self._books.get(symbol)
        if book is None or book.bid is None or book.ask is None:
            return None
        return book.bid, book.bid_left, book.ask, book.ask_left

    def _match(self, book: _Book, o: _Order, out: list[Exec], ts_ns: int) -> None:
        """Trade the incoming ``o`` at the best resting prices while it crosses, a client order before the quote."""
        buy = o.side == "BUY"
        sgn = 1.0 if buy else -1.0  # compare as a buyer: lower sgn*price is better, above sgn*limit does not cross
        contra = book.asks if buy else book.bids
        prices = contra.prices
        limit = math.inf if o.price is None else sgn * o.price
        while o.cum_qty < o.qty:
            cp = (prices[0] if buy else prices[-1]) if prices else None
            vp = (book.ask if buy else book.bid) if (book.ask_left if buy else book.bid_left) else None
            if cp is not None and (vp is None or sgn * cp <= sgn * vp):
                if sgn * cp > limit:
                    return
                r = contra.head(cp)
                q = min(o.qty - o.cum_qty, r.qty - r.cum_qty)
                self._fill(o, q, cp, r.client_id, out, ts_ns)
                self._fill_resting(contra, r, q, cp, o.client_id, out, ts_ns)
            elif vp is not None:
                if sgn * vp > limit:
                    return
                q = min(o.qty - o.cum_qty, book.ask_left if buy else book.bid_left)
                if buy:
                    book.ask_left -= q
                else:
                    book.bid_left -= q
                self._fill(o, q, vp, VENUE, out, ts_ns)
            else:
                return

    def _fill_resting(self, side: _Side, r: _Order, q: int, px: float, contra: str, out: list[Exec],
                      ts_ns: int) -> None:
        """Fill the head order ``r`` of its level; a filled one leaves the book."""
        self._fill(r, q, px, contra, out, ts_ns)
        if r.cum_qty == r.qty:
            side.levels[px].orders.popleft()
            side.remove(r)
            del self._live[(r.client_id, r.order_id)]

    def _fill(self, o: _Order, q: int, px: float, contra: str, out: list[Exec], ts_ns: int) -> None:
        o.cum_qty += q
        o.notional += q * px
        out.append(self._exec(o, "filled" if o.cum_qty == o.qty else "partially_filled", q, px, ts_ns, contra))

    def _exec(self, o: _Order, status: str, last_qty: int, last_px: float | None, ts_ns: int,
              contra: str = "") -> Exec:
        exec_id = self.next_exec_id
        self.next_exec_id = exec_id + 1
        ended = status in ("canceled", "expired")  # an ended order has nothing left to trade
        return Exec(exec_id, o.order_no, o.client_id, o.order_id, o.symbol, o.side, status, last_qty, last_px,
                    o.cum_qty, 0 if ended else o.qty - o.cum_qty, o.notional / o.cum_qty if o.cum_qty else None,
                    ts_ns, contra)
