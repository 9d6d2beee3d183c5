"""strategy: reads the book, consumes news, sends orders by the rule of §7.

Prices enter a rolling buffer per symbol once per new tick in the book (the
record's ``updates`` changed), never per poll. Orders are tracked until
acked; after a reconnect the pending ones are resent with the same ids, and
no new order is made until they are answered.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any

import msgspec

from shared import config as config_mod
from shared import tls
from shared.book import BookError, Segment
from shared.net import Client, Conn, Loop, Retry, Sequence, backoff
from shared.protocol import (
    PROTO,
    Ack,
    BadMessage,
    Heartbeat,
    Hello,
    Logon,
    LogonAck,
    Message,
    News,
    Order,
    Reject,
    frame,
)
from shared.rule import RuleParams, decide

_news_decoder = msgspec.json.Decoder(News | Hello | Heartbeat | Reject)
_om_decoder = msgspec.json.Decoder(Ack | Reject | LogonAck | Heartbeat)
REFUSED_BASE_S, REFUSED_CAP_S = 0.5, 30.0  # backoff after a refused logon


def read_token(cfg: config_mod.Config) -> str:
    """The order-entry token (deploy/up creates the file)."""
    return cfg.resolve(cfg.ordermanager.token_file).read_text().strip()


def order_number(order_id: str | None, client_id: str) -> int:
    """The counter in an order id of ours (``<client_id>-<n>``), else 0."""
    if order_id and order_id.startswith(client_id + "-"):
        tail = order_id[len(client_id) + 1 :]
        if tail.isdigit():
            return int(tail)
    return 0


class Trader:
    """The strategy component."""

    def __init__(self, cfg: config_mod.Config, log: Any) -> None:
        self.cfg, self.log = cfg, log
        st = cfg.strategy
        self.params = RuleParams(st.short_window, st.long_window, st.bullish, st.bearish, st.qty)
        self.client_id = st.client_id
        self.poll_s = st.poll_us / 1e6
        self.loop = Loop()
        g, om = cfg.gateway, cfg.ordermanager
        self.news = Client(self.loop, log, *cfg.link("news"), "news", self._news_connected, self._on_news,
                           decoder=_news_decoder)
        try:
            ctx = tls.client_context(cfg)
        except tls.TlsError as e:
            log.error("tls_unusable", error=str(e))
            raise SystemExit(2) from None
        om_args = (self.loop, log, *cfg.link("orders"), "orders", self._om_connected, self._on_om, self._om_down)
        self.om = (Client(*om_args, decoder=_om_decoder) if ctx is None
                   else tls.TlsClient(*om_args, decoder=_om_decoder, tls=ctx))
        self.seq = Sequence(log, "news", g.heartbeat_ms)
        self.om_hb_s = om.heartbeat_ms / 1000
        self.seg: Segment | None = None
        self.attach = Retry(log, "segment_wait", segment=cfg.book.segment)
        self.next_check = 0.0
        self.generation = -1
        self.windows: dict[str, deque[float]] = {s: deque(maxlen=st.long_window) for s in cfg.symbols}
        self.last_updates: dict[str, int] = {}
        self.positions = {s: 0 for s in cfg.symbols}  # acknowledged
        self.pending: dict[str, Order] = {}
        self.resending: set[str] = set()
        self.logged_on = False
        self.instance = secrets.token_hex(8)  # this process, at the ordermanager (shared.owners)
        self.refusals = 0
        self.n = 0
        self.stale: bool | None = None

    # --- the book -------------------------------------------------------------

    def _attach(self, now: float) -> None:
        name = self.cfg.book.segment
        try:
            seg = Segment.attach(name)
            seg.check_symbols(self.cfg.symbols)
        except (BookError, OSError) as e:  # OSError: no fd left, …
            self.attach.failed(now, str(e))
            return
        self.seg = seg
        self.attach.succeeded()
        self.slots = list(enumerate(seg.symbols))
        self.log.info("segment_attached", segment=name, generation=seg.generation)

    def _poll_book(self) -> None:
        """Feed each symbol's buffer with the ticks that are new since the last poll."""
        seg = self.seg
        if seg is None:
            return
        gen = seg.generation
        seen = []
        for i, sym in self.slots:
            rec = seg.read(i)
            if rec is not None and rec.seq and rec.updates != self.last_updates.get(sym):
                seen.append((sym, rec))
        if seg.generation != gen:
            return  # a writer took over mid-read: read again next poll
        if gen != self.generation:
            if self.generation >= 0:
                self.log.info("generation_changed", segment=seg.name, generation=gen, previous=self.generation)
            self.generation = gen
        for sym, rec in seen:
            self.last_updates[sym] = rec.updates
            self.windows[sym].append(rec.price)

    def _check_stale(self) -> bool:
        """True if the book is stale; logs book_stale / book_fresh on a change."""
        age = self.seg.age_ms() if self.seg is not None else float("inf")
        stale = age > self.cfg.book.stale_ms
        if stale != self.stale:
            age_ms = None if age == float("inf") else round(age, 3)
            self.log.warning("book_stale", age_ms=age_ms) if stale else self.log.info("book_fresh", age_ms=age_ms)
            self.stale = stale
        return stale

    # --- news -----------------------------------------------------------------

    def _news_connected(self, conn: Conn) -> None:
        self.seq.reset()
        try:
            sub = tls.subscribe_frame(self.cfg)
        except OSError as e:
            self.log.error("token_unreadable", path=self.cfg.gateway.token_file, error=str(e))
            self.news.refuse("no_token")
            return
        if sub is not None:
            conn.write(sub)

    def _on_news(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is News:
            n: News = msg  # type: ignore[assignment]
            self.seq.data(n.seq)
            self._on_tick(n)
        elif t is Hello:
            h: Hello = msg  # type: ignore[assignment]
            self.seq.hello(h.session, h.next_seq, h.heartbeat_ms)
        elif t is Heartbeat:
            self.seq.heartbeat(msg.seq)  # type: ignore[union-attr]
        elif t is Reject:
            r: Reject = msg  # type: ignore[assignment]
            self.log.warning("subscription_refused", peer=conn.peer, stream="news", reason=r.reason,
                             detail=r.detail)
            self.news.refuse(r.reason)

    def position(self, symbol: str) -> int:
        """Acknowledged plus pending, signed."""
        pos = self.positions.get(symbol, 0)
        for o in self.pending.values():
            if o.symbol == symbol:
                pos += o.qty if o.side == "BUY" else -o.qty
        return pos

    def _on_tick(self, news: News) -> None:
        self._poll_book()
        if self.seg is None or self._check_stale():
            return
        if not self.logged_on or self.resending or self.om.conn is None:
            return  # link down or resynchronising: no new orders
        window = self.windows.get(news.symbol)
        if not window:
            return  # never priced
        d = decide(window, news.sentiment, self.position(news.symbol), self.params)
        if d is None:
            return
        side, qty = d
        self.n += 1
        order = Order(order_id=f"{self.client_id}-{self.n}", symbol=news.symbol, side=side, qty=qty,
                      price=window[-1], ts_ns=time.time_ns(), tick_ts_ns=news.ts_ns)
        self.pending[order.order_id] = order
        self.om.conn.write(frame(order))
        self.log.info("order_sent", order_id=order.order_id, symbol=order.symbol, side=side, qty=qty,
                      price=order.price, sentiment=news.sentiment)

    # --- order entry ----------------------------------------------------------

    def _om_connected(self, conn: Conn) -> None:
        self.logged_on = False
        try:
            token = read_token(self.cfg)
        except OSError as e:
            self.log.error("token_unreadable", error=str(e))
            conn.close("no_token")
            return
        conn.write(frame(Logon(proto=PROTO, client_id=self.client_id, token=token, instance=self.instance)))

    def _om_down(self, reason: str) -> None:
        self.logged_on = False

    def _on_om(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is Ack:
            a: Ack = msg  # type: ignore[assignment]
            o = self.pending.pop(a.order_id, None)
            self.resending.discard(a.order_id)
            # A duplicate was journaled before our logon, so logon_ack counted it.
            if o is not None and not a.duplicate:
                self.positions[o.symbol] = self.positions.get(o.symbol, 0) + (o.qty if o.side == "BUY" else -o.qty)
            self.log.info("order_acked", order_id=a.order_id, order_no=a.order_no, duplicate=a.duplicate)
        elif t is Reject:
            r: Reject = msg  # type: ignore[assignment]
            if not self.logged_on:
                self._refused(r)
                return
            if r.order_id is not None:
                self.pending.pop(r.order_id, None)
                self.resending.discard(r.order_id)
            self.log.warning("order_refused", order_id=r.order_id, reason=r.reason, detail=r.detail)
        elif t is LogonAck:
            la: LogonAck = msg  # type: ignore[assignment]
            self.logged_on = True
            self.refusals = 0
            self.om_hb_s = la.heartbeat_ms / 1000
            self.positions = {s: 0 for s in self.cfg.symbols} | dict(la.positions)
            self.n = max(self.n, order_number(la.last_order_id, self.client_id))
            self.resending = set(self.pending)
            self.log.info("logged_on", session=la.session, positions=la.positions,
                          last_order_id=la.last_order_id, resending=len(self.resending))
            if self.pending:
                conn.write(b"".join(frame(o) for o in self.pending.values()))

    def _refused(self, r: Reject) -> None:
        """Our logon refused (a bad token, or a newer process took our client_id
        over): no order goes out under this name; try again later, slower each time."""
        self.refusals += 1
        delay = backoff(self.refusals, base=REFUSED_BASE_S, cap=REFUSED_CAP_S)
        self.om.hold_off(delay)
        self.log.error("logon_refused", reason=r.reason, detail=r.detail, instance=self.instance,
                       attempt=self.refusals, delay_ms=round(delay * 1000))

    # --- the loop -------------------------------------------------------------

    def step(self) -> None:
        # Read first, then judge silence (see OrderManager.step).
        self.loop.run_once(self.poll_s)
        self._poll_book()
        now = time.monotonic()
        if self.seg is None and self.attach.due(now):
            self._attach(now)
        if now >= self.next_check:
            self.next_check = now + 0.05
            if self.seg is not None:
                if self.seg.replaced():
                    self.log.error("segment_lost", segment=self.seg.name, reason="segment_replaced")
                    self.seg.close()
                    self.seg = None
                    self.last_updates.clear()
                else:
                    self._check_stale()
            self.news.poll(now)
            self.om.poll(now)
            self.news.check_alive(now, self.seq.timeout_s)
            self.om.check_alive(now, 3 * self.om_hb_s)
            c = self.om.conn
            if c is not None and self.logged_on and c.quiet_for(now) >= self.om_hb_s:
                c.write(frame(Heartbeat(ts_ns=time.time_ns())))

    def shutdown(self, deadline: float) -> None:
        self.news.close()  # stop intake first
        if self.om.conn is not None:
            self.om.conn.flush_blocking(deadline)
        self.om.close()
        if self.pending:
            self.log.warning("pending_at_stop", order_ids=sorted(self.pending))
        if self.seg is not None:
            self.seg.close()
