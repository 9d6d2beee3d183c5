"""The trading rules as tables of cases: contract §7's, the mean-reversion
example, and the one the README teaches."""

from __future__ import annotations

import re
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest

from shared.rule import (
    Decision,
    MeanReversion,
    MeanReversionParams,
    MovingAverageSentiment,
    RuleParams,
    Tick,
    decide,
    news_signal,
    price_signal,
    to_target,
    zscore,
)
from shared.strategy import load_rule

ROOT = Path(__file__).resolve().parents[1]

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


def ticks(prices: list[float]) -> list[Tick]:
    return [Tick(p, 1000 + i, 10 + i) for i, p in enumerate(prices)]


def news(sentiment: int = 50) -> SimpleNamespace:
    return SimpleNamespace(symbol="AAPL", sentiment=sentiment, ts_ns=5, seq=1)


@pytest.mark.parametrize(("prices", "sentiment", "position", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_moving_average_sentiment_rule_on_ticks(prices: list[float], sentiment: int, position: int,
                                                expected: tuple[str, int] | None) -> None:
    rule = MovingAverageSentiment(P)
    assert rule.history == P.long_window
    assert rule.decide(ticks(prices[-rule.history:]), news(sentiment), position) == expected


@pytest.mark.parametrize(("target", "position", "expected"), [
    (10, 0, ("BUY", 10)), (-10, 0, ("SELL", 10)), (0, 7, ("SELL", 7)), (0, -3, ("BUY", 3)), (5, 5, None),
])
def test_to_target(target: int, position: int, expected: tuple[str, int] | None) -> None:
    assert to_target(target, position) == expected


MR = MeanReversionParams(window=5, entry_z=1.5, exit_z=0.5, qty=10)
SPIKE_UP = [100.0, 100.0, 100.0, 100.0, 110.0]  # z = 2.0
SPIKE_DOWN = [100.0, 100.0, 100.0, 100.0, 90.0]  # z = -2.0
NEAR = [99.0, 101.0, 99.0, 101.0, 100.0]  # z = 0.0
DRIFT = [100.0, 101.0, 102.0, 103.0, 104.0]  # z = 1.41: between exit and entry

# (id, prices, position, expected order)
MR_CASES = [
    ("stretched_up_sells", SPIKE_UP, 0, ("SELL", 10)),
    ("stretched_down_buys", SPIKE_DOWN, 0, ("BUY", 10)),
    ("stretched_up_long_flips", SPIKE_UP, 10, ("SELL", 20)),
    ("stretched_up_already_short", SPIKE_UP, -10, None),
    ("back_near_mean_flattens_long", NEAR, 10, ("SELL", 10)),
    ("back_near_mean_flattens_short", NEAR, -10, ("BUY", 10)),
    ("near_mean_flat_stays", NEAR, 0, None),
    ("between_exit_and_entry_holds", DRIFT, -10, None),
    ("between_exit_and_entry_flat", DRIFT, 0, None),
    ("flat_prices_no_zscore", [100.0] * 5, 10, None),
    ("too_little_history", SPIKE_UP[1:], 0, None),
    ("only_the_window_counts", [50.0, *SPIKE_UP], 0, ("SELL", 10)),
]


@pytest.mark.parametrize(("prices", "position", "expected"), [c[1:] for c in MR_CASES],
                         ids=[c[0] for c in MR_CASES])
def test_mean_reversion(prices: list[float], position: int, expected: tuple[str, int] | None) -> None:
    rule = MeanReversion(MR)
    assert rule.history == 5
    assert rule.decide(ticks(prices[-rule.history:]), news(), position) == expected


def test_zscore() -> None:
    assert zscore(SPIKE_UP) == pytest.approx(2.0)
    assert zscore(SPIKE_DOWN) == pytest.approx(-2.0)
    assert zscore([3.0, 3.0]) is None


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"window": 1}, "window"), ({"exit_z": 3.0}, "exit_z"), ({"entry_z": -1.0}, "exit_z"), ({"qty": 0}, "qty"),
])
def test_mean_reversion_params_checked(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        MeanReversionParams(**kwargs)  # type: ignore[arg-type]


def test_the_readme_example_rule_and_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two code blocks of the README's "Write your own strategy" work as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Write your own strategy"):]
    rule_src, table_src = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    (tmp_path / "myrules.py").write_text(rule_src)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myrules", raising=False)
    exec(compile(table_src, "README table", "exec"), {})
    from shared import config

    cfg = config.parse({"strategies": {"breakout": {"rule": "myrules:Breakout", "window": 30}}})
    rule = load_rule(cfg.strategies["breakout"])
    assert rule.history == 31 and rule.decide(ticks([1.0] * 30 + [2.0]), news(), -3) == Decision("BUY", 13)
    with pytest.raises(config.ConfigError, match="strategies.breakout.window: must be >= 1"):
        load_rule(config.parse({"strategies": {"breakout": {"rule": "myrules:Breakout", "window": 0}}})
                         .strategies["breakout"])
