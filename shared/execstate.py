"""The life of every order, from the order journal and the venue's execs: pure, no I/O.

An order is accepted (journaled and acked), routed to the venue, confirmed ``new``, filled in parts
and ended once (filled, canceled or expired: contract §9). ``ExecState`` folds accepted orders and
exec lines into what the ordermanager answers with and what the audit and the invariants check:
each client's filled positions, its open orders with their cum and leaves quantities, the leaves
per symbol and side (what ``risk.max_position`` adds to the position), the orders that have no exec
yet (still to route) and the highest exec_id. Built the same way everywhere, it means the same.

An exec line (``ExecLine``) is the venue's ``exec`` message as the ordermanager journals it: the
message's fields (``type`` kept, so a line is also the frame body sent to the strategy) plus
``recv_ns``, the ordermanager's receive time, and on a ``new`` exec the order's ``order_qty`` and
``order_price``, so a restart knows an open order from its execs alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from shared.protocol import TERMINAL, OpenOrder


class ExecLine(msgspec.Struct, tag_field="type", tag="exec", omit_defaults=True, frozen=True):
    """One line of the ordermanager's exec journal (``<journal>.execs``)."""

    order_id: str
    exec_id: int
    status: str
    last_qty: int
    last_px: float | None
    cum_qty: int
    leaves_qty: int
    avg_px: float | None
    ts_ns: int
    symbol: str
    side: str
    client_id: str
    order_no: int
    recv_ns: int = 0
    order_qty: int | None = None  # on a "new" exec: the order's qty and (a market order may have none) price
    order_price: float | None = None


_line_decoder = msgspec.json.Decoder(ExecLine)


def decode_line(line: bytes) -> ExecLine:
    """One exec journal line; msgspec.DecodeError (a ValidationError too) if it is not one."""
    return _line_decoder.decode(line)


class Order:
    """An order the venue has not ended yet, as far as this state knows."""

    __slots__ = ("client_id", "cum_qty", "leaves_qty", "ord_type", "order_id", "order_no", "price", "qty", "side",
                 "symbol", "tif")

    def __init__(self, order_no: int, client_id: str, order_id: str, symbol: str, side: str, qty: int,
                 price: float | None, ord_type: str = "limit", tif: str = "day") -> None:
        self.order_no, self.client_id, self.order_id = order_no, client_id, order_id
        self.symbol, self.side, self.qty, self.price = symbol, side, qty, price
        self.ord_type, self.tif = ord_type, tif
        self.cum_qty = 0
        self.leaves_qty = 0  # counted in ExecState.leaves through _set_leaves only

    def open_order(self) -> OpenOrder:
        return OpenOrder(order_id=self.order_id, symbol=self.symbol, side=self.side,  # type: ignore[arg-type]
                         qty=self.qty, price=self.price, cum_qty=self.cum_qty, leaves_qty=self.leaves_qty)


class ExecState:
    """Positions, open orders and routing from accepted orders and exec lines.

    ``routed_upto``: every order_no at or below it has had an exec, or was accepted before the venue
    existed (the journal's orders before 1.2 are history, never routed)."""

    def __init__(self, routed_upto: int = 0) -> None:
        self.positions: dict[str, dict[str, int]] = {}  # client_id -> symbol -> signed filled qty
        self.open: dict[str, dict[str, Order]] = {}  # client_id -> order_id -> its open order
        self.by_no: dict[int, Order] = {}  # the same orders by order_no
        self.leaves: dict[tuple[str, str], list[int]] = {}  # (client_id, symbol) -> [buy, sell] leaves
        self.last_exec_id = 0
        self.client_last: dict[str, int] = {}  # client_id -> its highest exec_id
        self.routed_upto = routed_upto
        self._routed_above: set[int] = set()
        self.fills = 0

    # --- orders ---------------------------------------------------------------

    def accept(self, order_no: int, client_id: str, order_id: str, symbol: str, side: str, qty: int,
               price: float | None, ord_type: str = "limit", tif: str = "day") -> Order | None:
        """An accepted order: open with all its qty left, to be routed. None if it had an exec already
        or predates the venue (a restart reading the journal back)."""
        if self.routed(order_no) or order_no in self.by_no:
            return None
        o = Order(order_no, client_id, order_id, symbol, side, qty, price, ord_type, tif)
        mine = self.open.get(client_id)
        if mine is None:
            mine = self.open[client_id] = {}
        mine[order_id] = o
        self.by_no[order_no] = o
        self._set_leaves(o, qty)
        return o

    def accept_entry(self, e: Any) -> Order | None:
        """``accept`` of an order journal entry (shared.journal.Entry or its dict)."""
        get: Any = e.get if isinstance(e, dict) else lambda k, d=None: getattr(e, k, d)
        return self.accept(get("order_no"), get("client_id"), get("order_id"), get("symbol"), get("side"),
                           get("qty"), get("price"), get("ord_type", "limit"), get("tif", "day"))

    def forget(self, order_no: int) -> None:
        """Take back an order accepted but never journaled (the write failed)."""
        o = self.by_no.pop(order_no, None)
        if o is not None:
            self._set_leaves(o, 0)
            self._drop(o)

    def routed(self, order_no: int) -> bool:
        """Whether the order has had an exec (or predates the venue)."""
        return order_no <= self.routed_upto or order_no in self._routed_above

    def unrouted(self) -> list[Order]:
        """The accepted orders with no exec yet, in order_no order: routed again after each venue logon."""
        return sorted((o for no, o in self.by_no.items() if not self.routed(no)), key=lambda o: o.order_no)

    # --- execs ----------------------------------------------------------------

    def apply(self, x: ExecLine) -> bool:
        """Fold one exec in; False (and nothing changes) for an exec_id not above the highest."""
        if x.exec_id <= self.last_exec_id:
            return False
        self.last_exec_id = x.exec_id
        cid = x.client_id
        self.client_last[cid] = x.exec_id
        self._mark_routed(x.order_no)
        o = self.by_no.get(x.order_no)
        if o is None and x.status not in TERMINAL:  # known from its execs only (a restart)
            qty = x.order_qty if x.order_qty is not None else x.cum_qty + x.leaves_qty
            o = Order(x.order_no, cid, x.order_id, x.symbol, x.side, qty, x.order_price)
            self.open.setdefault(cid, {})[x.order_id] = o
            self.by_no[x.order_no] = o
        if x.last_qty:
            self.fills += 1
            pos = self.positions.get(cid)
            if pos is None:
                pos = self.positions[cid] = {}
            pos[x.symbol] = pos.get(x.symbol, 0) + (x.last_qty if x.side == "BUY" else -x.last_qty)
        if o is not None:
            o.cum_qty = x.cum_qty
            if x.status in TERMINAL:
                self._set_leaves(o, 0)
                del self.by_no[o.order_no]
                self._drop(o)
            elif x.leaves_qty != o.leaves_qty:
                self._set_leaves(o, x.leaves_qty)
        return True

    def _mark_routed(self, no: int) -> None:
        if no <= self.routed_upto:
            return
        above = self._routed_above
        if no != self.routed_upto + 1:
            if no in above:
                return
            above.add(no)
            return
        no += 1
        while no in above:
            above.remove(no)
            no += 1
        self.routed_upto = no - 1

    def _set_leaves(self, o: Order, leaves: int) -> None:
        key = (o.client_id, o.symbol)
        sides = self.leaves.get(key)
        if sides is None:
            sides = self.leaves[key] = [0, 0]
        sides[o.side != "BUY"] += leaves - o.leaves_qty
        o.leaves_qty = leaves

    def _drop(self, o: Order) -> None:
        mine = self.open.get(o.client_id)
        if mine is not None and mine.get(o.order_id) is o:
            del mine[o.order_id]
            if not mine:
                del self.open[o.client_id]

    # --- answers --------------------------------------------------------------

    def position(self, client_id: str, symbol: str) -> int:
        return self.positions.get(client_id, {}).get(symbol, 0)

    def nonzero_positions(self, client_id: str) -> dict[str, int]:
        """A client's filled positions, flat symbols left out (logon_ack's ``positions``)."""
        return {s: q for s, q in self.positions.get(client_id, {}).items() if q}

    def open_qty(self, client_id: str, symbol: str, side: str) -> int:
        """The leaves of the client's open orders in ``symbol`` on ``side``."""
        sides = self.leaves.get((client_id, symbol))
        return 0 if sides is None else sides[side != "BUY"]

    def open_order(self, client_id: str, order_id: str) -> Order | None:
        return self.open.get(client_id, {}).get(order_id)

    def open_orders(self, client_id: str) -> list[OpenOrder]:
        """The client's open orders in order_no order (logon_ack's ``open_orders``)."""
        return [o.open_order() for o in sorted(self.open.get(client_id, {}).values(), key=lambda o: o.order_no)]


class Snapshot(msgspec.Struct, array_like=True):
    """An ``ExecState`` at the end of some exec lines, as the exec journal's checkpoint holds it:
    what those lines made of it (orders with no exec yet come from the order journal, not from here)."""

    last_exec_id: int
    routed_upto: int
    routed_above: list[int]
    fills: int
    client_last: dict[str, int]
    positions: dict[str, dict[str, int]]
    open: list[tuple[int, str, str, str, str, int, float | None, str, str, int, int]]  # see Order


def snapshot(st: ExecState) -> Snapshot:
    """The state's exec part (its routed orders, positions, exec_ids), in a canonical order."""
    orders = [(o.order_no, o.client_id, o.order_id, o.symbol, o.side, o.qty, o.price, o.ord_type, o.tif, o.cum_qty,
               o.leaves_qty) for no, o in sorted(st.by_no.items()) if st.routed(no)]
    return Snapshot(st.last_exec_id, st.routed_upto, sorted(st._routed_above), st.fills, dict(sorted(
        st.client_last.items())), {c: dict(sorted(p.items())) for c, p in sorted(st.positions.items())}, orders)


def restore(st: ExecState, snap: Snapshot) -> None:
    """Put a snapshot into a fresh state (one that has seen nothing but its ``routed_upto``)."""
    st.last_exec_id, st.fills = snap.last_exec_id, snap.fills
    st.routed_upto = max(st.routed_upto, snap.routed_upto)
    st._routed_above = {no for no in snap.routed_above if no > st.routed_upto}
    st.client_last, st.positions = dict(snap.client_last), {c: dict(p) for c, p in snap.positions.items()}
    for no, cid, oid, symbol, side, qty, price, ord_type, tif, cum, leaves in snap.open:
        o = Order(no, cid, oid, symbol, side, qty, price, ord_type, tif)
        o.cum_qty = cum
        st.open.setdefault(cid, {})[oid] = o
        st.by_no[no] = o
        st._set_leaves(o, leaves)


def build(entries: Iterable[Any], execs: Iterable[ExecLine], routed_upto: int = 0) -> ExecState:
    """The state after a journal's orders and an exec journal's lines (the audit's and the tests' way)."""
    st = ExecState(routed_upto)
    for e in entries:
        st.accept_entry(e)
    for x in execs:
        st.apply(x)
    return st
