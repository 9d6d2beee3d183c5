"""ordermanager: authenticates strategies, validates, journals, acknowledges.

The journal is the truth: one JSON line per accepted order, written (and,
by policy, fsynced) before any ack of the turn goes out, so ``kill -9`` never
loses an acked order. At start it is read back to rebuild the order numbers,
the de-duplication index and the positions; a torn last line is cut off.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid
from typing import Any

import msgspec

from shared import config as config_mod
from shared import logs
from shared.net import Conn, Loop, Server
from shared.protocol import PROTO, Ack, BadFrame, BadMessage, Heartbeat, Logon, LogonAck, Message, Order, Reject, frame


class Entry(msgspec.Struct, frozen=True):
    """One journal line (contract §6)."""

    order_no: int
    order_id: str
    client_id: str
    symbol: str
    side: str
    qty: int
    price: float
    ts_ns: int
    tick_ts_ns: int
    recv_ns: int


class Journal:
    """Append-only order journal with the index rebuilt from it at start."""

    def __init__(self, path: str, sync: str, log: Any) -> None:
        self.path, self.sync, self.log = path, sync, log
        self.index: dict[str, dict[str, int]] = {}  # client_id -> order_id -> order_no
        self.positions: dict[str, dict[str, int]] = {}  # client_id -> symbol -> signed qty
        self.last_id: dict[str, str] = {}  # client_id -> its last journaled order_id
        self.last_no = 0
        self.staged = 0  # orders in staged_bytes, not yet written
        self.staged_bytes = bytearray()
        self._encoder = msgspec.json.Encoder()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._load()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        dec = msgspec.json.Decoder(Entry)
        good = 0  # bytes of whole, valid lines
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            try:
                if last:
                    raise ValueError("no newline at the end")
                e = dec.decode(line)
            except (msgspec.DecodeError, ValueError) as err:
                if last or all(not x for x in lines[i + 1 :]):
                    self.log.warning("journal_repaired", path=self.path, dropped_bytes=len(data) - good,
                                     error=str(err))
                    with open(self.path, "r+b") as f:
                        f.truncate(good)
                    break
                self.log.error("journal_corrupt_line", path=self.path, line=i + 1, error=str(err))
                good += len(line) + 1
                continue
            good += len(line) + 1
            self._index(e)
        self.log.info("journal_loaded", path=self.path, orders=sum(map(len, self.index.values())),
                      last_order_no=self.last_no)

    def _index(self, e: Entry) -> None:
        ids = self.index.get(e.client_id)
        if ids is None:
            ids = self.index[e.client_id] = {}
        ids[e.order_id] = e.order_no
        pos = self.positions.setdefault(e.client_id, {})
        pos[e.symbol] = pos.get(e.symbol, 0) + (e.qty if e.side == "BUY" else -e.qty)
        self.last_id[e.client_id] = e.order_id
        if e.order_no > self.last_no:
            self.last_no = e.order_no

    def lookup(self, client_id: str, order_id: str) -> int | None:
        """The order_no of an order already accepted, or None."""
        ids = self.index.get(client_id)
        return None if ids is None else ids.get(order_id)

    def stage(self, e: Entry) -> None:
        """Accept an order: indexed now, written at the next ``commit``."""
        self._index(e)
        self._encoder.encode_into(e, self.staged_bytes, -1)
        self.staged_bytes += b"\n"
        self.staged += 1

    def commit(self) -> int:
        """Write the staged lines in one write (then fsync, by policy)."""
        if not self.staged:
            return 0
        data = bytes(self.staged_bytes)
        n = self.staged
        self.staged_bytes.clear()
        self.staged = 0
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        if self.sync == "fsync":
            os.fsync(self.fd)
        return n

    def close(self) -> None:
        self.commit()
        os.close(self.fd)


class Session:
    """Per-connection state."""

    __slots__ = ("client_id", "since")

    def __init__(self, since: float) -> None:
        self.client_id: str | None = None
        self.since = since


_om_decoder = msgspec.json.Decoder(Logon | Order | Heartbeat)
# A pipelined flood of tiny bad frames costs ~25 us each (two log lines and a reject): reading at
# most this much per client and turn keeps one client from holding the others' acks past 250 ms.
RECV_CHUNK = 2048
MAX_BACKLOG = 4 << 20  # unsent bytes to a client that sends but does not read: dropped (slow_consumer)


class OrderManager:
    """The ordermanager component."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        om = cfg.ordermanager
        self.cfg, self.log = cfg, log
        token_path = cfg.resolve(om.token_file)
        try:
            self.token = token_path.read_text().strip().encode()
        except OSError as e:
            log.error("token_unreadable", path=str(token_path), error=str(e))
            raise SystemExit(2) from None
        self.journal = Journal(str(cfg.resolve(om.journal)), om.journal_sync, log)
        self.session = uuid.uuid4().hex[:16]
        self.hb_s = om.heartbeat_ms / 1000
        self.symbols = set(cfg.symbols)
        self.max_qty = om.max_qty
        self.loop = Loop()
        self.server = Server(self.loop, log, om.host, om.port, "orders", self._accept)
        self.conns: set[Conn] = set()
        self.clients: dict[str, Conn] = {}
        self.acks: list[tuple[Conn, bytes]] = []
        self.next_housekeeping = 0.0

    def _accept(self, sock: Any, peer: str) -> None:
        if len(self.conns) >= self.cfg.ordermanager.max_clients:
            sock.close()
            self.log.warning("disconnected", peer=peer, stream="orders", reason="too_many_clients")
            return
        conn = Conn(self.loop, self.log, sock, peer, "orders", self._on_message, self._closed, _om_decoder)
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

    def _reject(self, conn: Conn, order_id: str | None, reason: str, detail: str, close: bool = False) -> None:
        self.log.warning("order_rejected", peer=conn.peer, client_id=conn.state.client_id, order_id=order_id,
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
        elif t is Heartbeat and st.client_id is not None:
            pass
        elif t is BadFrame:
            self._reject(conn, None, "bad_frame", str(msg), close=True)
        elif t is BadMessage:
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
        if msg.proto != PROTO:
            self._reject(conn, None, "bad_message", f"proto {msg.proto} unsupported, expected {PROTO}", close=True)
            return
        if not hmac.compare_digest(msg.token.encode(), self.token):
            self._reject(conn, None, "unauthorized", f"bad token for {msg.client_id}", close=True)
            return
        old = self.clients.get(msg.client_id)
        if old is not None:
            old.close("replaced_by_new_logon")
        st.client_id = msg.client_id
        self.clients[msg.client_id] = conn
        positions = {s: q for s, q in self.journal.positions.get(msg.client_id, {}).items() if q}
        last = self.journal.last_id.get(msg.client_id)
        conn.write(frame(LogonAck(session=self.session, heartbeat_ms=self.cfg.ordermanager.heartbeat_ms,
                                  positions=positions, last_order_id=last)))
        self.log.info("logon", peer=conn.peer, client_id=msg.client_id, positions=positions, last_order_id=last)

    def _order(self, conn: Conn, cid: str, o: Order) -> None:
        recv_ns = time.time_ns()
        no = self.journal.lookup(cid, o.order_id)
        if no is not None:
            self.acks.append((conn, frame(Ack(order_id=o.order_id, order_no=no, duplicate=True))))
            self.log.info("order_duplicate", order_id=o.order_id, client_id=cid, order_no=no)
            return
        if o.symbol not in self.symbols:
            self._reject(conn, o.order_id, "risk", f"unknown symbol {o.symbol!r}")
            return
        if o.qty > self.max_qty:
            self._reject(conn, o.order_id, "risk", f"qty {o.qty} over the limit {self.max_qty}")
            return
        no = self.journal.last_no + 1
        self.journal.stage(Entry(no, o.order_id, cid, o.symbol, o.side, o.qty, o.price, o.ts_ns, o.tick_ts_ns,
                                 recv_ns))
        self.acks.append((conn, frame(Ack(order_id=o.order_id, order_no=no, duplicate=False))))
        logs.hot("order_received", order_no=no, order_id=o.order_id, client_id=cid, symbol=o.symbol,
                 side=o.side, qty=o.qty, price=o.price, latency_us=(recv_ns - o.tick_ts_ns) // 1000,
                 msg=f"Received Order {no}: {o.side} {o.qty} {o.symbol} @ {o.price:.2f}")

    def _commit(self) -> None:
        """Group commit: journal first, then the log lines, then the acks."""
        self.journal.commit()
        if self.acks:
            logs.flush()
            out: dict[Conn, bytearray] = {}
            for conn, ack in self.acks:
                out.setdefault(conn, bytearray()).extend(ack)
            self.acks.clear()
            for conn, acks in out.items():
                conn.write(acks)

    def step(self) -> None:
        # Read first, then judge silence: after a long deschedule the peers'
        # heartbeats are waiting unread, and the link is alive.
        self.loop.run_once(max(0.0, self.next_housekeeping - time.monotonic()))
        self._commit()
        now = time.monotonic()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + min(0.05, self.hb_s / 4)
            self.server.poll(now)
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
                elif conn.quiet_for(now) >= self.hb_s:
                    conn.write(frame(Heartbeat(ts_ns=time.time_ns())))

    def shutdown(self, deadline: float) -> None:
        self.server.close()  # stop intake
        self._commit()  # drain: journal and ack what was accepted
        for conn in list(self.conns):
            conn.flush_blocking(deadline)
            conn.close("shutdown")
        self.journal.close()
