"""Bare loopback processes that speak the stack's frames without the stack:
the bench's references (a two-hop chain, a raw stream, an ack server) and
its order-entry load clients.

Every role runs in its own spawned interpreter, so each hop costs what a
hop between two daemons costs; results come back over a pipe.
"""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from shared.protocol import PROTO, Ack, FrameDecoder, Heartbeat, Logon, LogonAck, News, Order, Price, Reject, frame

_ctx = multiprocessing.get_context("spawn")
_LEN = struct.Struct(">I")
JOIN_S = 30.0  # the longest a role may take to report once its work is done
FLOOR_RECV = 1 << 16  # bytes a read asks for


def _listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=JOIN_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _accept(ls: socket.socket) -> socket.socket:
    ls.settimeout(JOIN_S)
    s, _ = ls.accept()
    s.settimeout(JOIN_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Roles:
    """Spawned role processes; ``close()`` ends any still running."""

    def __init__(self) -> None:
        self.procs: list[Any] = []

    def spawn(self, target: Callable[..., None], *args: Any) -> Connection:
        """Start ``target(pipe, *args)`` in a new interpreter; our end of the pipe."""
        ours, theirs = _ctx.Pipe()
        p = _ctx.Process(target=target, args=(theirs, *args), daemon=True)
        p.start()
        theirs.close()
        self.procs.append(p)
        return ours

    def close(self) -> None:
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def __enter__(self) -> Roles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _recv(pipe: Connection, timeout: float = JOIN_S) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError("a loopback role did not report")
    return pipe.recv()


# --- the latency chain: source -> [relay ->] sink ----------------------------
# The leanest chain we can write, so that it is a floor: blocking sockets, one
# process a hop, the same frames decoded and encoded with msgspec, and nothing
# else: a 64 KiB read (a larger one costs glibc an mmap and a munmap each time),
# framing by hand, one Encoder and one Decoder.


def _tick(kind: str, seq: int) -> bytes:
    """A news or price frame stamped now, as the gateway makes them."""
    if kind == "news":
        return frame(News(seq=seq, ts_ns=time.time_ns(), symbol="AAPL", sentiment=seq % 101))
    return frame(Price(seq=seq, ts_ns=time.time_ns(), symbol="AAPL", price=100.0 + seq % 7))


def _source(pipe: Connection, port: int, kind: str, rate: float, count: int) -> None:
    """Send ``count`` ticks at ``rate``; what is due at once goes in one write."""
    s = _connect(port)
    time.sleep(0.2)  # let the far end settle before the clock starts
    t0, made = time.monotonic(), 0
    while made < count:
        due = min(count, int((time.monotonic() - t0) * rate)) - made
        if due > 0:
            s.sendall(b"".join(_tick(kind, made + i + 1) for i in range(due)))
            made += due
        else:
            time.sleep(max(0.0, t0 + (made + 1) / rate - time.monotonic()))
    s.close()
    pipe.send(made)


def _frames(s: socket.socket) -> Any:
    """Each frame body read from ``s``, until EOF."""
    buf = b""
    unpack = _LEN.unpack_from
    while data := s.recv(FLOOR_RECV):
        buf = buf + data if buf else data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            n = unpack(buf, pos)[0]
            if end - pos - 4 < n:
                break
            yield buf[pos + 4 : pos + 4 + n]
            pos += 4 + n
        buf = buf[pos:]


def _relay(pipe: Connection, sink_port: int) -> None:
    """The bare strategy: decode each news frame, encode and send one order frame for it."""
    out = _connect(sink_port)
    ls = _listen()
    pipe.send(ls.getsockname()[1])
    s = _accept(ls)
    dec, enc, pack = msgspec.json.Decoder(News), msgspec.json.Encoder(), _LEN.pack
    n = 0
    for body in _frames(s):
        m = dec.decode(body)
        n += 1
        b = enc.encode(Order(order_id=f"floor-{n}", symbol=m.symbol, side="BUY", qty=10, price=100.0,
                             ts_ns=time.time_ns(), tick_ts_ns=m.ts_ns))
        out.sendall(pack(len(b)) + b)
    out.close()
    pipe.send(n)


def _sink(pipe: Connection) -> None:
    """Decode each frame until EOF; its latency: now - the tick's time."""
    ls = _listen()
    pipe.send(ls.getsockname()[1])
    s = _accept(ls)
    dec = msgspec.json.Decoder(Order | News | Price)
    lat: list[int] = []
    for body in _frames(s):
        m = dec.decode(body)
        lat.append(time.time_ns() - (m.tick_ts_ns if type(m) is Order else m.ts_ns))
    pipe.send(lat)


def chain(hops: int, kind: str, rate: float, count: int) -> list[int]:
    """Latencies (ns) of ``count`` ticks sent at ``rate`` through 1 or 2 bare hops
    (2 hops of news: the tick-to-trade floor)."""
    with Roles() as roles:
        sink = roles.spawn(_sink)
        port = _recv(sink)
        if hops == 2:
            relay = roles.spawn(_relay, port)
            port = _recv(relay)
        source = roles.spawn(_source, port, kind, rate, count)
        _recv(source, JOIN_S + count / rate)
        return _recv(sink)


# --- the raw stream: a sender blasting prebuilt frames, a counting receiver --


def _blast(pipe: Connection, port: int, seconds: float) -> None:
    s = _connect(port)
    batch = b"".join(_tick("price", i + 1) for i in range(256))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(batch)
    s.close()
    pipe.send(True)


def _count(pipe: Connection) -> None:
    """Count whole frames by walking the length prefixes, first byte to EOF."""
    ls = _listen()
    pipe.send(ls.getsockname()[1])
    s = _accept(ls)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    have = frames = 0
    t0 = 0.0
    unpack = _LEN.unpack_from
    while n := s.recv_into(view[have:]):
        t0 = t0 or time.monotonic()
        have += n
        pos = 0
        while have - pos >= 4:
            size = unpack(buf, pos)[0]
            if have - pos - 4 < size:
                break
            pos += 4 + size
            frames += 1
        buf[: have - pos] = buf[pos:have]
        have -= pos
    pipe.send((frames, time.monotonic() - t0))


def raw_stream(seconds: float) -> float:
    """Frames/s of a bare framed one-way loopback stream."""
    with Roles() as roles:
        counter = roles.spawn(_count)
        sender = roles.spawn(_blast, _recv(counter), seconds)
        _recv(sender, JOIN_S + seconds)
        frames, elapsed = _recv(counter)
        return frames / elapsed


# --- order entry: pipelining clients and a bare ack server ------------------


def _ack_server(pipe: Connection) -> None:
    """Ack every order at once: no journal, no log. Stops when the pipe speaks."""
    ls = _listen()
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    sel.register(pipe, selectors.EVENT_READ, "stop")
    decoder = msgspec.json.Decoder(Logon | Order | Heartbeat)
    pipe.send(ls.getsockname()[1])
    no = 0
    while True:
        for key, _ in sel.select():
            if key.data == "stop":
                return
            if key.data is None:
                s, _ = ls.accept()
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(s, selectors.EVENT_READ, FrameDecoder(decoder))
                continue
            s = key.fileobj  # type: ignore[assignment]
            data = s.recv(1 << 18)
            if not data:
                sel.unregister(s)
                s.close()
                continue
            out = bytearray()
            for m in key.data.feed(data):
                if type(m) is Order:
                    no += 1
                    out += frame(Ack(order_id=m.order_id, order_no=no, duplicate=False))
                elif type(m) is Logon:
                    out += frame(LogonAck(session="bare", heartbeat_ms=250, positions={}, last_order_id=None,
                                          open_orders=[]))
            if out:
                s.sendall(out)


def _order_client(pipe: Connection, port: int, token: str, client_id: str, symbol: str, seconds: float,
                  window: int, go: Any) -> None:
    """Log on, then keep ``window`` orders outstanding for ``seconds``; report acks and times."""
    s = _connect(port)
    dec = FrameDecoder(msgspec.json.Decoder(Ack | Reject | LogonAck | Heartbeat))
    s.sendall(frame(Logon(proto=PROTO, client_id=client_id, token=token)))
    while True:
        data = s.recv(1 << 16)
        if not data:
            raise ConnectionError(f"{client_id}: logon refused")
        if any(type(m) is LogonAck for m in dec.feed(data)):
            break
    pipe.send("ready")
    while not go.wait(0.1):  # the others are still logging on: stay alive
        s.sendall(frame(Heartbeat(ts_ns=time.time_ns())))
    n = acked = rejected = 0

    def orders(k: int) -> bytes:
        nonlocal n
        out = bytearray()
        for _ in range(k):
            n += 1
            now = time.time_ns()
            out += frame(Order(order_id=f"{client_id}-{n}", symbol=symbol, side="BUY" if n & 1 else "SELL",
                               qty=1, price=100.0, ts_ns=now, tick_ts_ns=now))
        return bytes(out)

    t0 = time.monotonic()
    end = t0 + seconds
    s.sendall(orders(window))
    outstanding = window
    while outstanding:
        data = s.recv(1 << 18)
        if not data:
            break
        k = 0
        for m in dec.feed(data):
            if type(m) is Ack:
                k += 1
                acked += 1
            elif type(m) is Reject:
                k += 1
                rejected += 1
        outstanding -= k
        if k and time.monotonic() < end:
            s.sendall(orders(k))
            outstanding += k
    t1 = time.monotonic()
    s.close()
    pipe.send({"acked": acked, "rejected": rejected, "t0": t0, "t1": t1})


def order_load(port: int, token: str, symbol: str, seconds: float, clients: int = 4,
               window: int = 256, prefix: str = "bench") -> dict[str, Any]:
    """Orders/s acked for ``clients`` pipelining clients over ``seconds``."""
    with Roles() as roles:
        go = _ctx.Event()
        pipes = [roles.spawn(_order_client, port, token, f"{prefix}-{i + 1}", symbol, seconds, window, go)
                 for i in range(clients)]
        for p in pipes:
            _recv(p)
        go.set()
        res = [_recv(p, JOIN_S + seconds) for p in pipes]
    acked = sum(r["acked"] for r in res)
    elapsed = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    return {"acked": acked, "rejected": sum(r["rejected"] for r in res), "rate": acked / elapsed}


def bare_order_load(seconds: float, clients: int = 4, window: int = 256) -> float:
    """Orders/s the same clients get from the bare ack server."""
    with Roles() as roles:
        server = roles.spawn(_ack_server)
        port = _recv(server)
        try:
            return order_load(port, "-", "AAPL", seconds, clients, window)["rate"]
        finally:
            server.send("stop")
