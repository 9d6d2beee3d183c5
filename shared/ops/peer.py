"""Blocking peers that speak only the contract: a stream subscriber, an
order-entry client and the ordermanager's side of the venue link. Tests, the
bench and the operator's tools use them.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Self

from shared.protocol import (
    PROTO,
    Cancel,
    Exec,
    FrameDecoder,
    Heartbeat,
    Logon,
    LogonAck,
    Message,
    Order,
    Reject,
    Route,
    frame,
)


class Peer:
    """A blocking framed TCP connection."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:  # order entry off loopback: the handshake, blocking
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.decoder = FrameDecoder()
        self.inbox: list[Any] = []

    def send(self, msg: Message) -> None:
        self.sock.sendall(frame(msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> Any:
        """The next message (or BadMessage); raises TimeoutError, EOFError."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError("no message") from None
            if not data:
                raise EOFError("peer closed")
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    def recv_type(self, *types: type, timeout: float = 5.0) -> Any:
        """The next message of one of ``types``, skipping others (heartbeats)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.0, deadline - time.monotonic()))
            if isinstance(m, types):
                return m

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Refused(Exception):
    """The ordermanager (or the venue) answered with a reject."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(f"{reject.reason}: {reject.detail}")
        self.reject = reject


class OrderClient(Peer):
    """An order-entry client: ``logon()``, then ``order(...)``."""

    def logon(self, client_id: str, token: str, instance: str | None = None) -> LogonAck:
        """Log on (as this client process ``instance``, if given); raises Refused on a reject."""
        self.send(Logon(proto=PROTO, client_id=client_id, token=token, instance=instance))
        ack = self.recv_type(LogonAck, Reject)
        if isinstance(ack, Reject):
            raise Refused(ack)
        return ack

    def order(self, order_id: str, symbol: str, side: str, qty: int, price: float,
              tick_ts_ns: int | None = None) -> None:
        now = time.time_ns()
        self.send(Order(order_id=order_id, symbol=symbol, side=side, qty=qty, price=price,  # type: ignore[arg-type]
                        ts_ns=now, tick_ts_ns=tick_ts_ns or now))

    def send_paced(self, orders: Sequence[Order], chunk: int = 50, pause_s: float = 0.005) -> threading.Thread:
        """Send ``orders`` ``chunk`` at a time, ``pause_s`` apart, on a thread (a burst a kill can land in);
        it stops quietly when the link dies. Join the thread returned."""
        def send() -> None:
            for i in range(0, len(orders), chunk):
                try:
                    self.send_raw(b"".join(frame(o) for o in orders[i : i + chunk]))
                except OSError:
                    return
                time.sleep(pause_s)

        t = threading.Thread(target=send)
        t.start()
        return t


class VenueClient(Peer):
    """The ordermanager's side of the venue link (contract §9), blocking: ``logon()``, then
    ``route(...)`` and ``cancel(...)``; ``execs(n)`` collects what the exchange reports."""

    def logon(self, token: str, last_exec_id: int | None = None, client_id: str = "ordermanager") -> LogonAck:
        """Log on as the ordermanager; raises Refused on a reject."""
        self.send(Logon(proto=PROTO, client_id=client_id, token=token, last_exec_id=last_exec_id))
        ack = self.recv_type(LogonAck, Reject)
        if isinstance(ack, Reject):
            raise Refused(ack)
        return ack

    def route(self, order_no: int, client_id: str, order_id: str, symbol: str, side: str, qty: int,
              price: float | None = None, ord_type: str = "limit", tif: str = "day") -> None:
        self.send(Route(order_no=order_no, client_id=client_id, order_id=order_id, symbol=symbol,
                        side=side, qty=qty, price=price, ord_type=ord_type, tif=tif))  # type: ignore[arg-type]

    def cancel(self, client_id: str, order_id: str) -> None:
        self.send(Cancel(order_id=order_id, client_id=client_id))

    def beat(self) -> None:
        """A heartbeat (the exchange drops a link silent for 3 × its heartbeat_ms)."""
        self.send(Heartbeat(ts_ns=time.time_ns()))

    def next(self, *types: type, timeout: float = 10.0) -> Any:
        """The next message of one of ``types``, beating twice a second while it waits."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self.recv_type(*types, timeout=max(0.0, min(left, 0.5)))
            except TimeoutError:
                if left <= 0.5:
                    raise
                self.beat()

    def execs(self, n: int, timeout: float = 10.0) -> list[Exec]:
        """The next ``n`` execs (heartbeats skipped; a reject raises Refused)."""
        out: list[Exec] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            m = self.next(Exec, Reject, timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(m, Reject):
                raise Refused(m)
            out.append(m)
        return out
