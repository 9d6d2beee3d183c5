"""Trading rules: pure classes, no I/O.

A rule is a subclass of ``Rule`` with a ``Params`` dataclass (its config
keys, with their defaults), ``history`` (how many recent ticks it wants) and
one decision method, ``decide(ticks, news, position, open_orders)``; a rule
that rests orders also says which to cancel, ``cancels(ticks, news,
open_orders)``. The config names it by ``"module:Class"``;
``MovingAverageSentiment`` is the rule of contract §7, ``MeanReversion`` one
that rests limit orders and cancels stale ones.

A rule whose ``decide`` takes three arguments (``ticks, news, position``,
the interface before the venue) still works: its ``position`` counts the
open orders as if they had filled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

Side = Literal["BUY", "SELL"]
OrdType = Literal["limit", "market"]
Tif = Literal["day", "ioc"]


class Tick(NamedTuple):
    """One price tick of a symbol, as the book's ring keeps it."""

    price: float
    ts_ns: int  # the gateway's time of the tick
    tick_seq: int  # the gateway's seq of the tick


class NewsTick(Protocol):
    """What a rule sees of the news tick that asks it to decide."""

    @property
    def symbol(self) -> str: ...

    @property
    def sentiment(self) -> int: ...  # 0..100, 50 neutral

    @property
    def ts_ns(self) -> int: ...

    @property
    def seq(self) -> int: ...


class Decision(NamedTuple):
    """An order to send: side and quantity, and optionally its price, type and time in force.

    What is left None the strategy fills in: ``ord_type`` its table's (``ord_type``, "market" by
    default); ``tif`` "day" for a limit order ("ioc" for a market one, always); ``price`` the
    latest tick's for a limit order, and for a market order a protection limit 1 % through it.
    """

    side: Side
    qty: int
    price: float | None = None
    ord_type: OrdType | None = None
    tif: Tif | None = None


class OpenOrder(NamedTuple):
    """One of the rule's orders in the news tick's symbol that may still fill: sent, not yet ended."""

    order_id: str
    side: Side
    qty: int
    price: float | None  # None: a market order without a protection price
    cum_qty: int  # filled so far
    leaves_qty: int  # still open
    age: int  # news ticks of its symbol since it was sent (after a restart: since the strategy learned of it)
    canceling: bool = False  # a cancel of it is on its way

    @property
    def signed_leaves(self) -> int:
        """``leaves_qty``, negative for a sell."""
        return self.leaves_qty if self.side == "BUY" else -self.leaves_qty


def exposure(position: int, open_orders: Sequence[OpenOrder]) -> int:
    """The position if every open order filled: ``position`` plus their signed leaves."""
    return position + sum(o.signed_leaves for o in open_orders)


class Rule:
    """The base of every rule: subclass it, give it ``Params`` and ``decide``."""

    @dataclass(frozen=True)
    class Params:
        """The rule's config keys and their defaults (none here)."""

    params: Any
    history: int = 1  # ticks the rule wants; the strategy reads this many from the ring
    name: str = ""  # "module:Class", set when the config loads the rule

    def __init__(self, params: Any) -> None:
        self.params = params

    def decide(self, ticks: Sequence[Tick], news: NewsTick, position: int,
               open_orders: Sequence[OpenOrder]) -> Decision | None:
        """The order to send now, or None.

        ``ticks``: the symbol's last ``history`` ticks, oldest first, every one
        of them (fewer only when fewer exist); ``position``: signed, what has
        filled; ``open_orders``: the rule's orders in this symbol that may still
        fill (sent and not yet ended), oldest first.
        """
        raise NotImplementedError

    def cancels(self, ticks: Sequence[Tick], news: NewsTick, open_orders: Sequence[OpenOrder]) -> Sequence[str]:
        """The order_ids of ``open_orders`` to cancel now (asked before ``decide`` on each news tick;
        an order whose cancel is on its way is not cancelled twice). None by default."""
        return ()


def protection(price: float, side: str) -> float:
    """A market order's protection price (VENUE.md): 1 % through the book's price, to the cent."""
    return round(price * (1.01 if side == "BUY" else 0.99), 2)


def order_terms(d: Decision, book_px: float, default_type: str) -> tuple[float, OrdType, Tif]:
    """The price, type and tif an order is sent with: what ``d`` leaves None filled in as ``Decision`` says,
    the book's price ``book_px``, ``default_type`` the strategy table's ``ord_type``. The live strategy and
    the backtest both price their orders here."""
    ord_type: OrdType = d.ord_type or ("limit" if default_type == "limit" else "market")
    if ord_type == "market":  # ioc at the venue anyway
        return (d.price if d.price is not None else protection(book_px, d.side)), "market", "ioc"
    return (d.price if d.price is not None else book_px), "limit", d.tif or "day"


def to_target(target: int, position: int, price: float | None = None, ord_type: OrdType | None = None,
              tif: Tif | None = None) -> Decision | None:
    """The order that moves ``position`` to ``target`` (with this price, type and tif), or None if it is there."""
    diff = target - position
    if diff == 0:
        return None
    return Decision("BUY" if diff > 0 else "SELL", abs(diff), price, ord_type, tif)


# --- the rule of contract §7 --------------------------------------------------


@dataclass(frozen=True)
class RuleParams:
    """Windows, sentiment thresholds and the target quantity."""

    short_window: int = 5
    long_window: int = 20
    bullish: int = 60
    bearish: int = 40
    qty: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.short_window < self.long_window:
            raise ValueError("short_window: must be >= 1 and below long_window")
        if not 0 <= self.bearish <= self.bullish <= 100:
            raise ValueError("bearish: need 0 <= bearish <= bullish <= 100")
        if self.qty < 1:
            raise ValueError("qty: must be >= 1")


def price_signal(prices: Sequence[float], short: int, long: int) -> Side | None:
    """BUY when the short average is above the long one, SELL below, else None."""
    if len(prices) < long:
        return None
    recent = list(prices)[-long:]  # a deque does not slice
    s = sum(recent[-short:]) / short
    lg = sum(recent) / long
    if s > lg:
        return "BUY"
    if s < lg:
        return "SELL"
    return None


def news_signal(sentiment: int, bullish: int, bearish: int) -> Side | None:
    """BUY above the bullish threshold, SELL below the bearish one, else None."""
    if sentiment > bullish:
        return "BUY"
    if sentiment < bearish:
        return "SELL"
    return None


def decide(prices: Sequence[float], sentiment: int, position: int, p: RuleParams) -> Decision | None:
    """The order to send, as (side, qty), or None.

    Only when both signals agree is the target +Q or -Q; the order is the
    difference between the target and the signed position.
    """
    sig = price_signal(prices, p.short_window, p.long_window)
    if sig is None or sig != news_signal(sentiment, p.bullish, p.bearish):
        return None
    return to_target(p.qty if sig == "BUY" else -p.qty, position)


class MovingAverageSentiment(Rule):
    """Contract §7: the moving-average crossover and the news sentiment agree."""

    Params = RuleParams  # type: ignore[assignment]
    params: RuleParams

    def __init__(self, params: RuleParams) -> None:
        super().__init__(params)
        self.history = params.long_window

    def decide(self, ticks: Sequence[Tick], news: NewsTick, position: int,
               open_orders: Sequence[OpenOrder] = ()) -> Decision | None:
        # What is open counts as done: one order per signal, as before the venue (market orders
        # by default fill or end at once; a resting limit order is never repeated).
        return decide([t.price for t in ticks], news.sentiment, exposure(position, open_orders), self.params)


# --- an example of a rule of your own: it rests limit orders ------------------


@dataclass(frozen=True)
class MeanReversionParams:
    """The window of the z-score, its entry and exit levels, the target quantity, and how its
    resting orders are priced and when they are cancelled."""

    window: int = 20
    entry_z: float = 2.0  # |z| above this: trade against the move
    exit_z: float = 0.5  # |z| below this: go flat
    qty: int = 10
    offset_bps: float = 0.0  # rest this far inside the last price: a buy at p(1 - o), a sell at p(1 + o)
    max_age: int = 5  # cancel an order still open after this many news ticks of its symbol
    max_away_bps: float = 50.0  # cancel an order priced further than this from the last price

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError("window: must be >= 2")
        if not 0 <= self.exit_z <= self.entry_z:
            raise ValueError("exit_z: need 0 <= exit_z <= entry_z")
        if self.qty < 1:
            raise ValueError("qty: must be >= 1")
        if not 0 <= self.offset_bps < 10_000:
            raise ValueError("offset_bps: need 0 <= offset_bps < 10000")
        if self.max_age < 1:
            raise ValueError("max_age: must be >= 1")
        if self.max_away_bps <= 0:
            raise ValueError("max_away_bps: must be > 0")


def zscore(prices: Sequence[float]) -> float | None:
    """How many standard deviations the last price lies from the mean; None if flat."""
    mean = sum(prices) / len(prices)
    sd = math.sqrt(sum((p - mean) ** 2 for p in prices) / len(prices))
    return None if sd == 0 else (prices[-1] - mean) / sd


def away_bps(price: float | None, last: float) -> float:
    """How far ``price`` is from ``last``, in basis points of ``last`` (a market order's: 0)."""
    return 0.0 if price is None else abs(price - last) / last * 10_000


class MeanReversion(Rule):
    """Fade a stretched price with a resting limit order: buy below ``-entry_z``, sell above
    ``entry_z``, flat once back within ``exit_z``; the news tick only says when to look.

    One order at a time per symbol: while one is open it waits, and cancels it once it is
    ``max_age`` news ticks old or ``max_away_bps`` from the price; then decides afresh.
    """

    Params = MeanReversionParams  # type: ignore[assignment]
    params: MeanReversionParams

    def __init__(self, params: MeanReversionParams) -> None:
        super().__init__(params)
        self.history = params.window

    def cancels(self, ticks: Sequence[Tick], news: NewsTick, open_orders: Sequence[OpenOrder]) -> list[str]:
        p = self.params
        last = ticks[-1].price
        return [o.order_id for o in open_orders if o.age >= p.max_age or away_bps(o.price, last) > p.max_away_bps]

    def decide(self, ticks: Sequence[Tick], news: NewsTick, position: int,
               open_orders: Sequence[OpenOrder]) -> Decision | None:
        p = self.params
        if open_orders or len(ticks) < p.window:
            return None
        z = zscore([t.price for t in ticks])
        if z is None:
            return None
        if z > p.entry_z:
            target = -p.qty
        elif z < -p.entry_z:
            target = p.qty
        elif abs(z) < p.exit_z:
            target = 0
        else:
            return None
        last, o = ticks[-1].price, p.offset_bps / 10_000
        price = round(last * (1 - o) if target > position else last * (1 + o), 2)
        return to_target(target, position, price, "limit", "day")
