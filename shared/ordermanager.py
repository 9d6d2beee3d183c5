"""ordermanager: authenticates strategies, validates, journals, acknowledges, routes to the venue
and forwards the venue's execs.

Every accepted order is journaled (shared.journal) before any ack of the turn
goes out, so ``kill -9`` never loses an acked order; then it is routed to the
venue (shared.venue). Every exec is journaled (shared.execjournal) before it
is forwarded to the strategy that owns the order, each once per connection,
in exec_id order: a connection's ``cursor`` (the last exec_id it was sent)
walks its client's execs in the exec journal, so what a reconnecting strategy
missed (``logon.last_exec_id``) and what is live come from the same place.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from shared import config as config_mod
from shared import logs, tls
from shared.halt import HaltWatch
from shared.journal import Entry, Journal
from shared.journalfiles import JournalLocked, errno_name
from shared.net import Conn, Loop, Retry, Server, read_token
from shared.owners import Owners, taken_over
from shared.protocol import (
    Ack,
    BadFrame,
    BadMessage,
    Cancel,
    Heartbeat,
    Logon,
    LogonAck,
    Message,
    Order,
    Reject,
    frame,
)
from shared.risk import Risk
from shared.routing import Router, route


class Session:
    """Per-connection state; ``cursor``: the exec_id of the last exec sent to it (of its client's)."""

    __slots__ = ("client_id", "cursor", "since")

    def __init__(self, since: float) -> None:
        self.client_id: str | None = None
        self.since = since
        self.cursor = 0


_om_decoder = msgspec.json.Decoder(Logon | Order | Cancel | Heartbeat)
# A pipelined flood of tiny bad frames costs ~25 us each (two log lines and a reject): reading at
# most RECV_CHUNK per client and turn keeps one client from holding the others' acks past 250 ms.
# A logged-on client that has sent no bad frame reads RECV_ORDERS: about 110 orders a turn instead
# of 14, so the turn's fixed costs (journal and log writes, acks, routes) are shared by more orders.
RECV_CHUNK, RECV_ORDERS = 2048, 16384
MAX_BACKLOG = 4 << 20  # unsent bytes to a client that sends but does not read: dropped (slow_consumer)


class OrderManager:
    """The ordermanager component."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        om = cfg.ordermanager
        self.cfg, self.log = cfg, log
        self.token_path = cfg.resolve(om.token_file)
        self.journal_path = str(cfg.resolve(om.journal))
        # Neither is there yet: each is retried with backoff, and the port is bound only once both are.
        self.token = b""
        self.journal: Journal  # set once the lock is ours and the journal loaded (the exec journal with it)
        self.ready = False
        self.token_retry = Retry(log, "token_unreadable", "error", path=str(self.token_path))
        self.lock_retry = Retry(log, "journal_locked", "warning", path=self.journal_path)
        self.risk = Risk(cfg.risk)
        self.halts = HaltWatch(self.journal_path, log)
        self.risk.halted = self.halts.load()
        self.session = uuid.uuid4().hex[:16]
        self.hb_s = om.heartbeat_ms / 1000
        self.symbols = set(cfg.symbols)
        self.max_qty = om.max_qty
        self.loop = Loop()
        try:
            ctx = tls.server_context(cfg)
        except tls.TlsError as e:
            log.error("tls_unusable", error=str(e))
            raise SystemExit(2) from None
        self.server = Server(self.loop, log, om.host, om.port, "orders", self._accept, tls=ctx)
        self.conns: set[Conn] = set()
        self.clients: dict[str, Conn] = {}
        self.owners = Owners()
        # This turn's answers in arrival order: (conn, order_id, order_no, duplicate, order or None, recv_ns).
        self.acks: list[tuple[Conn, str, int, bool, Order | None, int]] = []
        try:
            self.router = Router(cfg, log, self.loop, self.clients)
        except tls.TlsError as e:
            log.error("tls_unusable", error=str(e))
            raise SystemExit(2) from None
        self.next_housekeeping = 0.0

    def _ready(self, now: float) -> bool:
        """Read the token, then take and load the journal, each retried with backoff until it works."""
        if not self.token:
            self.token = self.router.token = read_token(self.token_path, self.token_retry, now)
        if self.token and self.lock_retry.due(now):
            om = self.cfg.ordermanager
            try:
                self.journal = Journal(self.journal_path, om.journal_sync, self.log, om.journal_segment_bytes,
                                       config_mod.roll_at_minute(om.journal_roll_at), om.journal_window)
                try:
                    self.router.load(self.journal_path, self.journal.last_no)
                except BaseException:
                    self.journal.close()
                    raise
            except JournalLocked as e:
                self.lock_retry.failed(now, str(e), holder_pid=e.holder)
            except OSError as e:
                self.lock_retry.failed(now, e.strerror or str(e), "journal_open_failed", errno=errno_name(e))
            else:
                if self.lock_retry.attempt:
                    self.log.info("journal_lock_acquired", path=self.journal_path, attempts=self.lock_retry.attempt)
                self.lock_retry.succeeded()
                self.ready = True
        return self.ready

    def _accept(self, sock: Any, peer: str) -> None:
        if len(self.conns) >= self.cfg.ordermanager.max_clients:
            sock.close()
            self.log.warning("disconnected", peer=peer, stream="orders", reason="too_many_clients")
            return
        conn = tls.connection(self.loop, self.log, sock, peer, "orders", self._on_message, self._closed, _om_decoder)
        conn.state = Session(time.monotonic())
        conn.recv_size = RECV_CHUNK
        self.conns.add(conn)
        self.log.info("connected", peer=peer, stream="orders")

    def _closed(self, conn: Conn, reason: str) -> None:
        self.conns.discard(conn)
        cid = conn.state.client_id
        if cid is not None and self.clients.get(cid) is conn:
            del self.clients[cid]
        self.log.warning("disconnected", peer=conn.peer, stream="orders", client_id=cid, reason=reason)

    def _reject(self, conn: Conn, order_id: str | None, reason: str, detail: str, close: bool = False,
                event: str = "order_rejected") -> None:
        self.log.warning(event, peer=conn.peer, client_id=conn.state.client_id, order_id=order_id,
                         reason=reason, detail=detail)
        conn.write(frame(Reject(order_id=order_id, reason=reason, detail=detail[:512])))  # type: ignore[arg-type]
        if close:
            conn.flush_blocking(time.monotonic() + 0.05)
            conn.close(reason)

    def _on_message(self, conn: Conn, msg: Message | BadMessage | BadFrame) -> None:
        st: Session = conn.state
        t = type(msg)
        if t is Order and st.client_id is not None:
            self._order(conn, st.client_id, msg)  # type: ignore[arg-type]
        elif t is Cancel and st.client_id is not None:
            self._cancel(conn, st.client_id, msg)  # type: ignore[arg-type]
        elif t is Heartbeat and st.client_id is not None:
            pass
        elif t is BadFrame:
            self._reject(conn, None, "bad_frame", str(msg), close=True)
        elif t is BadMessage:
            conn.recv_size = RECV_CHUNK  # a client that sends bad frames is read in small bites again
            bm: BadMessage = msg  # type: ignore[assignment]
            self._reject(conn, bm.order_id, "bad_message", bm.detail, close=st.client_id is None)
        elif st.client_id is None:
            if t is Logon:
                self._logon(conn, st, msg)  # type: ignore[arg-type]
            else:
                self._reject(conn, getattr(msg, "order_id", None), "not_logged_on", "logon first", close=True)
        else:
            self._reject(conn, None, "bad_message", f"unexpected {t.__name__} after logon")

    def _logon(self, conn: Conn, st: Session, msg: Logon) -> None:
        refused = msg.refused(self.token)
        if refused is not None:
            self._reject(conn, None, *refused, close=True)
            return
        verdict = self.owners.logon(msg.client_id, msg.instance)
        if verdict == "refuse":
            self._reject(conn, None, "unauthorized", taken_over(msg.client_id), close=True)
            return
        if verdict == "take_over":
            self.log.warning("client_taken_over", peer=conn.peer, client_id=msg.client_id, instance=msg.instance)
        old = self.clients.get(msg.client_id)
        if old is not None:
            old.close("taken_over" if verdict == "take_over" else "replaced_by_new_logon")
        cid = st.client_id = msg.client_id
        self.clients[cid] = conn
        conn.recv_size = RECV_ORDERS
        # This turn's staged orders and execs first: the ack counts only what the journals hold.
        self._commit()
        self.router.commit()
        orders = self.router.orders
        positions = orders.nonzero_positions(cid)
        last = self.journal.last_id.get(cid)
        open_orders = orders.open_orders(cid)
        last_exec = orders.client_last.get(cid)  # what positions and open_orders count up to
        conn.write(frame(LogonAck(session=self.session, heartbeat_ms=self.cfg.ordermanager.heartbeat_ms,
                                  positions=positions, last_order_id=last, open_orders=open_orders,
                                  last_exec_id=last_exec)))
        again = self.router.start_from(conn, cid, msg.last_exec_id)
        self.log.info("logon", peer=conn.peer, client_id=cid, instance=msg.instance, positions=positions,
                      last_order_id=last, open_orders=len(open_orders), last_exec_id=last_exec,
                      client_last_exec_id=msg.last_exec_id, execs_again=again)
        self.router.pump(conn)

    def _order(self, conn: Conn, cid: str, o: Order) -> None:
        recv_ns = time.time_ns()
        j = self.journal
        no = j.lookup(cid, o.order_id)
        if no is not None:  # a duplicate: answered with the turn (it may be this turn's order)
            self.acks.append((conn, o.order_id, no, True, None, recv_ns))
            return
        if o.symbol not in self.symbols:
            self._reject(conn, o.order_id, "risk", f"unknown symbol {o.symbol!r}")
            return
        if o.qty > self.max_qty:
            self._reject(conn, o.order_id, "risk", f"qty {o.qty} over the limit {self.max_qty}")
            return
        if not self.router.link.up:
            self._reject(conn, o.order_id, "unavailable", f"venue unavailable: {self.router.link.down_reason}")
            return
        refusal = self._pre_trade(cid, o)
        if refusal is not None:
            self._reject(conn, o.order_id, "risk", refusal)
            return
        if not j.available and not j.may_try(time.monotonic()):
            j.refused += 1
            self._reject(conn, o.order_id, "unavailable", f"journal unavailable: {j.error}")
            return
        no = j.last_no + 1
        j.stage(Entry(no, o.order_id, cid, o.symbol, o.side, o.qty, o.price, o.ts_ns, o.tick_ts_ns, recv_ns,
                      o.ord_type, o.tif, msgspec.UNSET if o.ctx is None else o.ctx))
        self.router.orders.accept(no, cid, o.order_id, o.symbol, o.side, o.qty, o.price, o.ord_type, o.tif)
        self.acks.append((conn, o.order_id, no, False, o, recv_ns))

    def _pre_trade(self, cid: str, o: Order) -> str | None:
        """The client's halt and risk limits (shared.risk): None, or why the order is refused."""
        st = self.router.orders
        return self.risk.check(cid, o.symbol, o.side, o.qty, o.price, st.position(cid, o.symbol), time.monotonic(),
                               st.open_qty(cid, o.symbol, o.side))

    def _cancel(self, conn: Conn, cid: str, c: Cancel) -> None:
        """Forward a cancel of one of the client's open orders to the venue, or refuse it here."""
        orders, link = self.router.orders, self.router.link
        o = orders.open_order(cid, c.order_id)
        if o is not None and o.order_no > self.journal.committed_no:
            self._commit()  # accepted this turn: journaled and routed before the venue hears the cancel
            o = orders.open_order(cid, c.order_id)
        if o is None:
            self._reject(conn, c.order_id, "unknown_order", f"{c.order_id} is not an open order of {cid}",
                         event="cancel_rejected")
        elif not link.send(frame(Cancel(order_id=c.order_id, client_id=cid))):
            self._reject(conn, c.order_id, "unavailable", f"venue unavailable: {link.down_reason}",
                         event="cancel_rejected")
        else:
            self.log.info("cancel_routed", client_id=cid, order_id=c.order_id, order_no=o.order_no)

    def _poll_halts(self, now: float) -> None:
        """Apply the halt file when deploy/halt or deploy/resume changed it (a stat every 100 ms)."""
        halted = self.halts.poll(now)
        if halted is not None:
            self.risk.halted = halted

    def _commit(self) -> None:
        """Group commit: journal first, then the routes, the acks and the log lines. A
        failed write turns the turn's new orders into ``unavailable`` rejects."""
        if not self.acks:
            return
        j = self.journal
        ok = j.commit()
        out: dict[Conn, bytearray] = {}
        routes = bytearray()
        orders = self.router.orders
        for conn, oid, no, dup, o, recv_ns in self.acks:
            cid = conn.state.client_id
            if not ok and no > j.committed_no:  # staged this turn, taken out again
                orders.forget(no)
                j.refused += 1
                self._reject(conn, oid, "unavailable", f"journal unavailable: {j.error}")
                continue
            if dup:
                self.log.info("order_duplicate", order_id=oid, client_id=cid, order_no=no)
            elif o is not None:
                px = "MKT" if o.price is None else f"{o.price:.2f}"
                logs.hot("order_received", order_no=no, order_id=oid, client_id=cid, symbol=o.symbol, side=o.side,
                         qty=o.qty, price=o.price, ord_type=o.ord_type, tif=o.tif,
                         latency_us=(recv_ns - o.tick_ts_ns) // 1000,
                         msg=f"Received Order {no}: {o.side} {o.qty} {o.symbol} @ {px}")
                accepted = orders.by_no.get(no)
                if accepted is not None:
                    routes += route(accepted)
            out.setdefault(conn, bytearray()).extend(frame(Ack(order_id=oid, order_no=no, duplicate=dup)))
        self.acks.clear()
        # The routes first, then the acks, then the log lines: each write may wake another process that
        # queues for a core, and the venue's is on the way to the fill (the journal is written already).
        if routes:  # a link lost since: routed after the next logon_ack, as every order without an exec
            self.router.link.send(routes)
        for conn, acks in out.items():
            conn.write(acks)
        logs.flush()

    def step(self) -> None:
        # Read first, then judge silence: after a long deschedule the peers'
        # heartbeats are waiting unread, and the link is alive.
        self.loop.run_once(max(0.0, self.next_housekeeping - time.monotonic()))
        self._commit()
        if self.ready:
            self.router.commit()
        now = time.monotonic()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + min(0.05, self.hb_s / 4)
            if not self.ready and not self._ready(now):
                retry = self.lock_retry if self.token else self.token_retry
                self.next_housekeeping = max(retry.next_at, now + 0.01)
                return  # not bound: nobody can connect yet
            self.journal.tick()
            self.router.execs.tick()
            self.server.poll(now)
            self.router.link.poll(now)
            self._poll_halts(now)
            logon_timeout = self.cfg.ordermanager.logon_timeout_ms / 1000
            for conn in list(self.conns):
                st: Session = conn.state
                if len(conn.out) > MAX_BACKLOG:
                    conn.close("slow_consumer")
                elif st.client_id is None:
                    if now - st.since > logon_timeout:
                        conn.close("logon_timeout")
                elif conn.idle_for(now) > 3 * self.hb_s:
                    conn.close("heartbeat_timeout")
                else:
                    self.router.pump(conn)  # a long replay goes out as the client reads it
                    if conn.quiet_for(now) >= self.hb_s:
                        conn.write(frame(Heartbeat(ts_ns=time.time_ns())))

    def shutdown(self, deadline: float) -> None:
        self.server.close()  # stop intake
        self._commit()  # drain: journal and ack what was accepted, journal and forward the execs
        self.router.close(deadline, self.ready)
        for conn in list(self.conns):
            conn.flush_blocking(deadline)
            conn.close("shutdown")
        if self.ready:
            self.journal.close()
