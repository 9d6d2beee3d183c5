"""strategy: consumes news and, on each news tick, asks its rule with the
symbol's last ticks from the book's ring; sends the rule's orders.

No polling: the loop waits on its sockets, and reads the ring only when news
arrives, so a window holds every tick at any rate and an idle strategy costs
nothing. Housekeeping (staleness, the segment, heartbeats) runs on a coarse
timer. Orders are tracked until acked; after a reconnect the pending ones are
resent with the same ids, and no new order is made until they are answered.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import secrets
import time
import traceback
from typing import Any

import msgspec

from shared import config as config_mod
from shared import logs, tls
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
from shared.rule import Decision

HOUSEKEEPING_S = 0.1  # staleness, the segment, reconnects and heartbeats: at most this far apart,
# and at most half a heartbeat interval apart

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


def load_rule(st: config_mod.Strategy) -> Any:
    """Import a strategy's rule and build it from its params; config_mod.ConfigError naming
    the table and key when the rule cannot be imported or a param is wrong."""
    mod_name, _, cls_name = st.rule.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in cls_name.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # ImportError, AttributeError, or the module failing as it loads
        raise config_mod.ConfigError(f"{st.table}.rule: cannot import {st.rule!r}: {type(e).__name__}: {e}") from None
    params_cls = getattr(obj, "Params", None)
    if not isinstance(obj, type) or not callable(getattr(obj, "decide", None)) or params_cls is None \
            or not isinstance(params_cls, type) or not dataclasses.is_dataclass(params_cls):
        raise config_mod.ConfigError(f"{st.table}.rule: {st.rule!r} is not a rule (a class with Params and decide)")
    try:
        params = config_mod.section(st.table, params_cls, st.params, signed=True)
    except config_mod.ConfigError as e:
        raise config_mod.ConfigError(f"{e} (rule {st.rule})") from None
    except (TypeError, ValueError) as e:  # the rule's own checks: "key: why"
        raise config_mod.ConfigError(f"{st.table}.{e}") from None
    rule = obj(params)
    rule.name = st.rule
    if not isinstance(getattr(rule, "history", None), int) or rule.history < 1:
        raise config_mod.ConfigError(f"{st.table}.rule: {st.rule!r} has no history >= 1 (ticks it wants)")
    return rule


def rule_for(cfg: config_mod.Config, spec: config_mod.Strategy) -> Any:
    """The strategy's rule, built from its table; ConfigError if it cannot be,
    or if it wants more ticks than the ring keeps."""
    rule = load_rule(spec)
    if rule.history > cfg.book.ring_len:
        raise config_mod.ConfigError(f"{spec.table}.rule: {spec.rule} wants {rule.history} ticks; "
                                     f"book.ring_len keeps {cfg.book.ring_len}")
    return rule


class Trader:
    """The strategy component: program ``strategy`` (name "") or ``strategy-<name>``."""

    def __init__(self, cfg: config_mod.Config, log: Any, name: str = "") -> None:
        self.cfg = cfg
        self.spec = cfg.strategy_named(name)
        self.rule = rule_for(cfg, self.spec)
        self.client_id = self.spec.client_id
        self.log = log = log.bind(client_id=self.client_id)
        log.info("rule", rule=self.spec.rule, params=repr(self.rule.params), history=self.rule.history)
        self.symbols = set(self.spec.symbols or cfg.symbols)
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
        self.period = min(HOUSEKEEPING_S, min(g.heartbeat_ms, om.heartbeat_ms) / 2000)
        self.seg: Segment | None = None
        self.attach = Retry(log, "segment_wait", segment=cfg.book.segment)
        self.next_check = 0.0
        self.generation = -1
        self.positions = {s: 0 for s in cfg.symbols}  # acknowledged
        self.pending: dict[str, Order] = {}
        self.resending: set[str] = set()
        self.logged_on = False
        self.instance = secrets.token_hex(8)  # this process, at the ordermanager (shared.owners)
        self.refusals = 0
        self.n = 0
        self.stale: bool | None = None
        gc.freeze()  # what start-up made lives on: collections on the news path need not walk it

    # --- the book -------------------------------------------------------------

    def _attach(self, now: float) -> None:
        name = self.cfg.book.segment
        try:
            seg = Segment.attach(name)
        except (BookError, OSError) as e:  # OSError: no fd left, …
            self.attach.failed(now, str(e))
            return
        try:
            seg.check_symbols(self.cfg.symbols)
            if seg.ring_len < self.rule.history:
                raise BookError(f"segment {name}: keeps {seg.ring_len} ticks per symbol, the rule wants "
                                f"{self.rule.history}")
        except BookError as e:
            seg.close()
            self.attach.failed(now, str(e))
            return
        self.seg = seg
        self.attach.succeeded()
        self.log.info("segment_attached", segment=name, generation=seg.generation)
        self._check_generation()

    def _check_generation(self) -> None:
        assert self.seg is not None
        gen = self.seg.generation
        if gen != self.generation:
            if self.generation >= 0:
                self.log.info("generation_changed", segment=self.seg.name, generation=gen, previous=self.generation)
            self.generation = gen

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
        tls.subscribe(self.cfg, self.log, self.news, conn)

    def _on_news(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is News:
            n: News = msg  # type: ignore[assignment]
            self.seq.data(n.seq)
            if n.symbol in self.symbols:
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
        seg = self.seg
        if seg is None or self._check_stale():
            return
        if not self.logged_on or self.resending or self.om.conn is None:
            return  # link down or resynchronising: no new orders
        slot = seg.slots[news.symbol]
        ticks = seg.ticks(slot, self.rule.history)
        if ticks is None:  # the writer lapped us or kept the slot busy: say so, decide nothing
            self.log.warning("window_unavailable", symbol=news.symbol, news_seq=news.seq, wanted=self.rule.history)
            return
        if not ticks:
            return  # never priced
        try:
            d = self.rule.decide(ticks, news, self.position(news.symbol))
        except Exception as e:
            self.log.error("rule_failed", rule=self.spec.rule, error=f"{type(e).__name__}: {e}",
                           symbol=news.symbol, news_seq=news.seq, sentiment=news.sentiment, news_ts_ns=news.ts_ns,
                           price=ticks[-1].price, tick_seq=ticks[-1].tick_seq, traceback=traceback.format_exc())
            return
        if d is None:
            return
        if not (isinstance(d, tuple) and len(d) == 2 and d[0] in ("BUY", "SELL") and type(d[1]) is int
                and d[1] > 0):
            self.log.error("rule_failed", rule=self.spec.rule, error=f"not a Decision(side, qty > 0): {d!r}",
                           symbol=news.symbol, news_seq=news.seq, sentiment=news.sentiment, news_ts_ns=news.ts_ns)
            return
        self._send(news, Decision(*d), ticks[-1].price, ticks[0].tick_seq, ticks[-1].tick_seq, len(ticks))

    def _send(self, news: News, d: Decision, price: float, first: int, last: int, n: int) -> None:
        assert self.om.conn is not None
        self.n += 1
        order = Order(order_id=f"{self.client_id}-{self.n}", symbol=news.symbol, side=d.side, qty=d.qty,
                      price=price, ts_ns=time.time_ns(), tick_ts_ns=news.ts_ns)
        self.pending[order.order_id] = order
        self.om.conn.write(frame(order))
        logs.hot("order_sent", client_id=self.client_id, order_id=order.order_id, symbol=order.symbol, side=d.side,
                 qty=d.qty, price=price, sentiment=news.sentiment, ticks=n, first_tick_seq=first, last_tick_seq=last)

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
        # Wait on the sockets only: news wakes us; the timer does the housekeeping.
        self.loop.run_once(self.next_check - time.monotonic())
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + self.period
            self._housekeeping(now)

    def _housekeeping(self, now: float) -> None:
        if self.seg is None and self.attach.due(now):
            self._attach(now)
        if self.seg is not None:
            if self.seg.replaced():
                self.log.error("segment_lost", segment=self.seg.name, reason="segment_replaced")
                self.seg.close()
                self.seg = None
            else:
                self._check_generation()
                self._check_stale()
        self.news.poll(now)
        self.om.poll(now)
        # Judged after reading (see OrderManager.step).
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
