"""The ordermanager's side of the venue: its link (shared.venue), the state of every order
(shared.execstate), the exec journal (shared.execjournal), and forwarding execs to strategies.

Accepted orders are routed right after they are journaled, and again after every logon_ack of
the venue while they have no exec (the venue ignores an order it has). An exec is journaled only
if its exec_id is above the highest journaled (the venue repeats what follows our logon's
``last_exec_id``), and forwarded only after the turn's exec lines are written. Each strategy
connection has a cursor, the exec_id of the last exec it was sent: forwarding moves the cursor,
so each exec goes once per connection, in exec_id order, live or replayed after a logon with
``last_exec_id`` (from the closed segments of the exec journal too).
"""

from __future__ import annotations

import time
from typing import Any

from shared import config as config_mod
from shared import logs
from shared.execjournal import ExecJournal
from shared.execstate import ExecLine, ExecState, Order
from shared.journal import entries_after
from shared.net import Conn, Loop
from shared.protocol import Exec, LogonAck, Reject, Route, frame
from shared.venue import VenueLink

EXEC_BATCH = 1 << 20  # execs are queued to a client while its unsent bytes are below this; the rest wait


def route(o: Order) -> bytes:
    """The route frame of an accepted order."""
    return frame(Route(order_no=o.order_no, client_id=o.client_id, order_id=o.order_id, symbol=o.symbol,
                       side=o.side, qty=o.qty, price=o.price, ord_type=o.ord_type,  # type: ignore[arg-type]
                       tif=o.tif))  # type: ignore[arg-type]


class Router:
    """Routes orders, journals execs, forwards them; ``clients`` is the ordermanager's client_id -> Conn."""

    def __init__(self, cfg: config_mod.Config, log: Any, loop: Loop, clients: dict[str, Conn]) -> None:
        self.cfg, self.log, self.clients = cfg, log, clients
        self.orders = ExecState()  # every open order, positions from fills, what is still to route
        self.execs: ExecJournal  # set by load
        self.token = b""  # the order-entry token, set by the ordermanager once read
        self.link = VenueLink(cfg, log, loop, self)  # tls.TlsError: the caller says so and stops

    def load(self, journal_path: str, last_order_no: int) -> None:
        """The exec journal into ``orders``, then the accepted orders that have no exec yet (to route)."""
        om = self.cfg.ordermanager
        self.execs = ExecJournal(journal_path, om.journal_sync, self.log, self.orders, last_order_no,
                                 om.journal_segment_bytes, config_mod.roll_at_minute(om.journal_roll_at))
        n = sum(self.orders.accept_entry(e) is not None for e in entries_after(journal_path, self.orders.routed_upto))
        if n:
            self.log.info("orders_to_route", orders=n, first_order_no=self.orders.unrouted()[0].order_no)

    # --- the link's events ------------------------------------------------------

    def venue_logon(self) -> tuple[bytes, int | None]:
        """Our logon to the venue: the token and the highest exec_id journaled."""
        return self.token, self.orders.last_exec_id or None

    def venue_up(self, ack: LogonAck) -> None:
        """Route every accepted order that has no exec yet, in order_no order (the venue ignores one it has)."""
        todo = self.orders.unrouted()
        if todo:
            self.link.send(b"".join(map(route, todo)))
        ours = self.orders.last_exec_id or None
        self.log.info("venue_logged_on", session=ack.session, last_exec_id=ours, venue_last_exec_id=ack.last_exec_id,
                      routed=len(todo))
        if (ack.last_exec_id or 0) < (ours or 0):
            self.log.error("venue_behind", last_exec_id=ours, venue_last_exec_id=ack.last_exec_id)

    def venue_down(self, reason: str) -> None:
        self.log.warning("venue_unavailable", reason=reason, open_orders=len(self.orders.by_no),
                         unrouted=len(self.orders.unrouted()))

    def venue_exec(self, x: Exec) -> None:
        """Stage an exec above the highest for this turn's commit (others are repeats)."""
        if x.client_id is None or x.order_no is None:
            self.log.error("venue_bad_exec", exec_id=x.exec_id, order_id=x.order_id, detail="no client_id or order_no")
            return
        ej = self.execs
        if x.exec_id <= ej.highest:
            return
        if x.exec_id != ej.highest + 1:
            self.log.warning("exec_gap", expected=ej.highest + 1, got=x.exec_id)
        qty = price = None
        if x.status == "new":  # the order's qty and price go in the journal with it (see shared.execstate)
            o = self.orders.by_no.get(x.order_no)
            if o is not None:
                qty, price = o.qty, o.price
        ej.stage(ExecLine(x.order_id, x.exec_id, x.status, x.last_qty, x.last_px, x.cum_qty, x.leaves_qty, x.avg_px,
                          x.ts_ns, x.symbol, x.side, x.client_id, x.order_no, time.time_ns(), qty, price))

    def venue_reject(self, r: Reject) -> None:
        """The venue's ``unknown_order`` for a cancel (the order ended meanwhile): to the client, without
        ``client_id``. Anything else is the venue refusing what we sent: logged."""
        if r.reason == "unknown_order" and r.client_id is not None:
            self.log.warning("cancel_rejected", client_id=r.client_id, order_id=r.order_id, reason=r.reason,
                             detail=r.detail, by="venue")
            conn = self.clients.get(r.client_id)
            if conn is not None:
                conn.write(frame(Reject(order_id=r.order_id, reason=r.reason, detail=r.detail)))
        else:
            self.log.error("venue_rejected", client_id=r.client_id, order_id=r.order_id, reason=r.reason,
                           detail=r.detail)

    # --- execs to the strategies --------------------------------------------------

    def commit(self) -> None:
        """Group commit of the turn's execs: journal first, then to the strategies, then the log lines."""
        lines = self.execs.commit()
        if lines is None:  # too many held through a write outage: the venue sends them again after our logon
            self.link.drop("exec_journal_failed")
            return
        if not lines:
            return
        for cid in {x.client_id for x in lines}:
            conn = self.clients.get(cid)
            if conn is not None:
                self.pump(conn)
        for x in lines:
            if x.last_qty:
                logs.hot("order_filled", order_id=x.order_id, client_id=x.client_id, exec_id=x.exec_id,
                         last_qty=x.last_qty, last_px=x.last_px, cum_qty=x.cum_qty, status=x.status,
                         order_no=x.order_no, symbol=x.symbol, side=x.side, leaves_qty=x.leaves_qty)
        logs.flush()

    def start_from(self, conn: Conn, client_id: str, last_exec_id: int | None) -> int:
        """Point a newly logged-on connection after ``last_exec_id`` (None: after every exec so far);
        how many execs it will be sent again."""
        last = self.orders.client_last.get(client_id, 0)
        after = last if last_exec_id is None else min(last_exec_id, last)  # past our last: from our last on
        conn.state.cursor = after
        idx = self.execs.execs_of(client_id, after)
        return 0 if idx is None else len(idx) - idx.after(after)

    def pump(self, conn: Conn) -> None:
        """Send the client's execs after its cursor, while its unsent bytes stay below EXEC_BATCH."""
        st = conn.state
        if len(conn.out) >= EXEC_BATCH:
            return
        idx = self.execs.execs_of(st.client_id or "", st.cursor)
        if idx is None:
            return
        i, n = idx.after(st.cursor), len(idx)
        if i >= n:
            return
        buf = bytearray()
        room = EXEC_BATCH - len(conn.out)
        line = self.execs.line
        while i < n and len(buf) < room:
            body = line(idx, i)
            buf += len(body).to_bytes(4, "big")
            buf += body
            i += 1
        st.cursor = idx.ids[i - 1]
        conn.write(buf)

    def close(self, deadline: float, loaded: bool) -> None:
        """Commit and forward what is staged, flush and close the link, close the exec journal."""
        if loaded:
            self.commit()
        if self.link.conn is not None:
            self.link.conn.flush_blocking(deadline)
        self.link.close()
        if loaded:
            self.execs.close()
