"""The trading rules as tables of cases: contract §7's, the mean-reversion
example (resting limit orders, cancels), the one the README teaches, and the
strategy's reading of a rule's answer."""

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
    OpenOrder,
    Rule,
    RuleParams,
    Tick,
    away_bps,
    decide,
    exposure,
    news_signal,
    price_signal,
    protection,
    to_target,
    zscore,
)
from shared.strategy import checked, load_rule, takes_open_orders

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
    assert decide(prices, sentiment, position, P) == (expected and Decision(*expected))


@pytest.mark.parametrize(("prices", "sentiment", "position", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decide_on_a_deque(prices: list[float], sentiment: int, position: int,
                           expected: tuple[str, int] | None) -> None:
    buf: deque[float] = deque(prices, maxlen=8)
    assert decide(buf, sentiment, position, P) == (expected and Decision(*expected))


def test_bounded_deque_keeps_only_recent_prices() -> None:
    buf: deque[float] = deque(maxlen=4)
    for p in [*DOWN, *UP]:
        buf.append(p)
    assert decide(buf, 75, 0, P) == Decision("BUY", 10)


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
    assert decide([*prices, 20.0], 75, 0, RuleParams()) == Decision("BUY", 10)


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
    assert rule.decide(ticks(prices[-rule.history:]), news(sentiment), position, []) == (expected and
                                                                                      Decision(*expected))


def resting(side: str, leaves: int, oid: str = "s-1", age: int = 0, price: float | None = 100.0,
            cum: int = 0) -> OpenOrder:
    return OpenOrder(oid, side, cum + leaves, price, cum, leaves, age)  # type: ignore[arg-type]


# (id, position filled, open orders, sentiment) on UP prices: the §7 rule counts what is open as done
MAS_OPEN = [
    ("open_buy_counts_as_long", 0, [resting("BUY", 10)], 75, None),
    ("partly_filled_buy_counts_its_leaves", 4, [resting("BUY", 6, cum=4)], 75, None),
    ("open_sell_then_buy_signal_buys_through_it", 0, [resting("SELL", 10)], 75, ("BUY", 20)),
    ("open_buy_of_half_the_target", 0, [resting("BUY", 5)], 75, ("BUY", 5)),
]


@pytest.mark.parametrize(("position", "open_orders", "sentiment", "expected"), [c[1:] for c in MAS_OPEN],
                         ids=[c[0] for c in MAS_OPEN])
def test_moving_average_sentiment_counts_open_orders(position: int, open_orders: list[OpenOrder], sentiment: int,
                                                     expected: tuple[str, int] | None) -> None:
    rule = MovingAverageSentiment(P)
    assert rule.decide(ticks(UP[-4:]), news(sentiment), position, open_orders) == (expected and Decision(*expected))
    assert rule.cancels(ticks(UP[-4:]), news(sentiment), open_orders) == ()  # it never cancels


@pytest.mark.parametrize(("target", "position", "expected"), [
    (10, 0, ("BUY", 10)), (-10, 0, ("SELL", 10)), (0, 7, ("SELL", 7)), (0, -3, ("BUY", 3)), (5, 5, None),
])
def test_to_target(target: int, position: int, expected: tuple[str, int] | None) -> None:
    assert to_target(target, position) == (expected and Decision(*expected))
    got = to_target(target, position, 99.5, "limit", "ioc")
    assert got == (expected and Decision(*expected, 99.5, "limit", "ioc"))


@pytest.mark.parametrize(("position", "open_orders", "expected"), [
    (0, [], 0),
    (5, [resting("BUY", 10)], 15),
    (5, [resting("SELL", 3, cum=7)], 2),  # a partly filled sell: only its leaves are still to come
    (-10, [resting("BUY", 4, "a"), resting("SELL", 6, "b")], -12),
])
def test_exposure(position: int, open_orders: list[OpenOrder], expected: int) -> None:
    assert exposure(position, open_orders) == expected


MR = MeanReversionParams(window=5, entry_z=1.5, exit_z=0.5, qty=10, offset_bps=10.0, max_age=3, max_away_bps=50.0)
SPIKE_UP = [100.0, 100.0, 100.0, 100.0, 110.0]  # z = 2.0
SPIKE_DOWN = [100.0, 100.0, 100.0, 100.0, 90.0]  # z = -2.0
NEAR = [99.0, 101.0, 99.0, 101.0, 100.0]  # z = 0.0
DRIFT = [100.0, 101.0, 102.0, 103.0, 104.0]  # z = 1.41: between exit and entry

# (id, prices, position, open orders, expected order) with 10 bps inside the last price
MR_CASES = [
    ("stretched_up_sells_above", SPIKE_UP, 0, [], ("SELL", 10, 110.11)),
    ("stretched_down_buys_below", SPIKE_DOWN, 0, [], ("BUY", 10, 89.91)),
    ("stretched_up_long_flips", SPIKE_UP, 10, [], ("SELL", 20, 110.11)),
    ("stretched_up_already_short", SPIKE_UP, -10, [], None),
    ("back_near_mean_flattens_long", NEAR, 10, [], ("SELL", 10, 100.1)),
    ("back_near_mean_flattens_short", NEAR, -10, [], ("BUY", 10, 99.9)),
    ("near_mean_flat_stays", NEAR, 0, [], None),
    ("between_exit_and_entry_holds", DRIFT, -10, [], None),
    ("between_exit_and_entry_flat", DRIFT, 0, [], None),
    ("flat_prices_no_zscore", [100.0] * 5, 10, [], None),
    ("too_little_history", SPIKE_UP[1:], 0, [], None),
    ("only_the_window_counts", [50.0, *SPIKE_UP], 0, [], ("SELL", 10, 110.11)),
    ("waits_while_an_order_rests", SPIKE_DOWN, 0, [resting("BUY", 10, price=89.91)], None),
    ("waits_while_a_cancel_is_on_its_way", SPIKE_DOWN, 0, [resting("SELL", 10)._replace(canceling=True)], None),
    ("partly_filled_order_still_waits", SPIKE_DOWN, 4, [resting("BUY", 6, cum=4)], None),
    ("position_from_fills_only_after_a_partial", SPIKE_DOWN, 4, [], ("BUY", 6, 89.91)),
]


@pytest.mark.parametrize(("prices", "position", "open_orders", "expected"), [c[1:] for c in MR_CASES],
                         ids=[c[0] for c in MR_CASES])
def test_mean_reversion_rests_limit_orders(prices: list[float], position: int, open_orders: list[OpenOrder],
                                           expected: tuple[str, int, float] | None) -> None:
    rule = MeanReversion(MR)
    assert rule.history == 5
    got = rule.decide(ticks(prices[-rule.history:]), news(), position, open_orders)
    assert got == (expected and Decision(*expected, ord_type="limit", tif="day"))


# (id, last price, open orders (age, price), the order_ids it cancels): max_age 3, max_away 50 bps
MR_CANCELS = [
    ("none_open", 100.0, [], []),
    ("fresh_and_near_stays", 100.0, [("a", 0, 99.9)], []),
    ("two_news_ticks_old_stays", 100.0, [("a", 2, 99.9)], []),
    ("max_age_old_goes", 100.0, [("a", 3, 99.9)], ["a"]),
    ("older_goes", 100.0, [("a", 9, 99.9)], ["a"]),
    ("at_max_away_stays", 100.0, [("a", 0, 99.5)], []),
    ("beyond_max_away_below_goes", 100.0, [("a", 0, 99.49)], ["a"]),
    ("beyond_max_away_above_goes", 100.0, [("a", 0, 100.6)], ["a"]),
    ("price_ran_away_from_it", 101.0, [("a", 1, 100.0)], ["a"]),
    ("market_order_is_never_away", 100.0, [("a", 0, None)], []),
    ("only_the_stale_of_several", 100.0, [("a", 5, 99.9), ("b", 1, 99.9), ("c", 0, 90.0)], ["a", "c"]),
]


@pytest.mark.parametrize(("last", "orders", "expected"), [c[1:] for c in MR_CANCELS], ids=[c[0] for c in MR_CANCELS])
def test_mean_reversion_cancels_stale_orders(last: float, orders: list[tuple[str, int, float | None]],
                                             expected: list[str]) -> None:
    rule = MeanReversion(MR)
    open_orders = [resting("BUY", 10, oid, age, price) for oid, age, price in orders]
    assert rule.cancels(ticks([100.0] * 4 + [last]), news(), open_orders) == expected


def test_away_bps() -> None:
    assert away_bps(99.0, 100.0) == pytest.approx(100.0)
    assert away_bps(None, 100.0) == 0.0


def test_the_base_rule_cancels_nothing() -> None:
    assert Rule(Rule.Params()).cancels(ticks([1.0]), news(), [resting("BUY", 1)]) == ()


def test_zscore() -> None:
    assert zscore(SPIKE_UP) == pytest.approx(2.0)
    assert zscore(SPIKE_DOWN) == pytest.approx(-2.0)
    assert zscore([3.0, 3.0]) is None


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"window": 1}, "window"), ({"exit_z": 3.0}, "exit_z"), ({"entry_z": -1.0}, "exit_z"), ({"qty": 0}, "qty"),
    ({"offset_bps": -1.0}, "offset_bps"), ({"max_age": 0}, "max_age"), ({"max_away_bps": 0.0}, "max_away_bps"),
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
    assert rule.history == 31
    assert rule.decide(ticks([1.0] * 30 + [2.0]), news(), -3, []) == Decision("BUY", 13, 2.0, "limit")
    assert takes_open_orders(rule)
    with pytest.raises(config.ConfigError, match="strategies.breakout.window: must be >= 1"):
        load_rule(config.parse({"strategies": {"breakout": {"rule": "myrules:Breakout", "window": 0}}})
                         .strategies["breakout"])


# --- how the strategy reads a rule ------------------------------------------------


class ThreeArgs:
    def decide(self, ticks, news, position):  # type: ignore[no-untyped-def]
        return None


class FourArgs:
    def decide(self, ticks, news, position, open_orders):  # type: ignore[no-untyped-def]
        return None


class Starred:
    def decide(self, *args):  # type: ignore[no-untyped-def]
        return None


@pytest.mark.parametrize(("rule", "expected"), [
    (ThreeArgs(), False), (FourArgs(), True), (Starred(), True), (MovingAverageSentiment(P), True),
    (MeanReversion(MR), True),
])
def test_takes_open_orders(rule: object, expected: bool) -> None:
    assert takes_open_orders(rule) is expected


# (id, the rule's answer, what the strategy makes of it: a Decision, or None = rule_failed)
CHECKED = [
    ("a_decision", Decision("BUY", 3), Decision("BUY", 3)),
    ("a_plain_tuple", ("SELL", 2), Decision("SELL", 2)),
    ("a_limit_with_price", Decision("BUY", 3, 99.5, "limit", "ioc"), Decision("BUY", 3, 99.5, "limit", "ioc")),
    ("an_int_price", ("BUY", 3, 99), Decision("BUY", 3, 99)),
    ("zero_qty", ("BUY", 0), None),
    ("float_qty", ("BUY", 1.0), None),
    ("bool_qty", ("BUY", True), None),
    ("bad_side", ("HOLD", 1), None),
    ("negative_price", ("BUY", 1, -1.0), None),
    ("nan_price", ("BUY", 1, float("nan")), None),
    ("bool_price", ("BUY", 1, True), None),
    ("bad_ord_type", ("BUY", 1, None, "stop"), None),
    ("bad_tif", ("BUY", 1, None, None, "gtc"), None),
    ("too_long", ("BUY", 1, None, None, None, 0), None),
    ("not_a_tuple", "BUY 1", None),
    ("a_list", ["BUY", 1], None),
]


@pytest.mark.parametrize(("answer", "expected"), [c[1:] for c in CHECKED], ids=[c[0] for c in CHECKED])
def test_checked(answer: object, expected: Decision | None) -> None:
    assert checked(answer) == expected


@pytest.mark.parametrize(("price", "side", "expected"), [
    (173.20, "BUY", 174.93), (173.20, "SELL", 171.47), (100.0, "BUY", 101.0), (99.995, "SELL", 99.0),
])
def test_market_order_protection_price(price: float, side: str, expected: float) -> None:
    assert protection(price, side) == expected
