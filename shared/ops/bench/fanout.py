"""The fan-out floor of tick-to-trade: one source writing each news frame to N
bare relay processes, each decoding it and writing an order frame to one bare
sink, which timestamps it (issue 17).

It is the stack's news path with nothing but the work every hop must do: the
gateway writes each news frame to every strategy, each strategy decodes it and
sends one order, the ordermanager reads them all. With N = 1 it is the bare
two-hop chain. Each role is its own spawned interpreter (``loopback.Roles``),
with the same frames, msgspec decoders and encoders, and 64 KiB reads.
"""

from __future__ import annotations

import selectors
import socket
import time
from multiprocessing.connection import Connection

import msgspec

from shared.ops.bench.loopback import (
    _LEN,
    FLOOR_RECV,
    JOIN_S,
    Roles,
    _accept,
    _connect,
    _frames,
    _listen,
    _recv,
    _relay,
    _tick,
)
from shared.protocol import Order


def _source(pipe: Connection, ports: list[int], rate: float, count: int) -> None:
    """Make ``count`` news ticks at ``rate``; write each to every relay, in turn."""
    socks = [_connect(p) for p in ports]
    time.sleep(0.2)  # let the far ends settle before the clock starts
    t0, made = time.monotonic(), 0
    while made < count:
        due = min(count, int((time.monotonic() - t0) * rate)) - made
        if due > 0:
            data = b"".join(_tick("news", made + i + 1) for i in range(due))
            for s in socks:
                s.sendall(data)
            made += due
        else:
            time.sleep(max(0.0, t0 + (made + 1) / rate - time.monotonic()))
    for s in socks:
        s.close()
    pipe.send(made)


def _latency(dec: msgspec.json.Decoder[Order], body: bytes) -> int:
    return time.time_ns() - dec.decode(body).tick_ts_ns


def _sink(pipe: Connection, n: int) -> None:
    """Take ``n`` relays' order frames until each is at EOF; the latency of each:
    now - its news tick's time. One relay: a blocking read; more: one epoll loop,
    as the ordermanager has."""
    ls = _listen()
    pipe.send(ls.getsockname()[1])
    socks = [_accept(ls) for _ in range(n)]
    dec = msgspec.json.Decoder(Order)
    lat: list[int] = []
    if n == 1:
        lat = [_latency(dec, body) for body in _frames(socks[0])]
        pipe.send(lat)
        return
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [b""])
    unpack, open_ = _LEN.unpack_from, n
    while open_:
        for key, _ in sel.select(JOIN_S):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data = sock.recv(FLOOR_RECV)
            if not data:
                sel.unregister(sock)
                open_ -= 1
                continue
            held: list[bytes] = key.data
            buf = held[0] + data if held[0] else data
            pos, end = 0, len(buf)
            while end - pos >= 4:
                size = unpack(buf, pos)[0]
                if end - pos - 4 < size:
                    break
                lat.append(_latency(dec, buf[pos + 4 : pos + 4 + size]))
                pos += 4 + size
            held[0] = buf[pos:]
    pipe.send(lat)


def fanout(n: int, rate: float, count: int) -> list[int]:
    """Latencies (ns), news tick to the sink, of ``count`` news ticks at ``rate``
    fanned out to ``n`` bare relays: ``n * count`` orders."""
    with Roles() as roles:
        sink = roles.spawn(_sink, n)
        sink_port = _recv(sink)
        relays = [roles.spawn(_relay, sink_port) for _ in range(n)]
        ports = [_recv(r) for r in relays]
        source = roles.spawn(_source, ports, rate, count)
        _recv(source, JOIN_S + count / rate)
        for r in relays:
            _recv(r)
        return _recv(sink)  # type: ignore[no-any-return]


def label(n: int) -> str:
    """How the table names the floor of ``n`` relays."""
    return "two-hop floor" if n == 1 else f"{n}-relay floor"
