"""The trading rule of contract §7: a pure function, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Side = Literal["BUY", "SELL"]


@dataclass(frozen=True)
class RuleParams:
    """Windows, sentiment thresholds and the target quantity."""

    short_window: int = 5
    long_window: int = 20
    bullish: int = 60
    bearish: int = 40
    qty: int = 10


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


def decide(prices: Sequence[float], sentiment: int, position: int, p: RuleParams) -> tuple[Side, int] | None:
    """The order to send, as (side, qty), or None.

    Only when both signals agree is the target +Q or -Q; the order is the
    difference between the target and the signed position.
    """
    sig = price_signal(prices, p.short_window, p.long_window)
    if sig is None or sig != news_signal(sentiment, p.bullish, p.bearish):
        return None
    target = p.qty if sig == "BUY" else -p.qty
    diff = target - position
    if diff == 0:
        return None
    return ("BUY", diff) if diff > 0 else ("SELL", -diff)
