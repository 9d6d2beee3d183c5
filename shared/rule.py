"""Trading rules: pure classes, no I/O.

A rule is a subclass of ``Rule`` with a ``Params`` dataclass (its config
keys, with their defaults), ``history`` (how many recent ticks it wants) and
one decision method, ``decide(ticks, news, position)``. The config names it
by ``"module:Class"``; ``MovingAverageSentiment`` is the rule of contract §7.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

Side = Literal["BUY", "SELL"]


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
    """An order to send: side and quantity; the strategy prices it at the latest tick."""

    side: Side
    qty: int


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

    def decide(self, ticks: Sequence[Tick], news: NewsTick, position: int) -> Decision | None:
        """The order to send now, or None.

        ``ticks``: the symbol's last ``history`` ticks, oldest first, every one
        of them (fewer only when fewer exist); ``position``: signed, counting
        acknowledged and pending orders.
        """
        raise NotImplementedError


def to_target(target: int, position: int) -> Decision | None:
    """The order that moves ``position`` to ``target``, or None if it is there."""
    diff = target - position
    if diff == 0:
        return None
    return Decision("BUY", diff) if diff > 0 else Decision("SELL", -diff)


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

    def decide(self, ticks: Sequence[Tick], news: NewsTick, position: int) -> Decision | None:
        return decide([t.price for t in ticks], news.sentiment, position, self.params)


# --- an example of a rule of your own -----------------------------------------


@dataclass(frozen=True)
class MeanReversionParams:
    """The window of the z-score, its entry and exit levels, the target quantity."""

    window: int = 20
    entry_z: float = 2.0  # |z| above this: trade against the move
    exit_z: float = 0.5  # |z| below this: go flat
    qty: int = 10

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError("window: must be >= 2")
        if not 0 <= self.exit_z <= self.entry_z:
            raise ValueError("exit_z: need 0 <= exit_z <= entry_z")
        if self.qty < 1:
            raise ValueError("qty: must be >= 1")


def zscore(prices: Sequence[float]) -> float | None:
    """How many standard deviations the last price lies from the mean; None if flat."""
    mean = sum(prices) / len(prices)
    sd = math.sqrt(sum((p - mean) ** 2 for p in prices) / len(prices))
    return None if sd == 0 else (prices[-1] - mean) / sd


class MeanReversion(Rule):
    """Fade a stretched price: short above ``entry_z``, long below ``-entry_z``,
    flat once back within ``exit_z``; the news tick only says when to look."""

    Params = MeanReversionParams  # type: ignore[assignment]
    params: MeanReversionParams

    def __init__(self, params: MeanReversionParams) -> None:
        super().__init__(params)
        self.history = params.window

    def decide(self, ticks: Sequence[Tick], news: NewsTick, position: int) -> Decision | None:
        p = self.params
        if len(ticks) < p.window:
            return None
        z = zscore([t.price for t in ticks])
        if z is None:
            return None
        if z > p.entry_z:
            return to_target(-p.qty, position)
        if z < -p.entry_z:
            return to_target(p.qty, position)
        if abs(z) < p.exit_z:
            return to_target(0, position)
        return None
