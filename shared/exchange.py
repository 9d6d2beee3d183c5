"""exchange: the venue (contract §9). Matches the orders the ordermanager routes against each
other and its own quote around the gateway's prices, and reports every execution.

One loop, as every daemon's: the price stream comes in through a subscriber (as the orderbook's),
the ordermanager through a server (as order entry: the same token, TLS off loopback). Each input
goes through the engine (shared.matching) at once; its journal lines (shared.venuejournal) are
written in one write at the end of the turn, and only then is anything of the turn sent: an exec
is never sent before it, and the input that caused it, are journaled (rule 4).

One ordermanager link at a time; its logon names the highest exec_id it holds, and the exchange
answers with every exec above it, in order, before the live ones. Price snapshot frames after a
(re)subscription are applied as ticks (the latest price of each symbol, so the quote is there
after a restart) unless they repeat the tick last applied; a gap is logged, never filled.
"""

from __future__ import annotations

import gc
import time
import uuid
from itertools import islice
from typing import Any

import msgspec

from shared import config as config_mod
from shared import matching, tls, venuestate
from shared.journalfiles import JournalLocked, errno_name
from shared.net import Client, Conn, Loop, Retry, Sequence, Server, read_token
from shared.protocol import (
    BadFrame,
    BadMessage,
    Cancel,
    Heartbeat,
    Hello,
    Logon,
    LogonAck,
    Message,
    Price,
    Reject,
    Route,
    frame,
)
from shared.venuejournal import JournalFailed, Restored, VenueJournal, framed
from shared.venuerecords import CancelIn, OrderIn, Start, Tick, body, encode, exec_bodies_after

CLIENT_ID = "ordermanager"  # the only client the venue serves
STATS_S = 10.0  # how often the exchange logs its counts (never per tick or order)
MAX_BACKLOG = 64 << 20  # unsent bytes to an ordermanager that does not read: dropped, it logs on again

_om_decoder = msgspec.json.Decoder(Logon | Route | Cancel | Heartbeat)
_price_decoder = msgspec.json.Decoder(Price | Hello | Heartbeat | Reject)


class Session:
    """Per-connection state on the venue port."""

    __slots__ = ("logged_on", "since")

    def __init__(self, since: float) -> None:
        self.logged_on = False
        self.since = since


class Exchange:
    """The exchange component: restore, then match, journal and report, a turn at a time."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        x = cfg.exchange
        self.cfg, self.log, self.x = cfg, log, x
        self.session = uuid.uuid4().hex[:16]
        self.hb_s = x.heartbeat_ms / 1000
        self.symbols = set(cfg.symbols)
        self.token_path = cfg.resolve(cfg.ordermanager.token_file)
        self.journal_path = str(cfg.resolve(x.journal))
        self.token = b""
        self.ready = False
        self.token_retry = Retry(log, "token_unreadable", "error", path=str(self.token_path))
        self.lock_retry = Retry(log, "journal_locked", "warning", path=self.journal_path)
        self.journal: VenueJournal  # set once the lock is ours; then the state below
        self.engine: matching.Engine
        self.window: venuestate.Window
        self.state: Restored
        self.loop = Loop()
        try:
            ctx = tls.server_context(cfg)
        except tls.TlsError as e:
            log.error("tls_unusable", error=str(e))
            raise SystemExit(2) from None
        self.server = Server(self.loop, log, x.host, x.port, "venue", self._accept, tls=ctx)
        self.conns: set[Conn] = set()
        self.link: Conn | None = None  # the logged-on ordermanager
        self.price = Client(self.loop, log, *cfg.link("price"), "price", self._subscribed, self._on_price,
                            decoder=_price_decoder)
        self.price.enabled = False  # until the state is restored
        self.seq = Sequence(log, "price", cfg.gateway.heartbeat_ms)
        self.applied: dict[str, tuple[str, int]] = {}  # symbol -> (session, seq) of its last tick
        self.pending: dict[str, Tick] = {}  # symbol -> its latest applied tick, not journaled yet
        self.unknown: set[str] = set()
        self.turn: list[tuple[int, bytes]] = []  # this turn's frames to the link: (exec_id or 0, frame)
        self.counts = dict.fromkeys(("ticks", "orders", "cancels", "execs", "duplicates"), 0)
        self.next_stats = time.monotonic() + STATS_S
        self.next_housekeeping = 0.0

    # --- start ----------------------------------------------------------------

    def _ready(self, now: float) -> bool:
        """Read the token, then take the journal and restore from it, each retried until it works."""
        if not self.token:
            self.token = read_token(self.token_path, self.token_retry, now)
        if self.token and self.lock_retry.due(now):
            try:
                self.journal = VenueJournal(self.journal_path, self.x.journal_sync, self.log,
                                            self.x.journal_segment_bytes)
            except JournalLocked as e:
                self.lock_retry.failed(now, str(e), holder_pid=e.holder)
            except OSError as e:
                self.lock_retry.failed(now, e.strerror or str(e), "journal_open_failed", errno=errno_name(e))
            else:
                self._restore()
        return self.ready

    def _restore(self) -> None:
        t0, c0 = time.monotonic(), time.process_time()
        # The restore makes some 100,000 objects that all stay: collections meanwhile would only walk them
        # (a sixth of its time), and later ones need not either (frozen).
        gc.disable()
        try:
            st = self.journal.restore(self.x.spread_bps, self.x.depth)
        except OSError as e:
            self.log.error("journal_open_failed", path=self.journal_path, errno=errno_name(e),
                           error=e.strerror or str(e))
            raise SystemExit(3) from None
        finally:
            gc.freeze()
            gc.enable()
        self.state, self.engine, self.window = st, st.engine, st.window
        self.applied = st.ticks  # a snapshot frame repeating one of these is not applied again
        self.engine.spread_bps, self.engine.depth = self.x.spread_bps, self.x.depth
        self.journal.stage(encode(Start(self.session, self.x.spread_bps, self.x.depth, time.time_ns())))
        self._commit()
        self.ready = self.price.enabled = True
        self.log.info("exchange_restored", path=self.journal_path, resting=venuestate.resting(self.engine),
                      next_exec_id=self.engine.next_exec_id, segments=self.journal.closed, lines=st.lines,
                      checkpoint=st.checkpoint, execs_journaled=len(st.missing), diverged=st.diverged,
                      session=self.session, seconds=round(time.monotonic() - t0, 3),
                      cpu_seconds=round(time.process_time() - c0, 3))

    # --- the price stream -----------------------------------------------------

    def _subscribed(self, conn: Conn) -> None:
        self.seq.reset()
        tls.subscribe(self.cfg, self.log, self.price, conn)

    def _on_price(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is Price:
            self._tick(msg)  # type: ignore[arg-type]
        else:
            self.seq.control(self.price, conn, msg)

    def _tick(self, p: Price) -> None:
        if not p.snapshot:
            self.seq.data(p.seq)
        sym = p.symbol
        if sym not in self.symbols:
            if sym not in self.unknown:
                self.unknown.add(sym)
                self.log.warning("unknown_symbol", symbol=sym)
            return
        mark = (self.seq.session or "", p.seq)
        if p.snapshot and self.applied.get(sym) == mark:
            return  # the tick last applied, repeated after a reconnect: its depth is not renewed
        self.applied[sym] = mark
        rec = Tick(sym, p.price, p.seq, time.time_ns(), mark[0])
        self.counts["ticks"] += 1
        execs = self.engine.tick(sym, p.price, rec.ts_ns)
        if execs:
            self.pending.pop(sym, None)
            self.journal.stage(encode(rec))
            self._emit(execs)
        else:
            self.pending[sym] = rec

    def _flush_tick(self, symbol: str) -> None:
        """Journal the symbol's latest applied tick before an input of that symbol (see the journal)."""
        rec = self.pending.pop(symbol, None)
        if rec is not None:
            self.journal.stage(encode(rec))

    # --- the ordermanager -----------------------------------------------------

    def _accept(self, sock: Any, peer: str) -> None:
        conn = tls.connection(self.loop, self.log, sock, peer, "venue", self._on_message, self._closed, _om_decoder)
        conn.state = Session(time.monotonic())
        self.conns.add(conn)
        self.log.info("connected", peer=peer, stream="venue")

    def _closed(self, conn: Conn, reason: str) -> None:
        self.conns.discard(conn)
        if self.link is conn:
            self.link = None
        self.log.warning("disconnected", peer=conn.peer, stream="venue", logged_on=conn.state.logged_on,
                         reason=reason)

    def _reject(self, conn: Conn, order_id: str | None, reason: str, detail: str, close: bool = False,
                client_id: str | None = None) -> None:
        self.log.warning("reject_sent", peer=conn.peer, order_id=order_id, client_id=client_id, reason=reason,
                         detail=detail)
        conn.write(frame(Reject(order_id=order_id, reason=reason, detail=detail[:512],  # type: ignore[arg-type]
                                client_id=client_id)))
        if close:
            conn.flush_blocking(time.monotonic() + 0.05)
            conn.close(reason)

    def _on_message(self, conn: Conn, msg: Message | BadMessage | BadFrame) -> None:
        st: Session = conn.state
        t = type(msg)
        if t is Route and st.logged_on:
            self._route(conn, msg)  # type: ignore[arg-type]
        elif t is Cancel and st.logged_on:
            self._cancel(conn, msg)  # type: ignore[arg-type]
        elif t is Heartbeat and st.logged_on:
            pass
        elif t is BadFrame:
            self._reject(conn, None, "bad_frame", str(msg), close=True)
        elif t is BadMessage:
            bm: BadMessage = msg  # type: ignore[assignment]
            self._reject(conn, bm.order_id, "bad_message", bm.detail, close=not st.logged_on)
        elif not st.logged_on:
            if t is Logon:
                self._logon(conn, st, msg)  # type: ignore[arg-type]
            else:
                self._reject(conn, getattr(msg, "order_id", None), "not_logged_on", "logon first", close=True)
        else:
            self._reject(conn, None, "bad_message", f"unexpected {t.__name__} after logon")

    def _logon(self, conn: Conn, st: Session, msg: Logon) -> None:
        refused = msg.refused(self.token)
        if refused is not None:
            self._reject(conn, None, *refused, close=True)
            return
        if msg.client_id != CLIENT_ID:
            self._reject(conn, None, "unauthorized", f"the venue serves the {CLIENT_ID} only", close=True)
            return
        self._commit()  # the turn's execs first: the redelivery below counts only what is journaled
        if self.link is not None:
            self.link.close("replaced_by_new_logon")
        st.logged_on = True
        self.link = conn
        last = self.engine.next_exec_id - 1
        conn.write(frame(LogonAck(session=self.session, heartbeat_ms=self.x.heartbeat_ms, positions={},
                                  last_order_id=None, open_orders=[], last_exec_id=last or None)))
        since = msg.last_exec_id or 0
        n = self._redeliver(conn, since, last)
        self.log.info("logged_on", peer=conn.peer, client_id=msg.client_id, instance=msg.instance,
                      last_exec_id=msg.last_exec_id, venue_last_exec_id=last or None, redelivered=n)

    def _redeliver(self, conn: Conn, since: int, last: int) -> int:
        """Send every exec above ``since``, in order: from memory, or from the files if it is older."""
        if since >= last:
            if since > last:
                self.log.error("exec_id_ahead", last_exec_id=since, venue_last_exec_id=last)
            return 0
        recent = self.state.recent
        if recent and recent[0][0] <= since + 1:
            frames = [f for _, f in islice(recent, since + 1 - recent[0][0], None)]
        else:
            frames = [framed(b) for _, b in exec_bodies_after(self.journal_path, since)]
        conn.write(b"".join(frames))
        return len(frames)

    def _route(self, conn: Conn, r: Route) -> None:
        seen = self.window.verdict(r.client_id, r.order_id, r.order_no)
        if seen is not None:  # routed again after a lost link: its execs are the ones already sent
            self.counts["duplicates"] += 1
            (self.log.info if seen == "duplicate" else self.log.warning)(
                f"route_{seen}", order_no=r.order_no, client_id=r.client_id, order_id=r.order_id,
                floor=self.window.floor)
            return
        if r.ord_type == "limit" and r.price is None:
            self._reject(conn, r.order_id, "bad_message", "a limit order needs a price", client_id=r.client_id)
            return
        self._flush_tick(r.symbol)
        rec = OrderIn(r.order_no, r.client_id, r.order_id, r.symbol, r.side, r.qty, r.price, r.ord_type, r.tif,
                      time.time_ns())
        try:
            execs = self.engine.order(rec.order_no, rec.client_id, rec.order_id, rec.symbol, rec.side, rec.qty,
                                      rec.price, rec.ord_type, rec.tif, rec.ts_ns)
        except ValueError as e:
            self._reject(conn, r.order_id, "bad_message", str(e), client_id=r.client_id)
            return
        self.counts["orders"] += 1
        self.window.add(r.client_id, r.order_id, r.order_no)
        self.journal.stage(encode(rec))
        self._emit(execs)

    def _cancel(self, conn: Conn, c: Cancel) -> None:
        if c.client_id is None:
            self._reject(conn, c.order_id, "bad_message", "a cancel at the venue needs client_id")
            return
        rec = CancelIn(c.client_id, c.order_id, time.time_ns())
        execs = self.engine.cancel(rec.client_id, rec.order_id, rec.ts_ns)
        self.counts["cancels"] += 1
        if execs:
            self._flush_tick(execs[0].symbol)  # the same order as applying it: the cancel changed no quote
        self.journal.stage(encode(rec))
        if execs:
            self._emit(execs)
        else:  # never seen, or ended meanwhile: answered after the turn's journal write, in order
            self.log.info("cancel_unknown", client_id=c.client_id, order_id=c.order_id)
            self.turn.append((0, frame(Reject(order_id=c.order_id, reason="unknown_order",
                                              detail="not open at the venue", client_id=c.client_id))))

    def _emit(self, execs: list[matching.Exec]) -> None:
        for e in execs:
            wire = body(e)
            self.journal.stage_exec(wire)
            self.turn.append((e.exec_id, framed(wire)))
        self.counts["execs"] += len(execs)

    def _commit(self) -> None:
        """Group commit: the turn's lines in one write, then its frames to the ordermanager."""
        try:
            self.journal.commit()
        except JournalFailed:
            raise SystemExit(3) from None  # logged; the restart replays what the journal holds
        if not self.turn:
            return
        recent = self.state.recent
        out = bytearray()
        for exec_id, fr in self.turn:
            if exec_id:
                recent.append((exec_id, fr))
            out += fr
        self.turn.clear()
        if self.link is not None:
            self.link.write(out)

    # --- the loop -------------------------------------------------------------

    def step(self) -> None:
        self.loop.run_once(max(0.0, self.next_housekeeping - time.monotonic()))
        if self.ready:
            self._commit()
        now = time.monotonic()
        if now < self.next_housekeeping:
            return
        self.next_housekeeping = now + min(0.05, self.hb_s / 4)
        if not self.ready and not self._ready(now):
            retry = self.lock_retry if self.token else self.token_retry
            self.next_housekeeping = max(retry.next_at, now + 0.01)
            return  # not bound: nobody can connect yet
        self.server.poll(now)
        self.price.poll(now)
        self.price.check_alive(now, self.seq.timeout_s)  # judged after reading (see OrderManager.step)
        self._links(now)
        self.journal.wait_checkpoint(block=False)
        if self.journal.due():
            self._roll("size")
        if now >= self.next_stats:
            self.log.info("exchange_stats", **self.counts, resting=venuestate.resting(self.engine),
                          next_exec_id=self.engine.next_exec_id, linked=self.link is not None)
            self.next_stats = now + STATS_S

    def _links(self, now: float) -> None:
        """Logon timeouts, heartbeats both ways, a link that does not read."""
        logon_timeout = self.x.logon_timeout_ms / 1000
        for conn in list(self.conns):
            st: Session = conn.state
            if len(conn.out) > MAX_BACKLOG:
                conn.close("slow_consumer")
            elif not st.logged_on:
                if now - st.since > logon_timeout:
                    conn.close("logon_timeout")
            elif conn.idle_for(now) > 3 * self.hb_s:
                conn.close("heartbeat_timeout")
            elif conn.quiet_for(now) >= self.hb_s:
                conn.write(frame(Heartbeat(ts_ns=time.time_ns())))

    def shutdown(self, deadline: float) -> None:
        self.server.close()  # stop intake
        self.price.close()
        if not self.ready:
            return
        self._commit()  # drain: journal and send what the engine did
        for conn in list(self.conns):
            conn.flush_blocking(deadline)
            conn.close("shutdown")
        self._roll("shutdown")  # a checkpoint: the next start replays nothing
        self.journal.close()

    def _roll(self, reason: str) -> None:
        """Roll the journal with a checkpoint of exactly what it holds: every applied tick journaled first."""
        for sym in list(self.pending):
            self._flush_tick(sym)
        self._commit()
        self.journal.roll(self.engine, self.window, self.applied, reason)

