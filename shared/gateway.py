"""The gateway: a seeded random walk of prices and a news feed, served to
every subscriber of two TCP streams (contract §4).

Ticks are made on a schedule (or as fast as possible with rate 0), encoded
once per batch and written to every subscriber in one write per turn. A
subscriber whose unsent backlog passes the bound is dropped, never waited for.
"""

from __future__ import annotations

import csv
import functools
import hmac
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from shared import config as config_mod
from shared.net import Conn, Loop, Server
from shared.protocol import PROTO, Heartbeat, Hello, News, Price, Reject, Subscribe, append_frame, frame

MAX_BATCH = 4096  # ticks made in one turn; a process frozen for long does not burst
FAST_BATCH = 256  # ticks a turn at rate 0
SUBSCRIBE_TIMEOUT_S = 2.0  # with a token required: time for a subscriber's first frame


class RandomWalk:
    """A random walk in cents over the symbols, round robin, seeded: each
    tick moves one symbol's price a cent up or down."""

    def __init__(self, symbols: tuple[str, ...], rng: random.Random) -> None:
        self.symbols = symbols
        self.rng = rng
        self.cents = [rng.randrange(5_000, 30_000) for _ in symbols]
        self.i = -1

    def __call__(self) -> tuple[str, float]:
        self.i = i = (self.i + 1) % len(self.symbols)
        c = self.cents[i] + (1 if self.rng.random() < 0.5 else -1)
        self.cents[i] = c = max(c, 1)
        return self.symbols[i], c / 100


class Replay:
    """Ticks replayed from a CSV of ``symbol,price`` rows, over and over."""

    def __init__(self, path: str, symbols: tuple[str, ...]) -> None:
        with open(path, newline="") as f:
            self.rows = [(r[0], float(r[1])) for r in csv.reader(f) if r and r[0] in symbols]
        if not self.rows:
            raise ValueError(f"{path}: no rows for the configured symbols")
        self.i = -1

    def __call__(self) -> tuple[str, float]:
        self.i = (self.i + 1) % len(self.rows)
        return self.rows[self.i]


class Stream:
    """One served stream: its subscribers, its seq and its schedule."""

    def __init__(self, name: Literal["price", "news"], rate: float, make: Callable[[int, bytearray], None]) -> None:
        self.name = name
        self.rate = rate
        self.make = make  # (seq, batch): appends the tick's frame
        self.seq = 0
        self.subs: set[Conn] = set()
        self.t0 = time.monotonic()
        self.made = 0
        self.server: Server | None = None

    def due(self, now: float) -> int:
        """How many ticks to make this turn."""
        if self.rate <= 0:
            return FAST_BATCH
        n = int((now - self.t0) * self.rate) - self.made
        if n > MAX_BATCH:  # we were frozen or starved: re-anchor, do not burst
            self.t0 = now - self.made / self.rate
            n = MAX_BATCH
        return n

    def wait(self, now: float) -> float:
        """Seconds until the next tick is due."""
        if self.rate <= 0:
            return 0.0
        return self.t0 + (self.made + 1) / self.rate - now


class Gateway:
    """The gateway component: two servers, two feeds."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        g = cfg.gateway
        self.cfg, self.log = cfg, log
        self.loop = Loop()
        self.session = uuid.uuid4().hex[:16]
        self.hb_s = g.heartbeat_ms / 1000
        self.backlog = g.backlog_bytes
        rng = random.Random(g.seed or None)
        self.walk: Callable[[], tuple[str, float]] = (
            Replay(str(cfg.resolve(g.replay)), cfg.symbols) if g.replay else RandomWalk(cfg.symbols, rng)
        )
        self.news_rng = random.Random(rng.random())
        self.last: dict[str, tuple[int, int, float]] = {}  # symbol -> (seq, ts_ns, price) of its latest tick
        self.price = Stream("price", g.price_rate, self._price)
        self.news = Stream("news", g.news_rate, self._news)
        for st, port in ((self.price, g.price_port), (self.news, g.news_port)):
            st.server = Server(self.loop, log, g.host, port, st.name, functools.partial(self._accept, st))
        self.next_housekeeping = 0.0
        self.token = read_token(cfg, log)
        self.waiting: dict[Conn, float] = {}  # accepted, no good subscribe frame yet -> since

    def _price(self, seq: int, out: bytearray) -> None:
        sym, px = self.walk()
        ts = time.time_ns()
        self.last[sym] = (seq, ts, px)
        append_frame(out, Price(seq=seq, ts_ns=ts, symbol=sym, price=px))

    def _news(self, seq: int, out: bytearray) -> None:
        r = self.news_rng
        sym = self.cfg.symbols[r.randrange(len(self.cfg.symbols))]
        append_frame(out, News(seq=seq, ts_ns=time.time_ns(), symbol=sym, sentiment=r.randint(0, 100)))

    def _accept(self, st: Stream, sock: Any, peer: str) -> None:
        conn = Conn(self.loop, self.log, sock, peer, st.name, functools.partial(self._on_message, st),
                    lambda c, r: self._closed(st, c, r))
        if self.token is None:
            self._welcome(st, conn)
        else:
            self.waiting[conn] = time.monotonic()

    def _welcome(self, st: Stream, conn: Conn) -> None:
        """Hello, the snapshot on the price stream, then live frames."""
        hello = Hello(proto=PROTO, stream=st.name, session=self.session, symbols=list(self.cfg.symbols),
                      heartbeat_ms=self.cfg.gateway.heartbeat_ms, next_seq=st.seq + 1)
        out = bytearray(frame(hello))
        if st is self.price:
            for sym, (seq, ts, px) in self.last.items():
                out += frame(Price(seq=seq, ts_ns=ts, symbol=sym, price=px, snapshot=True))
        conn.write(out)
        if not conn.closed:
            st.subs.add(conn)
            self.log.info("connected", peer=conn.peer, stream=st.name, next_seq=st.seq + 1)

    def _on_message(self, st: Stream, conn: Conn, msg: Any) -> None:
        """Only a subscribe frame means anything, and only while one is awaited;
        bad frames are already logged."""
        if conn not in self.waiting:
            return
        if type(msg) is Subscribe and self.token is not None and hmac.compare_digest(msg.token.encode(), self.token):
            del self.waiting[conn]
            self._welcome(st, conn)
        else:
            self._refuse(conn, "bad subscription token" if type(msg) is Subscribe else "subscribe frame expected")

    def _refuse(self, conn: Conn, detail: str) -> None:
        self.waiting.pop(conn, None)
        self.log.warning("subscription_refused", peer=conn.peer, stream=conn.stream, reason="unauthorized",
                         detail=detail)
        conn.write(frame(Reject(order_id=None, reason="unauthorized", detail=detail)))
        conn.flush_blocking(time.monotonic() + 0.05)
        conn.close("unauthorized")

    def _closed(self, st: Stream, conn: Conn, reason: str) -> None:
        self.waiting.pop(conn, None)
        st.subs.discard(conn)
        self.log.warning("disconnected", peer=conn.peer, stream=st.name, reason=reason)

    def _publish(self, st: Stream, now: float) -> None:
        n = st.due(now)
        if n <= 0:
            return
        batch = bytearray()
        seq = st.seq
        make = st.make
        for _ in range(n):
            seq += 1
            make(seq, batch)
        st.seq = seq
        st.made += n
        for conn in list(st.subs):
            conn.write(batch)
            if len(conn.out) > self.backlog:
                conn.close("slow_consumer")

    def step(self) -> None:
        now = time.monotonic()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + min(0.05, self.hb_s / 4)
            for st in (self.price, self.news):
                assert st.server is not None
                st.server.poll(now)
                for conn in list(st.subs):
                    if conn.quiet_for(now) >= self.hb_s:
                        conn.write(frame(Heartbeat(ts_ns=time.time_ns(), seq=st.seq)))
            for conn, since in list(self.waiting.items()):
                if now - since > SUBSCRIBE_TIMEOUT_S:
                    self._refuse(conn, f"no subscribe frame in {SUBSCRIBE_TIMEOUT_S:g} s")
        self._publish(self.news, now)  # first: what a strategy trades on wakes it before the orderbook
        self._publish(self.price, now)
        wait = min(self.price.wait(now), self.news.wait(now), self.next_housekeeping - now)
        self.loop.run_once(max(wait, 0.0))

    def shutdown(self, deadline: float) -> None:
        for st in (self.price, self.news):
            assert st.server is not None
            st.server.close()
        for conn in list(self.waiting):
            conn.close("shutdown")
        for st in (self.price, self.news):
            for conn in list(st.subs):
                conn.flush_blocking(deadline)
                conn.close("shutdown")


def read_token(cfg: config_mod.Config, log: Any) -> bytes | None:
    """The market-data subscription token (``gateway.token_file``), or None when none is required."""
    if not cfg.gateway.token_file:
        return None
    path = cfg.resolve(cfg.gateway.token_file)
    try:
        token = path.read_text().strip().encode()
    except OSError as e:
        log.error("token_unreadable", path=str(path), error=str(e))
        raise SystemExit(2) from None
    if not token:
        log.error("token_unreadable", path=str(path), error="empty")
        raise SystemExit(2)
    return token
