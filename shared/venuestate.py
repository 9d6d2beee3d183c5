"""The venue's state as a checkpoint: the engine's books, quotes and exec_id sequence, and the
de-duplication window of routed orders.

A restart of the exchange loads the checkpoint written at its journal's last roll and replays
only the open segment after it, so its cost stays flat however long the history
(shared.venuejournal). The checkpoint is JSON lines, streamed both ways so that 100,000
resting orders never sit in memory twice: a header, then one line per price level (its orders in
time order), then one line of the window.

The engine (shared.matching) keeps its books private; ``snapshot`` and ``restore`` read and
rebuild them here, and tests/test_venuestate.py proves on random inputs that a restored engine
goes on exactly as the one it was taken from would have.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import Any, Literal, get_type_hints

import msgspec

from shared import matching

VERSION = 1
WINDOW = 16384  # routed orders remembered for de-duplication (besides every resting order)


class Header(msgspec.Struct, frozen=True):
    """The checkpoint's first line: what it covers and the engine's scalars."""

    segments: int  # closed segments 1..segments are in it
    lines: int  # journal lines in them
    spread_bps: float  # the engine's parameters at the end of them
    depth: int
    next_exec_id: int
    quotes: list[tuple[str, float, int, float, int]]  # symbol, bid, bid_left, ask, ask_left
    orders: int  # resting orders in the level lines that follow
    levels: int  # level lines, then one window line
    clients: list[str]  # every client_id of a resting order
    floor: int
    written_ns: int
    ticks: dict[str, tuple[str, int]] = msgspec.field(default_factory=dict)  # symbol -> its last tick's (session, seq)
    version: int = VERSION


class RestingOrder(msgspec.Struct, array_like=True, gc=False):
    """A resting order as restored: decoded in C, a level at a time, and put in the engine's books in place
    of its own order objects, whose attributes it has (the engine only reads and sets them)."""

    order_no: int
    client_id: str  # decoded as one of the header's clients: one str object per client, not per order
    order_id: str
    qty: int
    cum_qty: int = 0  # these two are left out of the line until it has a fill
    notional: float = 0.0  # sum of last_qty x last_px: its avg_px
    symbol: str = ""  # these four are the level's, set after decoding
    side: str = ""
    price: float = 0.0
    live: bool = True


def _order_type(clients: list[str]) -> type:
    """RestingOrder with ``client_id`` a Literal of ``clients``: msgspec then gives each the same object."""
    if not clients:
        return RestingOrder
    hints = get_type_hints(RestingOrder)
    fields: list[Any] = []
    for f in msgspec.structs.fields(RestingOrder):
        t = Literal[tuple(clients)] if f.name == "client_id" else hints[f.name]
        fields.append((f.name, t) if f.required else (f.name, t, f.default))
    return msgspec.defstruct("RestingOrder", fields, array_like=True, gc=False)


# A level line: symbol, side, price, its orders in time order, each
# [order_no, client_id, order_id, qty, cum_qty, notional] (the last two only once it has a fill).


class Window:
    """The orders routed lately, by (client_id, order_id), and a floor: the largest order_no that
    fell out of the window. A route whose order_no is at or below the floor was seen (the
    ordermanager numbers orders from 1 and routes them in that order, re-routing only the last
    ones of a lost link), so it is never traded twice even once forgotten."""

    def __init__(self, size: int = WINDOW, floor: int = 0) -> None:
        self.size = size
        self.ids: dict[tuple[str, str], int] = {}
        self.floor = floor

    def verdict(self, client_id: str, order_id: str, order_no: int) -> str | None:
        """None for a new order; "duplicate" (in the window) or "stale" (at or below the floor)."""
        if (client_id, order_id) in self.ids:
            return "duplicate"
        return "stale" if order_no <= self.floor else None

    def add(self, client_id: str, order_id: str, order_no: int) -> None:
        """Remember a routed order; past 1.5 times the size, the oldest leave (raising the floor)."""
        self.ids[(client_id, order_id)] = order_no
        if len(self.ids) > self.size * 3 // 2:
            drop = len(self.ids) - self.size
            it = iter(self.ids.items())
            old = [next(it) for _ in range(drop)]
            for key, no in old:
                del self.ids[key]
                if no > self.floor:
                    self.floor = no


_enc = msgspec.json.Encoder()


def snapshot(engine: matching.Engine, window: Window, ticks: dict[str, tuple[str, int]], segments: int, lines: int,
             written_ns: int) -> Iterator[bytes]:
    """The checkpoint's lines (each ending in a newline), streamed; nothing may change meanwhile.
    ``ticks`` are the (session, seq) of each symbol's last tick, all of them journaled."""
    books = engine._books
    quotes = [(s, b.bid, b.bid_left, b.ask, b.ask_left) for s, b in books.items()
              if b.bid is not None and b.ask is not None]
    levels = [(sym, name, px, side.levels[px]) for sym, b in books.items()
              for name, side in (("BUY", b.bids), ("SELL", b.asks)) for px in side.prices]
    resting = len(engine._live)
    clients = sorted({cid for cid, _ in engine._live})
    yield _enc.encode(Header(segments, lines, engine.spread_bps, engine.depth, engine.next_exec_id, quotes,
                             resting, len(levels), clients, window.floor, written_ns, ticks)) + b"\n"
    buf = bytearray()
    n = 0
    for sym, name, px, level in levels:  # ascending prices: restore appends each at the end of the sorted list
        orders = [(o.order_no, o.client_id, o.order_id, o.qty, o.cum_qty, o.notional) if o.cum_qty else
                  (o.order_no, o.client_id, o.order_id, o.qty) for o in level.orders if o.live]
        n += len(orders)
        _enc.encode_into((sym, name, px, orders), buf, -1)
        buf += b"\n"
        if len(buf) > 1 << 20:
            yield bytes(buf)
            buf.clear()
    assert n == resting, f"{n} orders in the books, {resting} resting"
    _enc.encode_into([(cid, oid, no) for (cid, oid), no in window.ids.items()], buf, -1)
    yield bytes(buf + b"\n")


def restore(lines: Iterable[bytes]) -> tuple[Header, matching.Engine, Window]:
    """Rebuild the engine (with the parameters it had) and the window from a checkpoint's lines;
    ValueError if they are not one. The work per order is in C but for setting its level's four
    fields: 100,000 resting orders take a tenth of a second."""
    it = iter(lines)
    try:
        head = msgspec.json.decode(next(it), type=Header)
    except (StopIteration, msgspec.DecodeError) as e:
        raise ValueError(f"no checkpoint header: {e}") from None
    if head.version != VERSION:
        raise ValueError(f"checkpoint version {head.version}, expected {VERSION}")
    engine = matching.Engine(head.spread_bps, head.depth, head.next_exec_id)
    books, live = engine._books, engine._live
    for sym, bid, bid_left, ask, ask_left in head.quotes:
        book = books.setdefault(sym, matching._Book())
        book.bid, book.bid_left, book.ask, book.ask_left = bid, bid_left, ask, ask_left
    dec = msgspec.json.Decoder(tuple[str, str, float, list[_order_type(head.clients)]])  # type: ignore[misc]
    every: list[Any] = []  # all the orders, keyed at the end in one pass (a third faster than a level at a time)
    try:
        for _ in range(head.levels):
            sym, name, px, orders = dec.decode(next(it))
            for o in orders:
                o.symbol, o.side, o.price = sym, name, px
            book = books.get(sym) or books.setdefault(sym, matching._Book())
            side = book.bids if name == "BUY" else book.asks
            level = side.levels[px] = matching._Level()
            level.orders.extend(orders)  # type: ignore[arg-type]
            level.live = len(orders)
            side.prices.append(px)
            every += orders
        ids = msgspec.json.decode(next(it), type=list[tuple[str, str, int]])
    except (StopIteration, msgspec.DecodeError) as e:
        raise ValueError(f"checkpoint cut short or corrupt: {e or 'ends early'}") from None
    keys = zip(map(attrgetter("client_id"), every), map(attrgetter("order_id"), every), strict=True)
    live.update(zip(keys, every, strict=True))
    n = len(every)
    if n != head.orders or len(live) != n:
        raise ValueError(f"checkpoint holds {n} resting orders ({len(live)} keys), its header {head.orders}")
    for b in books.values():
        for side in (b.bids, b.asks):
            if side.prices != sorted(side.prices):
                raise ValueError("checkpoint levels out of order")
    window = Window(floor=head.floor)
    window.ids = {(cid, oid): no for cid, oid, no in ids}
    engine._seen.update(live)  # the engine's own de-duplication: the resting and the window's orders
    engine._seen.update(window.ids)
    return head, engine, window


def resting(engine: matching.Engine) -> int:
    """How many orders rest in the engine's books (without copying them, as ``open_orders`` does)."""
    return len(engine._live)
