"""The trading rule of contract §7, as a table of cases."""

from __future__ import annotations

from collections import deque

import pytest

from shared.rule import RuleParams, decide, news_signal, price_signal

P = RuleParams(short_window=2, long_window=4, bullish=60, bearish=40, qty=10)
UP = [100.0, 101.0, 102.0, 103.0, 110.0]  # short 106.5 > long 104
DOWN = [110.0, 109.0, 108.0, 107.0, 90.0]  # short 98.5 < long 103.5
FLAT = [100.0, 100.0, 100.0, 100.0]

# (id, prices, sentiment, position, expected order)
CASES = [
    ("assignment_up_bullish", UP, 75, 0, ("BUY", 10)),
    ("assignment_down_bearish", DOWN, 25, 0, ("SELL", 10)),
    ("up_neutral_news", UP, 50, 0, None),
    ("down_neutral_news", DOWN, 50, 0, None),
    ("up_but_bearish", UP, 25, 0, None),
    ("down_but_bullish", DOWN, 75, 0, None),
    ("at_bullish_threshold", UP, 60, 0, None),
    ("just_above_bullish", UP, 61, 0, ("BUY", 10)),
    ("at_bearish_threshold", DOWN, 40, 0, None),
    ("just_below_bearish", DOWN, 39, 0, ("SELL", 10)),
    ("equal_averages", FLAT, 75, 0, None),
    ("equal_averages_not_constant", [5.0, 1.0, 2.0, 4.0, 2.0, 4.0], 75, 0, None),  # short 3 == long 3
    ("too_little_history", UP[-3:], 75, 0, None),
    ("no_history", [], 75, 0, None),
    ("exactly_long_window", UP[-4:], 75, 0, ("BUY", 10)),
    ("already_long", UP, 75, 10, None),
    ("already_short", DOWN, 25, -10, None),
    ("short_to_long", UP, 75, -10, ("BUY", 20)),
    ("long_to_short", DOWN, 25, 10, ("SELL", 20)),
    ("partly_long", UP, 75, 4, ("BUY", 6)),
    ("over_long_target_sells_down", UP, 75, 15, ("SELL", 5)),
    ("old_history_ignored", [1000.0, 1.0, *UP], 75, 0, ("BUY", 10)),
]


@pytest.mark.parametrize(("prices", "sentiment", "position", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decide(prices: list[float], sentiment: int, position: int, expected: tuple[str, int] | None) -> None:
    assert decide(prices, sentiment, position, P) == expected


@pytest.mark.parametrize(("prices", "sentiment", "position", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decide_on_a_deque(prices: list[float], sentiment: int, position: int,
                           expected: tuple[str, int] | None) -> None:
    buf: deque[float] = deque(prices, maxlen=8)
    assert decide(buf, sentiment, position, P) == expected


def test_bounded_deque_keeps_only_recent_prices() -> None:
    buf: deque[float] = deque(maxlen=4)
    for p in [*DOWN, *UP]:
        buf.append(p)
    assert decide(buf, 75, 0, P) == ("BUY", 10)


@pytest.mark.parametrize(("prices", "expected"), [(UP, "BUY"), (DOWN, "SELL"), (FLAT, None), (UP[:3], None)])
def test_price_signal(prices: list[float], expected: str | None) -> None:
    assert price_signal(prices, 2, 4) == expected


@pytest.mark.parametrize(("sentiment", "expected"),
                         [(75, "BUY"), (25, "SELL"), (50, None), (60, None), (40, None), (100, "BUY"), (0, "SELL")])
def test_news_signal(sentiment: int, expected: str | None) -> None:
    assert news_signal(sentiment, 60, 40) == expected


def test_defaults_are_the_contracts() -> None:
    assert RuleParams() == RuleParams(short_window=5, long_window=20, bullish=60, bearish=40, qty=10)


def test_default_windows_need_twenty_prices() -> None:
    prices = [float(i) for i in range(1, 20)]
    assert decide(prices, 75, 0, RuleParams()) is None
    assert decide([*prices, 20.0], 75, 0, RuleParams()) == ("BUY", 10)
