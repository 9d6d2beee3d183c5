"""stack-record: subscribes to the gateway's price and news streams and writes
every tick, in arrival order, to a tape (shared/tape.py, contract §10).

A client of the gateway as the orderbook and the strategy are: the same
reconnecting clients, subscription frame and sequence checks. Snapshot frames
repeat ticks already sent, so they are not recorded: a tape holds each tick
once, with its live seq. After a reconnect recording goes on from hello's
``next_seq``; the ticks missed meanwhile are a gap in the tape's seqs (logged
as ``ticks_missed``). It logs JSON lines as every program does, never one per
tick: a ``recording`` record every 10 s, and ``recorded`` at the end.

At 200,000 ticks/s the time goes to decoding and to the call per tick, so
each read's frames are decoded in one call (``TickFrames``) and handled in
one loop; a read that does not decode so is decoded frame by frame, as every
daemon decodes them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from shared import config as config_mod
from shared import logs, tls
from shared.lifecycle import Stop, StopRequested
from shared.net import Client, Conn, Loop, Sequence
from shared.protocol import BadFrame, BadMessage, FrameDecoder, Heartbeat, Hello, Message, News, Price, Reject
from shared.tape import TapeError, TapeWriter

HOUSEKEEPING_S = 0.05  # reconnects, silence, and writing out the buffered records: so a kill loses this much
STATS_S = 10.0

_price_decoder = msgspec.json.Decoder(Price | Hello | Heartbeat | Reject)
_news_decoder = msgspec.json.Decoder(News | Hello | Heartbeat | Reject)
_prices_decoder = msgspec.json.Decoder(list[Price | Hello | Heartbeat | Reject])
_newses_decoder = msgspec.json.Decoder(list[News | Hello | Heartbeat | Reject])


class Batch(list):  # type: ignore[type-arg]
    """The messages of one read, decoded in one call: handed on as one message."""


class TickFrames(FrameDecoder):
    """A stream's frames as ``FrameDecoder`` frames them; each read's bodies decoded in one call, as a JSON
    array, into one ``Batch``. A read that does not decode so (a bad frame, not ASCII, or elements that do
    not match the frames one for one) is decoded frame by frame, each bad frame a ``BadMessage`` as ever.
    Meant for a trusted stream: two bad frames that make good ones when joined would pass."""

    __slots__ = ("_many",)

    def __init__(self, one: msgspec.json.Decoder[Any], many: msgspec.json.Decoder[Any]) -> None:
        super().__init__(one)
        self._many = many.decode

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message | BadMessage]:
        bodies, ascii_only, bad = self.frames(data)
        if bad is None and ascii_only and bodies:
            try:
                msgs = self._many(b"[" + b",".join(bodies) + b"]")
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                msgs = None
            if msgs is not None and len(msgs) == len(bodies):
                return [Batch(msgs)]  # type: ignore[list-item]
        out = self.decode_each(bodies, ascii_only)
        if bad is not None:
            raise BadFrame(bad, out)
        return out


class Feed:
    """One subscribed stream: its client, its sequence and what it recorded."""

    def __init__(self, rec: Recorder, name: str, on_message: Any, decoder: Any, many: Any) -> None:
        cfg = rec.cfg
        self.name = name
        self.decoders = decoder, many
        self.client = Client(rec.loop, rec.log, *cfg.link(name), name, self._connected, on_message, decoder=decoder)
        self.seq = Sequence(rec.log, name, cfg.gateway.heartbeat_ms)
        self.rec = rec
        self.ticks = 0
        self.last = 0  # the last seq recorded on the connection before this one
        self.gaps = 0  # live frames that did not follow on (gap_detected)
        self.missed = 0  # ticks sent while we were disconnected
        self.hellos = 0

    def _connected(self, conn: Conn) -> None:
        conn.decoder = TickFrames(*self.decoders)  # before its first read: this runs as the link comes up
        if self.seq.expected is not None:
            self.last = self.seq.expected - 1
        self.seq.reset()
        tls.subscribe(self.rec.cfg, self.rec.log, self.client, conn)

    def control(self, conn: Conn, msg: Message | BadMessage | Batch) -> None:
        """Hello, heartbeat and reject: the frames that carry no tick."""
        t = type(msg)
        if t is Hello:
            h: Hello = msg  # type: ignore[assignment]
            if self.last and h.session == self.seq.session and h.next_seq > self.last + 1:
                self.missed += h.next_seq - self.last - 1
                self.rec.log.warning("ticks_missed", stream=self.name, first=self.last + 1, last=h.next_seq - 1)
            self.seq.hello(h.session, h.next_seq, h.heartbeat_ms)
            self.hellos += 1
            for symbol in h.symbols:  # the tape's table in the gateway's order, not the order ticks came in
                try:
                    self.rec.writer.symbol(symbol)
                except TapeError as e:
                    self.rec.skip(symbol, e, tick=False)
        elif t is Heartbeat:
            hb: Heartbeat = msg  # type: ignore[assignment]
            if hb.seq is not None and self.seq.expected is not None and hb.seq >= self.seq.expected:
                self.gaps += 1  # ticks sent that never came (gap_detected)
            self.seq.heartbeat(hb.seq)
        elif t is Reject:
            r: Reject = msg  # type: ignore[assignment]
            self.rec.log.warning("subscription_refused", peer=conn.peer, stream=self.name, reason=r.reason,
                                 detail=r.detail)
            self.client.refuse(r.reason)

    def jump(self, seq: int) -> None:
        """A live tick that does not follow the last: the first after hello, or a gap (logged)."""
        if self.seq.expected is not None:
            self.gaps += 1
        self.seq.data(seq)

    def stats(self) -> dict[str, int]:
        return {f"{self.name}_ticks": self.ticks, f"{self.name}_gaps": self.gaps, f"{self.name}_missed": self.missed}


class Recorder:
    """Both streams into one tape writer: ``step`` until the caller stops, then ``close``."""

    def __init__(self, cfg: config_mod.Config, log: Any, writer: TapeWriter) -> None:
        self.cfg, self.log, self.writer = cfg, log, writer
        self.loop = Loop()
        self.price = Feed(self, "price", self._on_price, _price_decoder, _prices_decoder)
        self.news = Feed(self, "news", self._on_news, _news_decoder, _newses_decoder)
        self.started = time.monotonic()
        self.next_housekeeping = 0.0
        self.next_stats = self.started + STATS_S
        self.ticks_at_stats = 0
        self.unrecordable: set[str] = set()
        self.skipped = 0  # ticks of those symbols, left out

    # The hot path, once a read (a Batch) or once a tick: the sequence check inline, no log.

    def _on_price(self, conn: Conn, msg: Message | BadMessage | Batch) -> None:
        self._prices(conn, msg if type(msg) is Batch else (msg,))  # type: ignore[arg-type]

    def _prices(self, conn: Conn, msgs: Batch | tuple[Message | BadMessage]) -> None:
        """A read's messages (or one) in one loop: the live ticks written in one call."""
        f = self.price
        seq = f.seq
        live: list[Price] = []
        for p in msgs:
            if type(p) is Price:
                if p.snapshot:
                    continue
                if p.seq != seq.expected:
                    f.jump(p.seq)
                seq.expected = p.seq + 1
                live.append(p)
            else:
                self._write_prices(live)
                live = []
                f.control(conn, p)
                if conn is not None and conn.closed:
                    return
        self._write_prices(live)

    def _write_prices(self, live: list[Price]) -> None:
        if not live:
            return
        self.price.ticks += len(live)
        try:
            self.writer.prices(live)
        except TapeError:  # a symbol the tape cannot hold among them: tick by tick, so the others are written
            for p in live:
                try:
                    self.writer.price(p.seq, p.ts_ns, p.symbol, p.price)
                except TapeError as e:
                    self.skip(p.symbol, e)

    def _on_news(self, conn: Conn, msg: Message | BadMessage | Batch) -> None:
        if type(msg) is Batch:
            for m in msg:
                self._on_news(conn, m)
                if conn is not None and conn.closed:
                    return
        elif type(msg) is News:
            n: News = msg  # type: ignore[assignment]
            f, seq = self.news, n.seq
            if seq != f.seq.expected:
                f.jump(seq)
            f.seq.expected = seq + 1
            f.ticks += 1
            try:
                self.writer.news(seq, n.ts_ns, n.symbol, n.sentiment)
            except TapeError as e:
                self.skip(n.symbol, e)
        else:
            self.news.control(conn, msg)

    def skip(self, symbol: str, e: TapeError, tick: bool = True) -> None:
        """A symbol the tape cannot hold (not ASCII, or past 256): its ticks are left out, logged once."""
        self.skipped += tick
        if symbol not in self.unrecordable:
            self.unrecordable.add(symbol)
            self.log.error("symbol_not_recorded", symbol=symbol, error=str(e))

    def step(self, until: float) -> None:
        """One turn: housekeeping when due, then read what the sockets hold (waiting at most until ``until``)."""
        now = time.monotonic()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_S
            self.writer.flush()
            for f in (self.price, self.news):
                f.client.poll(now)
                f.client.check_alive(now, f.seq.timeout_s)
            if now >= self.next_stats:
                ticks = self.price.ticks + self.news.ticks
                self.log.info("recording", **self.price.stats(), **self.news.stats(),
                              per_s=round((ticks - self.ticks_at_stats) / (now - self.next_stats + STATS_S)))
                self.next_stats, self.ticks_at_stats = now + STATS_S, ticks
        self.loop.run_once(min(self.next_housekeeping, until) - time.monotonic())

    def close(self) -> dict[str, Any]:
        """Stop intake, write out the tape; what was recorded."""
        for f in (self.price, self.news):
            f.client.close()
        try:
            self.writer.close()
        except OSError as e:  # the last records could not be written (a full disk): the file holds the rest
            self.log.error("write_failed", out=str(self.writer.path), error=e.strerror or str(e))
        seconds = time.monotonic() - self.started
        ticks = self.price.ticks + self.news.ticks
        return {"out": str(self.writer.path), **self.price.stats(), **self.news.stats(),
                "records": self.writer.records, "skipped": self.skipped, "files": self.writer.closed_files + 1,
                "bytes": self.writer.nbytes, "seconds": round(seconds, 3), "per_s": round(ticks / max(seconds, 1e-9))}


class Session:
    """The supervised program ``recorder`` ([recorder] enabled): records until it is stopped, to a
    new tape at each start (a tape is never overwritten), rolled by size; ``lifecycle.run`` drives it."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        r = cfg.recorder
        folder = cfg.resolve(r.dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.out = folder / f"session-{stamp}-{os.getpid()}.tape"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writer = TapeWriter(self.out, roll_bytes=int(r.roll_mb * 1_000_000))
        except OSError as e:  # supervisord retries, then says FATAL
            log.error("tape_unwritable", out=str(self.out), error=e.strerror or str(e))
            raise SystemExit(1) from None
        self.log, self.rec = log, Recorder(cfg, log, writer)
        log.info("recording", out=str(self.out), roll_mb=r.roll_mb)

    def step(self) -> None:
        try:
            self.rec.step(time.monotonic() + 1.0)
        except OSError as e:  # a full disk: stop, keeping what the tape holds; supervisord starts a new one
            self.log.error("write_failed", out=str(self.out), error=e.strerror or str(e))
            raise StopRequested("write_failed") from None

    def shutdown(self, deadline: float) -> None:
        self.log.info("recorded", **self.rec.close())


def main(argv: list[str] | None = None) -> int:
    """stack-record --seconds N --out FILE [--config FILE] [--roll-mb M]"""
    ap = argparse.ArgumentParser(prog="stack-record", description="Record the gateway's price and news ticks "
                                 "to a tape (README: The tape).")
    ap.add_argument("--seconds", type=float, required=True, help="how long to record")
    ap.add_argument("--out", required=True, help="the tape file to create (never overwritten)")
    ap.add_argument("--config", default=None, help="the stack's config (default: $STACK_CONFIG or deploy/stack.toml)")
    ap.add_argument("--roll-mb", type=float, default=0.0,
                    help="close the file as FILE.1, FILE.2, ... past this size (default 0: one file)")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.roll_mb < 0:
        ap.error("--seconds must be > 0 and --roll-mb >= 0")
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"stack-record: bad config: {e}", file=sys.stderr)
        return 2
    try:
        writer = TapeWriter(Path(args.out), roll_bytes=int(args.roll_mb * 1_000_000))
    except FileExistsError as e:
        print(f"stack-record: {e}: a tape is never overwritten; remove it or choose another --out", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"stack-record: cannot create {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    log = logs.configure("recorder")
    stop = Stop()
    rec = Recorder(cfg, log, writer)
    log.info("started", config=cfg.path, out=args.out, seconds=args.seconds)
    until = rec.started + args.seconds
    failed: OSError | None = None
    try:
        while not stop.requested and time.monotonic() < until:
            rec.step(until)
            logs.flush(older_than=logs.LINGER_S)
    except OSError as e:  # the tape cannot be written (a full disk): stop, keeping what it holds
        failed = e
        log.error("write_failed", out=args.out, error=e.strerror or str(e))
    finally:
        summary = rec.close()
        log.info("recorded", reason=stop.reason or ("write_failed" if failed else "done"), **summary)
        logs.flush()
    if failed is not None:
        print(f"stack-record: cannot write {args.out}: {failed.strerror or failed}; it holds the ticks before",
              file=sys.stderr)
        return 1
    never = [f"{f.name} ({':'.join(map(str, cfg.link(f.name)))})" for f in (rec.price, rec.news) if not f.hellos]
    if never:
        print(f"stack-record: never subscribed to {' and '.join(never)}; {args.out} holds what came",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
