"""strategy: consumes news and, on each news tick, asks its rule with the
symbol's last ticks from the book's ring; sends the rule's orders and cancels.

No polling: the loop waits on its sockets, and reads the ring only when news
arrives, so a window holds every tick at any rate and an idle strategy costs
nothing. Housekeeping (staleness, the segment, heartbeats) runs on a coarse
timer. Orders are tracked until acked; after a reconnect the pending ones are
resent with the same ids, and no new order is made until they are answered.

Each order carries what its rule saw (``ctx``: the news tick, the window's tick seqs,
the position, the open orders and the cancels it asked), which the ordermanager journals, so
``stack-backtest --as-live`` can ask the rule again from a tape (``shared.decision``).

Its position is what filled (contract §9): each ``exec`` from the venue, by way
of the ordermanager, moves it, and keeps the order's ``cum_qty`` and
``leaves_qty`` until the exec that ends it. It remembers the highest
``exec_id`` it has seen and logs on again with it, so the ordermanager sends
what it missed; after a process start it takes positions and open orders from
``logon_ack`` instead.
"""

from __future__ import annotations

import gc
import secrets
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from shared import config as config_mod
from shared import logs, tls
from shared.book import BookError, Segment
from shared.decision import ask, checked, context, pricing, rule_for, takes_open_orders
from shared.net import Client, Conn, Loop, Retry, Sequence, backoff
from shared.protocol import (
    PROTO,
    TERMINAL,
    Ack,
    BadMessage,
    Cancel,
    DecisionContext,
    Exec,
    Heartbeat,
    Hello,
    LocalProtocolError,
    Logon,
    LogonAck,
    Message,
    News,
    Order,
    Reject,
    frame,
)
from shared.rule import Decision, OpenOrder, Side

HOUSEKEEPING_S = 0.1  # staleness, the segment, reconnects and heartbeats: at most this far apart,
# and at most half a heartbeat interval apart

_news_decoder = msgspec.json.Decoder(News | Hello | Heartbeat | Reject)
_om_decoder = msgspec.json.Decoder(Exec | Ack | Reject | LogonAck | Heartbeat)
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


@dataclass(slots=True)
class Working:
    """One of our orders not yet ended: sent (perhaps not yet acked) or open at the venue."""

    order_id: str
    symbol: str
    side: Side
    qty: int
    price: float | None
    born: int  # the symbol's news count when it was sent (or when we learned of it)
    cum_qty: int = 0
    leaves_qty: int = 0
    canceling: bool = False

    def view(self, now: int) -> OpenOrder:
        """As a rule sees it, at the symbol's news count ``now``."""
        return OpenOrder(self.order_id, self.side, self.qty, self.price, self.cum_qty, self.leaves_qty,
                         now - self.born, self.canceling)


class Trader:
    """The strategy component: program ``strategy`` (name "") or ``strategy-<name>``."""

    def __init__(self, cfg: config_mod.Config, log: Any, name: str = "") -> None:
        self.cfg = cfg
        self.spec = cfg.strategy_named(name)
        self.rule = rule_for(cfg, self.spec)
        self.open_aware = takes_open_orders(self.rule)
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
        self.positions = {s: 0 for s in cfg.symbols}  # filled
        self.orders: dict[str, Working] = {}  # not yet ended, oldest first
        self.pending: dict[str, Order] = {}  # sent, not yet acked: resent after a logon
        self.last_exec_id: int | None = None  # the highest exec_id we know of (None after a process start)
        self.asked: int | None = None  # the last_exec_id of our last logon
        self.seen = 0  # the highest exec_id received on this connection (or asked for): one not above is a repeat
        self.counted = 0  # execs up to this exec_id are in the figures logon_ack gave
        self.news_count: Counter[str] = Counter()  # news ticks seen per symbol: the orders' age
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
        else:
            self.seq.control(self.news, conn, msg)

    def position(self, symbol: str) -> int:
        """What has filled, signed."""
        return self.positions.get(symbol, 0)

    def open_orders(self, symbol: str) -> list[OpenOrder]:
        """Our orders in ``symbol`` that may still fill, oldest first, as a rule sees them."""
        now = self.news_count[symbol]
        return [o.view(now) for o in self.orders.values() if o.symbol == symbol]

    def _on_tick(self, news: News) -> None:
        self.news_count[news.symbol] += 1
        seg = self.seg
        if seg is None or self._check_stale():
            return
        if not self.logged_on or self.resending or self.om.conn is None:
            return  # link down or resynchronising: no new orders, no cancels
        slot = seg.slots[news.symbol]
        ticks = seg.ticks(slot, self.rule.history)
        if ticks is None:  # the writer lapped us or kept the slot busy: say so, decide nothing
            self.log.warning("window_unavailable", symbol=news.symbol, news_seq=news.seq, wanted=self.rule.history)
            return
        if not ticks:
            return  # never priced
        position = self.position(news.symbol)
        open_orders = self.open_orders(news.symbol)
        try:
            d, asked = ask(self.rule, self.open_aware, ticks, news, position, open_orders,
                           lambda ids: self._cancel(ids, news))
        except Exception as e:
            self.log.error("rule_failed", rule=self.spec.rule, error=f"{type(e).__name__}: {e}",
                           symbol=news.symbol, news_seq=news.seq, sentiment=news.sentiment, news_ts_ns=news.ts_ns,
                           price=ticks[-1].price, tick_seq=ticks[-1].tick_seq, traceback=traceback.format_exc())
            return
        if d is None:
            return
        ok = checked(d)
        if ok is None:
            self.log.error("rule_failed", rule=self.spec.rule, error=f"not a Decision(side, qty > 0, price > 0 or "
                           f"None, ord_type, tif): {d!r}", symbol=news.symbol, news_seq=news.seq,
                           sentiment=news.sentiment, news_ts_ns=news.ts_ns)
            return
        self._send(news, ok, ticks, context(news.seq, ticks, position, open_orders, asked))

    def _cancel(self, order_ids: Any, news: News) -> list[OpenOrder]:
        """Send a cancel for each of these open orders of ours that has none on its way; the open
        orders of the news tick's symbol after."""
        assert self.om.conn is not None
        for oid in order_ids:
            o = self.orders.get(oid)
            if o is None or o.canceling or o.symbol != news.symbol:
                continue
            o.canceling = True
            self.om.conn.write(frame(Cancel(order_id=oid)))
            logs.hot("cancel_sent", client_id=self.client_id, order_id=oid, symbol=o.symbol, side=o.side,
                     leaves_qty=o.leaves_qty, price=o.price, age=self.news_count[o.symbol] - o.born)
        return self.open_orders(news.symbol)

    def _send(self, news: News, d: Decision, ticks: Any, ctx: DecisionContext) -> None:
        assert self.om.conn is not None
        self.n += 1
        ord_type, price, tif = pricing(d, ticks[-1].price, self.spec.ord_type)
        order = Order(order_id=f"{self.client_id}-{self.n}", symbol=news.symbol, side=d.side, qty=d.qty,
                      price=price, ts_ns=time.time_ns(), tick_ts_ns=news.ts_ns, ord_type=ord_type, tif=tif, ctx=ctx)
        try:
            data = frame(order)
        except LocalProtocolError:  # a context too big for a frame (hundreds of open orders): sent without
            order = msgspec.structs.replace(order, ctx=None)
            data = frame(order)
        self.pending[order.order_id] = order
        self.orders[order.order_id] = Working(order.order_id, order.symbol, d.side, d.qty, price,
                                              self.news_count[news.symbol], leaves_qty=d.qty)
        self.om.conn.write(data)
        logs.hot("order_sent", client_id=self.client_id, order_id=order.order_id, symbol=order.symbol, side=d.side,
                 qty=d.qty, price=price, ord_type=ord_type, tif=tif, sentiment=news.sentiment, ticks=len(ticks),
                 first_tick_seq=ticks[0].tick_seq, last_tick_seq=ticks[-1].tick_seq, news_seq=news.seq,
                 context=order.ctx is not None, ts_ns=order.ts_ns)

    # --- order entry ----------------------------------------------------------

    def _om_connected(self, conn: Conn) -> None:
        self.logged_on = False
        try:
            token = read_token(self.cfg)
        except OSError as e:
            self.log.error("token_unreadable", error=str(e))
            conn.close("no_token")
            return
        self.asked = self.last_exec_id
        conn.write(frame(Logon(proto=PROTO, client_id=self.client_id, token=token, instance=self.instance,
                               last_exec_id=self.asked)))

    def _om_down(self, reason: str) -> None:
        self.logged_on = False

    def _on_om(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is Exec:
            self._on_exec(msg)  # type: ignore[arg-type]
        elif t is Ack:
            a: Ack = msg  # type: ignore[assignment]
            self.pending.pop(a.order_id, None)
            self.resending.discard(a.order_id)
            logs.hot("order_acked", client_id=self.client_id, order_id=a.order_id, order_no=a.order_no,
                     duplicate=a.duplicate)
        elif t is Reject:
            r: Reject = msg  # type: ignore[assignment]
            if not self.logged_on:
                self._refused(r)
            elif r.reason == "unknown_order":
                self._cancel_refused(r)
            else:
                if r.order_id is not None:
                    self.pending.pop(r.order_id, None)
                    self.orders.pop(r.order_id, None)
                    self.resending.discard(r.order_id)
                self.log.warning("order_refused", order_id=r.order_id, reason=r.reason, detail=r.detail)
        elif t is LogonAck:
            self._logged_on(conn, msg)  # type: ignore[arg-type]

    def _logged_on(self, conn: Conn, la: LogonAck) -> None:
        self.logged_on = True
        self.refusals = 0
        self.om_hb_s = la.heartbeat_ms / 1000
        self.n = max(self.n, order_number(la.last_order_id, self.client_id))
        # After a process start (no exec seen), or when the ordermanager says up to which exec its
        # figures go, they are the truth; the execs it sends next that are not above that are in them.
        # Else it sends what we missed, and our own figures plus those execs are the truth.
        resync = self.last_exec_id is None or la.last_exec_id is not None
        if resync:
            self.positions = {s: 0 for s in self.cfg.symbols} | dict(la.positions)
            old = self.orders
            listed = {o.order_id: o for o in la.open_orders}
            self.orders = {}
            for o in la.open_orders:
                w = old.get(o.order_id)
                born = w.born if w is not None else self.news_count[o.symbol]
                self.orders[o.order_id] = Working(o.order_id, o.symbol, o.side, o.qty, o.price, born, o.cum_qty,
                                                  o.leaves_qty)
            for oid in self.pending:  # sent and not acked: it may be news to the ordermanager
                if oid not in listed and oid in old:
                    self.orders[oid] = old[oid]
            if la.last_exec_id is not None and self.last_exec_id is None:
                # after a start only: on a reconnect we go on asking from the last exec we *received*,
                # so one that logon_ack's figures hold but a cut link never brought is still sent
                self.last_exec_id = la.last_exec_id
        self.counted = la.last_exec_id or 0  # (None when we keep our own figures: none are counted)
        self.seen = self.asked or 0
        for w in self.orders.values():
            w.canceling = False  # a cancel may have been lost with the link: the rule asks again
        self.resending = set(self.pending)
        self.log.info("logged_on", session=la.session, positions=la.positions, last_order_id=la.last_order_id,
                      open_orders=len(la.open_orders), last_exec_id=self.last_exec_id, resync=resync,
                      resending=len(self.resending))
        if self.pending:
            conn.write(b"".join(frame(o) for o in self.pending.values()))

    def _on_exec(self, e: Exec) -> None:
        """One execution report: the position moves by its fill; the order keeps cum/leaves until it ends."""
        if e.exec_id <= self.seen:
            self.log.warning("exec_duplicate", order_id=e.order_id, exec_id=e.exec_id, seen=self.seen)
            return
        counted = e.exec_id <= self.counted
        logs.hot("exec_received", client_id=self.client_id, order_id=e.order_id, exec_id=e.exec_id,
                 status=e.status, symbol=e.symbol, side=e.side, last_qty=e.last_qty, last_px=e.last_px,
                 cum_qty=e.cum_qty, leaves_qty=e.leaves_qty, counted=counted, recv_ns=time.time_ns())
        self.seen = e.exec_id
        self.last_exec_id = max(self.last_exec_id or 0, e.exec_id)
        w = self.orders.get(e.order_id)
        if counted:  # in logon_ack's figures already; an order it did not list (one we had sent) ends here
            if e.status in TERMINAL:
                self.orders.pop(e.order_id, None)
            return
        if e.last_qty:
            self.positions[e.symbol] = self.positions.get(e.symbol, 0) + (e.last_qty if e.side == "BUY"
                                                                          else -e.last_qty)
        if e.status in TERMINAL:
            self.orders.pop(e.order_id, None)
        elif w is not None:
            w.cum_qty, w.leaves_qty = e.cum_qty, e.leaves_qty
        else:  # an order we had no record of (one the ordermanager did not list): learn it from its exec
            self.orders[e.order_id] = Working(e.order_id, e.symbol, e.side, e.cum_qty + e.leaves_qty, None,
                                              self.news_count[e.symbol], e.cum_qty, e.leaves_qty)

    def _cancel_refused(self, r: Reject) -> None:
        """``unknown_order`` for one of our cancels: the order ended before the cancel reached it
        (its last exec has come, or comes), or the ordermanager never had it."""
        w = self.orders.get(r.order_id or "")
        if w is not None:
            w.canceling = False
        self.log.info("cancel_refused", order_id=r.order_id, reason=r.reason, detail=r.detail,
                      still_open=w is not None)

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
        # Wait on the sockets only: news wakes us; the timer does the housekeeping, and buffered
        # log lines (an order sent, its execs) are written within logs.LINGER_S, not at the next timer.
        now = time.monotonic()
        due = logs.due_in(now)
        wait = self.next_check - now
        self.loop.run_once(wait if due is None else min(wait, due))
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
        if self.orders:
            self.log.info("open_at_stop", order_ids=list(self.orders), last_exec_id=self.last_exec_id)
        if self.seg is not None:
            self.seg.close()
