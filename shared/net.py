"""Non-blocking framed connections over one selector: servers, reconnecting
clients and heartbeats. Every daemon runs a single-threaded loop of these.
"""

from __future__ import annotations

import errno
import os
import random
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from shared.protocol import BadFrame, BadMessage, FrameDecoder, Heartbeat, Hello, Reject

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
RECV_SIZE = 1 << 16  # above 128 KiB, glibc maps and unmaps each read's buffer: ~10 µs a read
# "Try again later": a plain socket's, and TLS's (a record not complete yet, or the handshake's turn).
AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
CONNECT_TIMEOUT_S = 1.0


class Loop:
    """A selector whose keys carry their event callbacks."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()

    def add(self, fileobj: Any, callback: Callable[[int], None], events: int = READ) -> None:
        self.sel.register(fileobj, events, callback)

    def modify(self, fileobj: Any, callback: Callable[[int], None], events: int) -> None:
        self.sel.modify(fileobj, events, callback)

    def remove(self, fileobj: Any) -> None:
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds and dispatch what is ready."""
        for key, mask in self.sel.select(max(timeout, 0.0)):
            key.data(mask)


def tune(sock: socket.socket) -> None:
    """Non-blocking with TCP_NODELAY: a frame goes out in one write, now."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Conn:
    """One framed connection: decoder in, a bounded-by-owner buffer out.

    ``on_message(conn, msg)`` gets every message, and ``BadMessage`` /
    ``BadFrame`` errors in place (after the ``bad_frame`` log line);
    ``on_close(conn, reason)`` runs exactly once.
    """

    ready = True  # a TlsConn is not until its handshake is done

    def __init__(
        self,
        loop: Loop,
        log: Any,
        sock: socket.socket,
        peer: str,
        stream: str,
        on_message: Callable[[Conn, Any], None],
        on_close: Callable[[Conn, str], None],
        decoder: Any = None,
    ) -> None:
        self.loop, self.sock, self.peer, self.stream = loop, sock, peer, stream
        self.log = log
        self.on_message, self.on_close = on_message, on_close
        self.decoder = FrameDecoder(decoder)
        self.recv_size = RECV_SIZE  # an owner that must stay fair between its peers reads less per turn
        self.out = bytearray()
        self.last_rx = self.last_tx = self.opened = time.monotonic()
        self.closed = False
        self.state: Any = None  # the owner's per-connection data
        loop.add(sock, self._on_event)

    def _on_event(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if mask & READ and not self.closed:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(self.recv_size)
        except AGAIN:
            return
        except OSError as e:
            self.close(f"error: {e.strerror or e}")
            return
        if not data:
            self.close("eof")
            return
        self.last_rx = time.monotonic()
        bad: BadFrame | None = None
        try:
            msgs = self.decoder.feed(data)
        except BadFrame as e:  # the frames before it in this read are still answered
            msgs, bad = e.messages, e
        for m in msgs:
            if type(m) is BadMessage:
                self.log.warning("bad_frame", peer=self.peer, stream=self.stream, reason=m.detail)
            self.on_message(self, m)
            if self.closed:
                return
        if bad is not None:
            self.log.warning("bad_frame", peer=self.peer, stream=self.stream, reason=str(bad))
            self.on_message(self, bad)
            self.close("bad_frame")

    def write(self, data: bytes | bytearray) -> None:
        """Send now if the socket takes it; queue the rest."""
        if self.closed:
            return
        if self.out:
            self.out += data
            return
        try:
            n = self.sock.send(data)
        except AGAIN:
            n = 0
        except OSError as e:
            self.close(f"error: {e.strerror or e}")
            return
        self.last_tx = time.monotonic()
        if n < len(data):
            self.out += data[n:]
            self.loop.modify(self.sock, self._on_event, READ | WRITE)

    def _flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except AGAIN:
            return
        except OSError as e:
            self.close(f"error: {e.strerror or e}")
            return
        del self.out[:n]
        self.last_tx = time.monotonic()
        if not self.out:
            self.loop.modify(self.sock, self._on_event, READ)

    def flush_blocking(self, deadline: float) -> None:
        """Try to send what is queued until the deadline (used at shutdown)."""
        while self.out and not self.closed and time.monotonic() < deadline:
            self._flush()
            if self.out:
                time.sleep(0.001)

    def close(self, reason: str) -> None:
        """Close once and tell the owner why."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_close(self, reason)

    def idle_for(self, now: float) -> float:
        """Seconds since anything was received."""
        return now - self.last_rx

    def quiet_for(self, now: float) -> float:
        """Seconds since anything was sent."""
        return now - self.last_tx


class Server:
    """A listening socket; binds with retries so a held port heals itself."""

    def __init__(self, loop: Loop, log: Any, host: str, port: int, stream: str,
                 on_accept: Callable[[socket.socket, str], None], tls: ssl.SSLContext | None = None) -> None:
        self.loop, self.log, self.host, self.port, self.stream = loop, log, host, port, stream
        self.on_accept = on_accept
        self.tls = tls  # accepted sockets are wrapped; shared.tls.connection makes their Conn
        self.sock: socket.socket | None = None
        self.retry = Retry(log, "bind_failed", "error", stream=stream, port=port)

    def poll(self, now: float) -> None:
        """Bind if not bound yet and it is time to try."""
        if self.sock is not None or not self.retry.due(now):
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
            s.listen(1024)
        except OSError as e:
            s.close()
            self.retry.failed(now, e.strerror or str(e))
            return
        self.retry.succeeded()
        s.setblocking(False)
        self.sock = s
        self.loop.add(s, self._on_event)
        self.log.info("listening", stream=self.stream, host=self.host, port=self.port, tls=self.tls is not None)

    def _on_event(self, _mask: int) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log and keep serving
                self.log.error("accept_failed", stream=self.stream, error=e.strerror or str(e))
                return
            tune(sock)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            self.on_accept(sock, f"{addr[0]}:{addr[1]}")

    def close(self) -> None:
        """Stop intake."""
        if self.sock is not None:
            self.loop.remove(self.sock)
            self.sock.close()
            self.sock = None


def backoff(attempt: int, base: float = 0.05, cap: float = 1.0) -> float:
    """Capped exponential backoff with jitter: in [d/2, d], d = min(cap, base * 2^(attempt-1))."""
    d = min(cap, base * (2 ** min(attempt - 1, 30)))
    return d * (0.5 + random.random() / 2)


class Retry:
    """When to try again after a failure: the backoff above, each failure logged
    as ``event`` with its attempt, delay and error (a held port, a segment not
    there yet)."""

    def __init__(self, log: Any, event: str, level: str = "warning", **fields: Any) -> None:
        self.log, self.event, self.level, self.fields = log, event, level, fields
        self.attempt = 0
        self.next_at = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float, error: str, event: str | None = None, **extra: Any) -> None:
        """Log this failure (as ``event``, by default the schedule's own, with ``extra`` fields) and back off."""
        self.attempt += 1
        delay = backoff(self.attempt)
        self.next_at = now + delay
        getattr(self.log, self.level)(event or self.event, **self.fields, **extra, attempt=self.attempt,
                                      delay_ms=round(delay * 1000), error=error)

    def succeeded(self) -> None:
        self.attempt = 0


def read_token(path: os.PathLike[str] | str, retry: Retry, now: float) -> bytes:
    """The token in ``path`` when ``retry`` says it is time to try; b"" while the file is missing,
    unreadable or empty (each failure logged by ``retry``, which backs off)."""
    if not retry.due(now):
        return b""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip().encode()
        if not token:
            raise ValueError("the file is empty")
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        retry.failed(now, getattr(e, "strerror", None) or str(e))
        return b""
    if retry.attempt:
        retry.log.info("token_read", **retry.fields)
    retry.succeeded()
    return token


class Client:
    """A client connection that reconnects by itself, logging every attempt.

    The owner calls ``poll(now)`` every turn; ``on_connect(conn)`` runs on
    every (re)connection, ``on_message`` as for ``Conn``. Connecting never
    blocks the loop (a peer behind a downed link must not stall the others);
    shared.tls.TlsClient adds a handshake before the link is up. A connection that
    closes before anything was heard on it counts as a failed attempt: the
    backoff goes on (a peer refusing us is not hammered).
    """

    def __init__(self, loop: Loop, log: Any, host: str, port: int, stream: str,
                 on_connect: Callable[[Conn], None], on_message: Callable[[Conn, Any], None],
                 on_disconnect: Callable[[str], None] | None = None, decoder: Any = None,
                 cap_s: float = 1.0) -> None:
        self.loop, self.log, self.host, self.port, self.stream = loop, log, host, port, stream
        self.peer = f"{host}:{port}"
        self.on_connect, self.on_message, self.on_disconnect = on_connect, on_message, on_disconnect
        self.decoder = decoder
        self.cap_s = cap_s
        self.conn: Conn | None = None
        self.connecting: socket.socket | None = None  # a connect in flight
        self.connect_deadline = 0.0
        self.attempt = 0
        self.next_try = 0.0
        self.down_since: float | None = None  # set once a connection was lost
        self.down_before: float | None = None  # down_since before the current connection came up
        self.enabled = True
        self.hold_until = 0.0  # the owner's own backoff (a refused logon)

    def poll(self, now: float) -> None:
        """Connect when disconnected and the backoff allows; give up a connect past its timeout."""
        if self.connecting is not None:
            if now > self.connect_deadline:
                self._abandon(now, "timed out")
        elif self.conn is None and self.enabled and now >= self.next_try and now >= self.hold_until:
            self._try(now)

    def hold_off(self, seconds: float) -> None:
        """Make no new connection for ``seconds`` (the peer refused us)."""
        self.hold_until = time.monotonic() + seconds

    def _try(self, now: float) -> None:
        self.attempt += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            err = sock.connect_ex((self.host, self.port))
        except OSError as e:  # the name does not resolve, and the like
            sock.close()
            self._failed(now, e.strerror or str(e))
            return
        if err == 0:
            self._established(sock)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.connecting, self.connect_deadline = sock, now + CONNECT_TIMEOUT_S
            self.loop.add(sock, self._on_connect_event, WRITE)
        else:
            sock.close()
            self._failed(now, os.strerror(err))

    def _on_connect_event(self, _mask: int) -> None:
        sock, self.connecting = self.connecting, None
        assert sock is not None
        self.loop.remove(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._failed(time.monotonic(), os.strerror(err))
        else:
            self._established(sock)

    def _abandon(self, now: float, error: str) -> None:
        sock, self.connecting = self.connecting, None
        if sock is not None:
            self.loop.remove(sock)
            sock.close()
            self._failed(now, error)

    def _failed(self, now: float, error: str) -> None:
        delay = backoff(self.attempt, cap=self.cap_s)
        self.next_try = now + delay
        self.log.warning("reconnect_attempt", peer=self.peer, stream=self.stream, attempt=self.attempt,
                         delay_ms=round(delay * 1000), error=error)

    def _established(self, sock: socket.socket) -> None:
        tune(sock)
        self._up(Conn(self.loop, self.log, sock, self.peer, self.stream, self.on_message, self._closed, self.decoder))

    def _up(self, conn: Conn) -> None:
        self.conn = conn
        self.log.info("connected", peer=self.peer, stream=self.stream)
        if self.down_since is not None:
            self.log.info("reconnected", peer=self.peer, stream=self.stream, attempts=self.attempt,
                          down_ms=round((time.monotonic() - self.down_since) * 1000, 3))
        self.down_before, self.down_since = self.down_since, None
        self.on_connect(conn)

    def _closed(self, conn: Conn, reason: str) -> None:
        self.conn = None
        now = time.monotonic()
        if not getattr(conn, "ready", True):  # the TLS handshake failed (logged as tls_refused)
            self._failed(now, reason)
        elif conn.last_rx > conn.opened:  # a good connection was lost
            self.attempt = 0
            self.down_since = self.next_try = now  # the first retry is immediate, then the backoff
        else:  # up, but closed before a word: refused after connect, or the peer died at once
            self.down_since = self.down_before if self.down_before is not None else now
            self.next_try = now + backoff(self.attempt, cap=self.cap_s)
        if getattr(conn, "ready", True):
            self.log.warning("disconnected", peer=self.peer, stream=self.stream, reason=reason)
            if self.on_disconnect is not None:
                self.on_disconnect(reason)

    def refuse(self, reason: str) -> None:
        """The peer refused us (a reject): drop the link and keep backing off, do not hammer it."""
        if self.conn is not None:
            self.conn.opened = self.conn.last_rx  # nothing good was heard on it
            self.conn.close(reason)

    def check_alive(self, now: float, timeout_s: float) -> None:
        """Close a connection that has been silent past ``timeout_s``."""
        if self.conn is not None and self.conn.idle_for(now) > timeout_s:
            self.conn.close("heartbeat_timeout")

    def close(self) -> None:
        self.enabled = False
        if self.connecting is not None:
            self.loop.remove(self.connecting)
            self.connecting.close()
            self.connecting = None
        if self.conn is not None:
            self.conn.close("shutdown")


class Sequence:
    """A subscriber's view of one gateway stream: the session, and the next
    seq due. ``hello`` (re)starts it; data must follow contiguously from
    ``next_seq``; a heartbeat's seq tells of data that never came."""

    def __init__(self, log: Any, stream: str, heartbeat_ms: int) -> None:
        self.log, self.stream = log, stream
        self.session: str | None = None
        self.expected: int | None = None
        self.timeout_s = 3 * heartbeat_ms / 1000  # silence that means a dead peer

    def reset(self) -> None:
        """A new connection: nothing is expected until its hello."""
        self.expected = None

    def hello(self, session: str, next_seq: int, heartbeat_ms: int) -> None:
        if session != self.session:
            self.log.info("session", stream=self.stream, session=session, previous=self.session)
            self.session = session
        self.expected = next_seq
        self.timeout_s = 3 * heartbeat_ms / 1000

    def data(self, seq: int) -> None:
        """A live data frame (not a snapshot)."""
        if self.expected is not None and seq != self.expected:
            self.log.warning("gap_detected", stream=self.stream, expected=self.expected, got=seq,
                             session=self.session)
        self.expected = seq + 1

    def heartbeat(self, seq: int | None) -> None:
        if seq is not None and self.expected is not None and seq >= self.expected:
            self.log.warning("gap_detected", stream=self.stream, expected=self.expected, got=seq + 1,
                             session=self.session)
            self.expected = seq + 1

    def control(self, client: Client, conn: Conn, msg: Any) -> None:
        """A frame of the stream that carries no tick: hello, heartbeat, or the subscription refused."""
        t = type(msg)
        if t is Hello:
            self.hello(msg.session, msg.next_seq, msg.heartbeat_ms)
        elif t is Heartbeat:
            self.heartbeat(msg.seq)
        elif t is Reject:
            self.log.warning("subscription_refused", peer=conn.peer, stream=self.stream, reason=msg.reason,
                             detail=msg.detail)
            client.refuse(msg.reason)
