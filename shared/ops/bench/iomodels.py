"""Which I/O model the daemons use, measured: the same relay hop (decode a
tick frame, send an order frame for it, one write per frame as the strategy
does) written with a blocking socket, with our selectors loop
(``shared.net``), with asyncio, and with uvloop when it is installed, each
between the same bare source and sink processes. A blocking socket serves
one peer; the daemons serve several, so the choice is among the other three.

    python -m shared.ops.bench.iomodels      # latency at 200/s, and throughput when blasted
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from shared.net import Conn, Loop, tune
from shared.ops.bench import loopback
from shared.ops.stats import percentile
from shared.protocol import FrameDecoder, News, Order, Price, frame

_decoder = msgspec.json.Decoder(News | Price)


def _order(m: Any, n: int) -> bytes:
    return frame(Order(order_id=f"io-{n}", symbol=m.symbol, side="BUY", qty=10, price=100.0,
                       ts_ns=time.time_ns(), tick_ts_ns=m.ts_ns))


def _accept_one(pipe: Connection) -> socket.socket:
    ls = loopback._listen()
    pipe.send(ls.getsockname()[1])
    return loopback._accept(ls)


def relay_blocking(pipe: Connection, sink_port: int) -> None:
    """One thread, blocking recv and sendall."""
    out = loopback._connect(sink_port)
    s = _accept_one(pipe)
    s.settimeout(None)
    dec, n = FrameDecoder(_decoder), 0
    while data := s.recv(1 << 18):
        for m in dec.feed(data):
            n += 1
            out.sendall(_order(m, n))
    out.close()
    pipe.send(n)


class _NoLog:
    def warning(self, *a: Any, **k: Any) -> None:
        pass


def relay_selectors(pipe: Connection, sink_port: int) -> None:
    """The daemons' model: non-blocking sockets on one selector (shared.net)."""
    loop, done, n = Loop(), [], 0
    out_sock = loopback._connect(sink_port)
    tune(out_sock)
    out = Conn(loop, _NoLog(), out_sock, "sink", "orders", lambda c, m: None, lambda c, r: None)
    s = _accept_one(pipe)
    tune(s)

    def on_message(conn: Conn, m: Any) -> None:
        nonlocal n
        n += 1
        out.write(_order(m, n))

    Conn(loop, _NoLog(), s, "source", "news", on_message, lambda c, r: done.append(r), _decoder)
    while not done:
        loop.run_once(1.0)
    out.flush_blocking(time.monotonic() + 5)
    out_sock.close()
    pipe.send(n)


def relay_asyncio(pipe: Connection, sink_port: int, use_uvloop: bool = False) -> None:
    """asyncio Protocols (callbacks, no streams); uvloop's event loop if asked."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        out, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", sink_port)
        done: asyncio.Future[None] = loop.create_future()
        count = 0

        class Relay(asyncio.Protocol):
            def __init__(self) -> None:
                self.dec = FrameDecoder(_decoder)

            def data_received(self, data: bytes) -> None:
                nonlocal count
                for m in self.dec.feed(data):
                    count += 1
                    out.write(_order(m, count))

            def connection_lost(self, exc: Exception | None) -> None:
                done.set_result(None)

        ls = loopback._listen()
        ls.setblocking(False)
        server = await loop.create_server(Relay, sock=ls)
        pipe.send(ls.getsockname()[1])
        await done
        server.close()
        out.close()
        return count

    if use_uvloop:
        import uvloop

        pipe.send(uvloop.run(main()))
    else:
        pipe.send(asyncio.run(main()))


def relay_uvloop(pipe: Connection, sink_port: int) -> None:
    relay_asyncio(pipe, sink_port, use_uvloop=True)


def measure(relay: Any, rate: float, count: int, blast_s: float) -> dict[str, float]:
    """p50/p99 µs through source -> relay -> sink at ``rate``; frames/s when blasted."""
    with loopback.Roles() as roles:
        sink = roles.spawn(loopback._sink)
        hop = roles.spawn(relay, loopback._recv(sink))
        source = roles.spawn(loopback._source, loopback._recv(hop), "news", rate, count)
        loopback._recv(source, loopback.JOIN_S + count / rate)
        lat = [x / 1e3 for x in loopback._recv(sink)]
    with loopback.Roles() as roles:
        counter = roles.spawn(loopback._count)
        hop = roles.spawn(relay, loopback._recv(counter))
        blaster = roles.spawn(loopback._blast, loopback._recv(hop), blast_s)
        loopback._recv(blaster, loopback.JOIN_S + blast_s)
        frames, elapsed = loopback._recv(counter)
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat), "rate": frames / elapsed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.ops.bench.iomodels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="ticks/s for the latency run")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--blast", type=float, default=3.0, help="seconds of blasting for the throughput run")
    a = ap.parse_args(argv)
    models: list[tuple[str, Any]] = [("blocking socket", relay_blocking), ("selectors (shared.net)", relay_selectors),
                                     ("asyncio Protocol", relay_asyncio)]
    try:
        import uvloop  # noqa: F401

        models.append(("uvloop Protocol", relay_uvloop))
    except ImportError:
        pass
    print(f"| I/O model of the relay hop | p50 µs at {a.rate:g}/s | p99 µs | frames/s blasted |")
    print("|---|---:|---:|---:|")
    for name, relay in models:
        r = measure(relay, a.rate, a.count, a.blast)
        print(f"| {name} | {r['p50']:.0f} | {r['p99']:.0f} | {r['rate']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
