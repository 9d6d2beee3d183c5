"""orderbook: the book's single writer.

It takes the segment over as its only writer, subscribes to prices and writes
every tick, resynchronising from the snapshot after each reconnect.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from shared import config as config_mod
from shared import tls
from shared.book import CHECK_S, BookError, Segment, Writer, WriterConflict
from shared.net import Client, Conn, Loop, Retry, Sequence
from shared.protocol import BadMessage, Heartbeat, Hello, Message, Price, Reject

STATS_S = 10.0  # how often the orderbook logs how many ticks it wrote (never per tick)


_price_decoder = msgspec.json.Decoder(Price | Hello | Heartbeat | Reject)


class BookWriter:
    """orderbook: price subscriber and the book's single writer."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        self.cfg, self.log = cfg, log
        self.loop = Loop()
        self.seg: Segment | None = None
        self.writer: Writer | None = None
        self.attach = Retry(log, "segment_wait", segment=cfg.book.segment)
        self.next_check = 0.0
        self.next_beat = 0.0
        g = cfg.gateway
        self.client = Client(self.loop, log, *cfg.link("price"), "price", self._connected, self._on_message,
                             decoder=_price_decoder)
        self.client.enabled = False  # until the segment is ours
        self.seq = Sequence(log, "price", g.heartbeat_ms)
        self.unknown: set[str] = set()
        self.ticks = 0
        self.next_stats = time.monotonic() + STATS_S
        self.ticks_at_stats = 0

    def _attach(self, now: float) -> None:
        name = self.cfg.book.segment
        try:
            seg = Segment.attach(name)
            seg.check_symbols(self.cfg.symbols)
        except (BookError, OSError) as e:  # OSError: no fd left, …
            self.attach.failed(now, str(e))
            return
        try:
            self.writer = Writer(seg)
        except WriterConflict as e:
            seg.close()
            self.log.error("writer_conflict", segment=name, error=str(e))
            raise SystemExit(3) from None
        self.seg = seg
        self.attach.succeeded()
        self.log.info("segment_attached", segment=name, generation=self.writer.generation)
        if self.writer.repaired:
            self.log.warning("segment_repaired", segment=name, generation=self.writer.generation,
                             symbols=self.writer.repaired)
        self.slots = seg.slots
        self.client.enabled = True

    def _detach(self, reason: str) -> None:
        self.log.error("segment_lost", segment=self.cfg.book.segment, reason=reason)
        self.client.enabled = False
        if self.client.conn is not None:
            self.client.conn.close(reason)
        if self.seg is not None:
            self.seg.close()
        self.seg = self.writer = None

    def _connected(self, conn: Conn) -> None:
        self.seq.reset()  # resynchronise: hello, then the snapshot
        tls.subscribe(self.cfg, self.log, self.client, conn)

    def _on_message(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is Price:
            p: Price = msg  # type: ignore[assignment]
            if not p.snapshot:
                self.seq.data(p.seq)
            slot = self.slots.get(p.symbol)
            if slot is None:
                if p.symbol not in self.unknown:
                    self.unknown.add(p.symbol)
                    self.log.warning("unknown_symbol", symbol=p.symbol)
                return
            assert self.writer is not None
            if p.snapshot and self._holds(slot, p):
                return  # a repeat of the tick the slot holds: the ring keeps each tick once
            self.writer.write(slot, p.price, p.ts_ns, p.seq)
            self.ticks += 1
        else:
            self.seq.control(self.client, conn, msg)

    def _holds(self, slot: int, p: Price) -> bool:
        assert self.seg is not None
        rec = self.seg.read(slot)
        return rec is not None and (rec.tick_seq, rec.ts_ns, rec.price) == (p.seq, p.ts_ns, p.price)

    def step(self) -> None:
        now = time.monotonic()
        if self.writer is None:
            if self.attach.due(now):
                self._attach(now)
            if self.writer is None:
                time.sleep(min(0.05, max(self.attach.next_at - now, 0.0)))
                return
        assert self.writer is not None and self.seg is not None
        if now >= self.next_beat:
            self.next_beat = now + 0.02
            # Beating only while the price link is up makes a lost feed a stale book: the
            # strategy's kill switch (it never trades on prices it cannot know are current).
            if self.client.conn is not None:
                self.writer.heartbeat()
        if now >= self.next_check:
            self.next_check = now + CHECK_S
            if self.seg.replaced():
                self._detach("segment_replaced")
                return
        if now >= self.next_stats:
            n = self.ticks - self.ticks_at_stats
            self.log.info("ticks_written", ticks=self.ticks, per_s=round(n / (now - self.next_stats + STATS_S)),
                          generation=self.writer.generation)
            self.next_stats, self.ticks_at_stats = now + STATS_S, self.ticks
        self.client.poll(now)
        self.loop.run_once(max(0.0, min(self.next_beat - time.monotonic(), 0.02)))
        # Judged after reading (see OrderManager.step).
        self.client.check_alive(time.monotonic(), self.seq.timeout_s)

    def shutdown(self, deadline: float) -> None:
        self.client.close()
        if self.writer is not None:
            self.writer.release()
        if self.seg is not None:
            self.seg.close()
