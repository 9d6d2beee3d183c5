"""The strategy at its decision points, the venue, risk and positions, one
event at a time: pure, no I/O, no clock (the tape's times come in).

What the live strategy does on a news tick (``shared/strategy.py``), done
here without sockets: ask the rule with the symbol's last ``history`` ticks,
its filled position and its open orders (a rule of the interface before the
venue gets what is open counted in its position), then price the order as the
strategy does (``shared.rule.order_terms``: a market order with a protection
price 1 % through the last tick, a limit order at it unless the rule gives a
price). The order then meets the ordermanager's checks (``max_qty`` and
``shared.risk``, at the tape's time) and the venue's matching engine
(``shared.matching``); each fill moves the position (``shared.pnl.Position``).
Order ids are ``<client_id>-<n>`` from a counter, as live, so the same tape
gives the same ids.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from shared.matching import Engine, Exec
from shared.pnl import Position
from shared.risk import Risk
from shared.rule import Decision, Tick, order_terms

TERMINAL = ("filled", "canceled", "expired")


class NewsTick(NamedTuple):
    """A news tick as a rule sees it (``shared.rule.NewsTick``)."""

    symbol: str
    sentiment: int
    ts_ns: int
    seq: int


class OpenView(NamedTuple):
    """One of the rule's open orders as the live strategy shows it (``shared.rule.OpenOrder``)."""

    order_id: str
    side: str
    qty: int
    price: float | None
    cum_qty: int
    leaves_qty: int
    age: int  # news ticks of its symbol since it was sent
    canceling: bool = False

    @property
    def signed_leaves(self) -> int:
        return self.leaves_qty if self.side == "BUY" else -self.leaves_qty


class Order(NamedTuple):
    """What the strategy sends, priced and typed."""

    side: str
    qty: int
    price: float  # a market order's protection price
    ord_type: str
    tif: str


@dataclass(slots=True)
class Working:
    """One of our orders not yet ended, and its line in the report."""

    symbol: str
    side: str
    qty: int
    price: float | None
    born: int  # the symbol's news count when it was sent
    record: dict[str, Any]
    cum_qty: int = 0
    leaves_qty: int = 0


def takes_open_orders(rule: Any) -> bool:
    """Whether the rule's ``decide`` takes ``open_orders`` (a fourth argument), as the live strategy asks."""
    try:
        params = list(inspect.signature(rule.decide).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 4


def priced(d: Any, last: float, default_type: str) -> Order | None:
    """A rule's answer, ``(side, qty[, price, ord_type, tif])``, as the strategy sends it; None if it is not one."""
    if not isinstance(d, tuple) or not 2 <= len(d) <= 5:
        return None
    side, qty, price, ord_type, tif = (*d, None, None, None)[:5]
    if (side not in ("BUY", "SELL") or type(qty) is not int or qty <= 0 or ord_type not in (None, "limit", "market")
            or tif not in (None, "day", "ioc") or (price is not None and not (
                type(price) in (int, float) and math.isfinite(price) and price > 0))):
        return None
    return Order(side, qty, *order_terms(Decision(side, qty, price, ord_type, tif), last, default_type))


@dataclass
class Sim:
    """One strategy trading alone on the venue: feed it ``tick`` and ``news`` in tape order."""

    rule: Any
    client_id: str
    engine: Engine
    risk: Risk
    max_qty: int = 1_000_000
    ord_type: str = "market"  # the strategy table's (VENUE.md): what a rule's order is unless it says
    orders: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)
    turnover: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # traded notional
    working: dict[str, Working] = field(default_factory=dict)  # order_id -> not yet ended
    news_count: Counter[str] = field(default_factory=Counter)
    rule_errors: int = 0
    first_error: str = ""
    changes: dict[str, list[tuple[int, int, float, float]]] = field(default_factory=dict)  # see take_changes
    fed: dict[str, int] = field(default_factory=dict)  # symbol -> the record of the last tick the venue had
    n: int = 0  # orders made (the order ids' counter)
    order_no: int = 0  # orders accepted

    def __post_init__(self) -> None:
        self.open_aware = takes_open_orders(self.rule)
        self._last: tuple[Tick, int] | None = None  # the news tick's latest price tick and its record
        self.risk_open = "open_qty" in inspect.signature(self.risk.check).parameters

    def resting(self) -> set[str]:
        """The symbols where an order of ours rests (a tick there may fill it)."""
        return {w.symbol for w in self.working.values()}

    def open_orders(self, symbol: str) -> list[OpenView]:
        now = self.news_count[symbol]
        return [OpenView(oid, w.side, w.qty, w.price, w.cum_qty, w.leaves_qty, now - w.born)
                for oid, w in self.working.items() if w.symbol == symbol]

    def tick(self, symbol: str, price: float, ts_ns: int, at: int) -> None:
        """A price tick given to the venue (record ``at`` of the tape)."""
        self.fed[symbol] = at
        self._execs(self.engine.tick(symbol, price, ts_ns), at)

    def news(self, news: NewsTick, ticks: Sequence[Tick], at: int, last_at: int = -1) -> None:
        """A news tick (record ``at``) of a symbol it trades, with that symbol's last ticks (oldest first;
        the last one is record ``last_at``). The venue is given that tick before an order or cancel, if
        it has not had it: with nothing resting on a symbol, only its latest tick's quote matters."""
        self._last = (ticks[-1], last_at) if ticks else None
        self.news_count[news.symbol] += 1
        if not ticks:
            return  # never priced
        pos = self.positions.get(news.symbol)
        position = pos.qty if pos is not None else 0
        try:
            opens = self.open_orders(news.symbol) if self.working else []
            if self.open_aware:
                if opens:
                    self._cancel(self.rule.cancels(ticks, news, opens), news, at)
                    opens = self.open_orders(news.symbol)
                d = self.rule.decide(ticks, news, position, opens)
            else:  # the interface before the venue: what is open counts as filled
                d = self.rule.decide(ticks, news, position + sum(o.signed_leaves for o in opens))
        except Exception as e:  # the live strategy logs rule_failed and goes on
            self._failed(f"{type(e).__name__}: {e}", news)
            return
        if d is None:
            return
        order = priced(d, ticks[-1].price, self.ord_type)
        if order is None:
            self._failed(f"not a Decision(side, qty > 0, price > 0 or None, ord_type, tif): {d!r}", news)
            return
        self._send(news, order, ticks[-1].tick_seq, at)

    def take_changes(self) -> dict[str, list[tuple[int, int, float, float]]]:
        """Each symbol's position after each fill since the last call: (record, qty, avg_price, realized)."""
        out, self.changes = self.changes, {}
        return out

    def _failed(self, error: str, news: NewsTick) -> None:
        self.rule_errors += 1
        if not self.first_error:
            self.first_error = f"news seq {news.seq} ({news.symbol}): {error}"

    def _quote(self, symbol: str) -> None:
        """The venue's quote from the news tick's latest price tick, before it trades."""
        if self._last is not None and self.fed.get(symbol, -1) < self._last[1]:
            t, last_at = self._last
            self.tick(symbol, t.price, t.ts_ns, last_at)

    def _cancel(self, order_ids: Any, news: NewsTick, at: int) -> None:
        self._quote(news.symbol)
        for oid in order_ids:
            w = self.working.get(oid)
            if w is not None and w.symbol == news.symbol:
                self._execs(self.engine.cancel(self.client_id, oid, news.ts_ns) or [], at)

    def _send(self, news: NewsTick, o: Order, tick_seq: int, at: int) -> None:
        self.n += 1
        oid = f"{self.client_id}-{self.n}"
        rec: dict[str, Any] = {"order_id": oid, "order_no": None, "symbol": news.symbol, "side": o.side, "qty": o.qty,
                               "price": o.price, "ord_type": o.ord_type, "tif": o.tif, "ts_ns": news.ts_ns,
                               "news_seq": news.seq, "tick_seq": tick_seq, "status": "rejected", "cum_qty": 0,
                               "avg_px": None, "reject": None}
        self.orders.append(rec)
        refusal = self._refusal(news, o)
        if refusal is not None:
            rec["reject"] = refusal
            return
        self._quote(news.symbol)
        self.order_no += 1
        rec["order_no"] = self.order_no
        self.working[oid] = Working(news.symbol, o.side, o.qty, o.price, self.news_count[news.symbol], rec,
                                    leaves_qty=o.qty)
        self._execs(self.engine.order(self.order_no, self.client_id, oid, news.symbol, o.side, o.qty, o.price,
                                      o.ord_type, o.tif, news.ts_ns), at)

    def _refusal(self, news: NewsTick, o: Order) -> str | None:
        """The ordermanager's checks: max_qty, then the client's risk limits at the tape's time."""
        if o.qty > self.max_qty:
            return f"qty {o.qty} over the limit {self.max_qty}"
        pos = self.positions.get(news.symbol)
        position = pos.qty if pos is not None else 0
        open_qty = sum(w.leaves_qty for w in self.working.values() if w.symbol == news.symbol and w.side == o.side)
        now = news.ts_ns / 1e9
        if self.risk_open:
            return self.risk.check(self.client_id, news.symbol, o.side, o.qty, o.price, position, now,
                                   open_qty=open_qty)  # type: ignore[call-arg,unused-ignore]
        # before the venue, the position counted the open orders; the same sum
        signed = position + (open_qty if o.side == "BUY" else -open_qty)
        return self.risk.check(self.client_id, news.symbol, o.side, o.qty, o.price, signed, now)

    def _execs(self, execs: list[Exec], at: int) -> None:
        for x in execs:
            w = self.working.get(x.order_id)
            if w is None:  # not ours: cannot be, one client trades
                continue
            rec = w.record
            rec["status"], rec["cum_qty"], rec["avg_px"] = x.status, x.cum_qty, x.avg_px
            w.cum_qty, w.leaves_qty = x.cum_qty, x.leaves_qty
            if x.last_qty and x.last_px is not None:
                pos = self.positions.get(x.symbol) or self.positions.setdefault(x.symbol, Position())
                pos.fill(x.last_qty if x.side == "BUY" else -x.last_qty, x.last_px)
                self.turnover[x.symbol] += x.last_qty * x.last_px
                self.fills.append(msgspec.to_builtins(x))
                ch = self.changes.setdefault(x.symbol, [])
                if ch and ch[-1][0] == at:
                    ch.pop()  # several fills at one record: the position after the last
                ch.append((at, pos.qty, pos.avg_price, pos.realized))
            if x.status in TERMINAL:
                del self.working[x.order_id]
