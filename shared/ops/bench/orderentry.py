"""Order entry as an outside client sees it (issue 17): one process, 4
connections each pipelining 25,000 orders, counting the answers by a byte scan.

The orders are encoded before the clock starts and the answers are never
decoded (``bytes.count`` of the ack's and the reject's type tag), so the
client costs next to nothing and the figure is the ordermanager's. It speaks
only the wire protocol, so it measures any commit's stack alike (``--against``).
"""

from __future__ import annotations

import selectors
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from shared.ops.bench.loopback import JOIN_S, Roles, _ack_server, _recv
from shared.protocol import PROTO, Heartbeat, Logon, Order, frame

ACK, REJECT, LOGON_ACK = b'"type":"ack"', b'"type":"reject"', b'"type":"logon_ack"'
CONNS, ORDERS = 4, 25_000  # the client
SEND_CHUNK = 1 << 16
QUIET_S = 0.1  # a connection that has sent all its orders heartbeats while it waits for the answers


class _Scan:
    """Counts a tag in a byte stream cut anywhere: the last ``len(tag) - 1`` bytes carry over."""

    __slots__ = ("tag", "keep", "tail", "count")

    def __init__(self, tag: bytes) -> None:
        self.tag, self.keep, self.tail, self.count = tag, len(tag) - 1, b"", 0

    def feed(self, data: bytes) -> int:
        """Count the tags ``data`` completes; the total so far."""
        buf = self.tail + data
        self.count += buf.count(self.tag)
        self.tail = buf[-self.keep :]
        return self.count


def orders(client_id: str, symbol: str, n: int) -> bytes:
    """``n`` order frames for ``client_id``, alternately buying and selling one lot."""
    now = time.time_ns()
    return b"".join(frame(Order(order_id=f"{client_id}-{i}", symbol=symbol, side="BUY" if i & 1 else "SELL", qty=1,
                                price=100.0, ts_ns=now, tick_ts_ns=now)) for i in range(1, n + 1))


def _logon(host: str, port: int, token: str, client_id: str) -> socket.socket:
    s = socket.create_connection((host, port), timeout=JOIN_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(frame(Logon(proto=PROTO, client_id=client_id, token=token)))
    got = b""
    while LOGON_ACK not in got:
        data = s.recv(1 << 16)
        if not data or REJECT in got + data:
            raise ConnectionError(f"{client_id}: logon refused: {(got + data)[:300]!r}")
        got += data
    s.setblocking(False)
    return s


def _client(pipe: Connection, host: str, port: int, token: str, symbol: str, conns: int, n: int, prefix: str) -> None:
    """Log ``conns`` connections on, then write each one's ``n`` orders while reading the answers."""
    ids = [f"{prefix}-{i + 1}" for i in range(conns)]
    payload = {cid: orders(cid, symbol, n) for cid in ids}  # before the logons: no link sits idle meanwhile
    socks = {_logon(host, port, token, cid): cid for cid in ids}
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}  # sock -> [bytes left to send, offset, acks, rejects]
    for s, cid in socks.items():
        state[s] = [memoryview(payload[cid]), 0, _Scan(ACK), _Scan(REJECT)]
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    t0 = last = time.monotonic()
    deadline = t0 + JOIN_S + n / 1000
    pending = len(socks)
    hb, sent_at = memoryview(frame(Heartbeat(ts_ns=0))), dict.fromkeys(socks, t0)
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        for s, at in sent_at.items():  # as a real client does: a link quiet for 3 heartbeats is dropped
            st = state[s]
            if now - at >= QUIET_S and st[1] == len(st[0]) and s in sel.get_map():
                st[0], st[1], sent_at[s] = hb, 0, now  # sent by the write path below, even if in parts
                sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        for key, ev in sel.select(QUIET_S):
            s = key.fileobj  # type: ignore[assignment]
            st = state[s]
            if ev & selectors.EVENT_WRITE:
                view, off = st[0], st[1]
                try:
                    st[1] = off + s.send(view[off : off + SEND_CHUNK])
                    sent_at[s] = time.monotonic()
                except BlockingIOError:
                    pass
                if st[1] == len(view):
                    sel.modify(s, selectors.EVENT_READ)
            if ev & selectors.EVENT_READ:
                data = s.recv(1 << 18)
                if not data:
                    sel.unregister(s)
                    pending -= 1
                    continue
                last = time.monotonic()
                if st[2].feed(data) + st[3].feed(data) >= n:
                    sel.unregister(s)
                    pending -= 1
    acked = sum(st[2].count for st in state.values())
    rejected = sum(st[3].count for st in state.values())
    for s in socks:
        s.close()
    pipe.send({"acked": acked, "rejected": rejected, "seconds": last - t0, "complete": not pending})


def outside_client(host: str, port: int, token: str, symbol: str, conns: int = CONNS, n: int = ORDERS,
                   prefix: str = "oe") -> dict[str, Any]:
    """Run the client in a process of its own: acks, rejects, seconds (first write to
    last answer), accepted orders/s, and whether every order was answered."""
    with Roles() as roles:
        r: dict[str, Any] = _recv(roles.spawn(_client, host, port, token, symbol, conns, n, prefix),
                                  2 * JOIN_S + conns * n / 1000)
    r["rate"] = r["acked"] / r["seconds"] if r["seconds"] > 0 else 0.0
    return r


def bare_outside(conns: int = CONNS, n: int = ORDERS) -> dict[str, Any]:
    """The same client against the bare ack server (no journal, no log): its reference."""
    with Roles() as roles:
        server = roles.spawn(_ack_server)
        try:
            return outside_client("127.0.0.1", _recv(server), "-", "AAPL", conns, n)
        finally:
            server.send("stop")
