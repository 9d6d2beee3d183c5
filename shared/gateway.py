"""The gateway: a seeded random walk of prices and a news feed, or a tape
played back, served to every subscriber of two TCP streams (contract §4, §10).

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
from shared import lastprices
from shared import tape as tape_mod
from shared.net import Conn, Loop, Server
from shared.protocol import PROTO, Heartbeat, Hello, News, Price, Reject, Subscribe, append_frame, frame

MAX_BATCH = 4096  # ticks made in one turn; a process frozen for long does not burst
FAST_BATCH = 256  # ticks a turn at rate 0
SUBSCRIBE_TIMEOUT_S = 2.0  # with a token required: time for a subscriber's first frame


class RandomWalk:
    """A random walk in cents over the symbols, round robin, seeded: each
    tick moves one symbol's price a cent up or down. ``start`` gives symbols
    their first prices (the last ones published before a restart)."""

    def __init__(self, symbols: tuple[str, ...], rng: random.Random, start: dict[str, int] | None = None) -> None:
        self.symbols = symbols
        self.rng = rng
        drawn = [rng.randrange(5_000, 30_000) for _ in symbols]  # drawn anyway: a seed gives the same news
        self.cents = [(start or {}).get(s, c) for s, c in zip(symbols, drawn, strict=True)]
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


Row = tuple[int, int, int, int, float]  # a tape record: kind, sym, seq, ts_ns, value


class Playback:
    """A tape's records in their recorded order (both streams interleaved as they
    arrived), each due when its ts_ns gap from the first, divided by ``speed``,
    has passed since the first was served; with speed 0, as fast as possible."""

    CHUNK = 4096  # records turned into Python values at a time: the tape stays on disk

    def __init__(self, tapes: list[tape_mod.Tape], speed: float) -> None:
        self.arrays = [t.records for t in tapes]
        self.speed = speed
        self.file = self.pos = 0  # the next chunk to load
        self.rows: list[Row] = []
        self.k = 0  # the next row of self.rows to serve
        self.t0: float | None = None  # when the first record was served (monotonic)
        self.ts0 = 0  # its ts_ns

    def _next(self) -> Row | None:
        if self.k == len(self.rows):
            self.rows, self.k = [], 0
            while not self.rows and self.file < len(self.arrays):
                c = self.arrays[self.file][self.pos : self.pos + self.CHUNK]
                self.pos += len(c)
                if not len(c):
                    self.file, self.pos = self.file + 1, 0
                    continue
                self.rows = list(zip(c["kind"].tolist(), c["sym"].tolist(), c["seq"].tolist(),
                                     c["ts_ns"].tolist(), c["value"].tolist(), strict=True))
        return self.rows[self.k] if self.k < len(self.rows) else None

    def _at(self, row: Row) -> float:
        assert self.t0 is not None
        return self.t0 + (row[3] - self.ts0) / 1e9 / self.speed

    def due(self, now: float, most: int) -> list[Row]:
        """The records due by ``now``, at most ``most``."""
        out: list[Row] = []
        while (row := self._next()) is not None:
            if self.t0 is None:
                self.t0, self.ts0 = now, row[3]
            if len(out) == most or (self.speed and self._at(row) > now):
                break
            out.append(row)
            self.k += 1
        if row is not None and len(out) == most and self.speed and self._at(row) <= now:
            self.t0 = now - (row[3] - self.ts0) / 1e9 / self.speed  # frozen or starved: re-anchor, do not burst
        return out

    def wait(self, now: float) -> float:
        """Seconds until the next record is due (inf before the first is served, and after the last)."""
        row = self._next()
        if row is None or self.t0 is None:
            return float("inf")
        return self._at(row) - now if self.speed else 0.0

    @property
    def ended(self) -> bool:
        return self._next() is None


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
        self.symbols = cfg.symbols  # served in hello: the config's, or the tape's
        self.playback: Playback | None = None
        self.offset = {tape_mod.PRICE: 0, tape_mod.NEWS: 0}  # added to the tape's seqs (see _play)
        self.tape_ended = False
        rng = random.Random(g.seed or None)
        self.saved: tuple[lastprices.LastPrices, RandomWalk] | None = None  # the walk and where its prices are kept
        self.walk: Callable[[], tuple[str, float]] = (
            Replay(str(cfg.resolve(g.replay)), cfg.symbols) if g.replay else self._random_walk(rng)
        )
        self.news_rng = random.Random(rng.random())
        self.last: dict[str, tuple[int, int, float]] = {}  # symbol -> (seq, ts_ns, price) of its latest tick
        self.price = Stream("price", g.price_rate, self._price)
        self.news = Stream("news", g.news_rate, self._news)
        for st, port in ((self.price, g.price_port), (self.news, g.news_port)):
            st.server = Server(self.loop, log, g.host, port, st.name, functools.partial(self._accept, st))
        if g.tape:
            self._load_tape()
        self.next_housekeeping = 0.0
        self.token = read_token(cfg, log)
        self.waiting: dict[Conn, float] = {}  # accepted, no good subscribe frame yet -> since

    def _random_walk(self, rng: random.Random) -> RandomWalk:
        """The walk, from the last prices published before a restart (``gateway.state``) when
        there are any; a tape is served instead when one is configured."""
        g = self.cfg.gateway
        if not g.state or g.tape:
            return RandomWalk(self.cfg.symbols, rng)
        path = self.cfg.resolve(g.state)
        try:
            start = lastprices.read(path)
        except lastprices.LastPricesError as e:
            start = {}
            self.log.info("walk_fresh", path=str(path), why=str(e))
        walk = RandomWalk(self.cfg.symbols, rng, start)
        if start:
            self.log.info("walk_resumed", path=str(path),
                          prices={s: c / 100 for s, c in start.items() if s in self.cfg.symbols})
        try:
            self.saved = (lastprices.LastPrices(path, self.cfg.symbols, walk.cents), walk)
        except OSError as e:  # the market goes on; a restart then starts afresh
            self.log.error("state_unwritable", path=str(path), error=str(e))
        return walk

    def _load_tape(self) -> None:
        """Map the tape's files and check every record; a bad tape stops the gateway as a bad config."""
        g = self.cfg.gateway
        path = self.cfg.resolve(g.tape)
        try:
            tapes = tape_mod.read_all(path)
        except tape_mod.TapeError as e:
            raise config_mod.ConfigError(f"gateway.tape: {e}") from None
        for t in tapes:
            problem = t.problem()
            if problem:
                raise config_mod.ConfigError(f"gateway.tape: {problem}")
        self.symbols = tapes[-1].symbols  # each file's table begins with the one before's
        self.playback = Playback(tapes, g.speed)
        for st in (self.price, self.news):  # hello's next_seq is the tape's first: a recording that began
            # mid-session is no gap to a subscriber
            first = next((q for t in tapes if (q := t.first_seq(st.name)) is not None), 1)
            st.seq = first - 1
        self.log.info("tape_loaded", path=str(path), files=len(tapes), records=sum(len(t) for t in tapes),
                      symbols=list(self.symbols), dropped_bytes=sum(t.dropped_bytes for t in tapes), speed=g.speed)
        if set(self.symbols) != set(self.cfg.symbols):
            self.log.warning("tape_symbols", tape=list(self.symbols), config=list(self.cfg.symbols))

    def _play(self, now: float) -> None:
        """Serve the tape's records that are due, with their recorded seqs. It starts once both
        streams have a subscriber, so a stack coming up sees it from its first tick."""
        pb = self.playback
        assert pb is not None
        if pb.t0 is None and not (self.price.subs and self.news.subs):
            return
        rows = pb.due(now, MAX_BATCH if pb.speed else FAST_BATCH)
        if rows:
            batches = {tape_mod.PRICE: bytearray(), tape_mod.NEWS: bytearray()}
            streams = {tape_mod.PRICE: self.price, tape_mod.NEWS: self.news}
            for kind, sym, seq, _, value in rows:
                st, symbol, ts = streams[kind], self.symbols[sym], time.time_ns()
                seq += self.offset[kind]
                if seq <= st.seq:  # a tape of two gateway sessions: a session's seqs only grow
                    self.offset[kind] += st.seq + 1 - seq
                    seq = st.seq + 1
                st.seq = seq
                if kind == tape_mod.PRICE:
                    self.last[symbol] = (seq, ts, value)
                    append_frame(batches[kind], Price(seq=seq, ts_ns=ts, symbol=symbol, price=value))
                else:
                    append_frame(batches[kind], News(seq=seq, ts_ns=ts, symbol=symbol, sentiment=int(value)))
            self._send(self.news, batches[tape_mod.NEWS])
            self._send(self.price, batches[tape_mod.PRICE])
        if not self.tape_ended and pb.ended:
            self.tape_ended = True
            self.log.info("tape_ended", price_seq=self.price.seq, news_seq=self.news.seq)

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
        hello = Hello(proto=PROTO, stream=st.name, session=self.session, symbols=list(self.symbols),
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
        if st is self.price and self.saved is not None:  # before the send: a kill -9 after it finds the
            self.saved[0].save(self.saved[1].cents)  # prices the subscribers saw last
        self._send(st, batch)

    def _send(self, st: Stream, batch: bytearray) -> None:
        """One write of the batch to each subscriber; drop the one whose backlog passes the bound."""
        if not batch:
            return
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
        if self.playback is not None:
            self._play(now)
            wait = min(self.playback.wait(now), self.next_housekeeping - now)
        else:
            self._publish(self.news, now)  # first: what a strategy trades on wakes it before the orderbook
            self._publish(self.price, now)
            wait = min(self.price.wait(now), self.news.wait(now), self.next_housekeeping - now)
        self.loop.run_once(max(wait, 0.0))

    def shutdown(self, deadline: float) -> None:
        if self.saved is not None:
            self.saved[0].close()
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
