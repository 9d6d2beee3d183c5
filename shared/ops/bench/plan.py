"""The bench's shared pieces: what it runs (the plan, the rates, the strategy params), its targets, and ``say``.

Every other module of the bench imports these from here, so none of them imports another's main.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

NEWS_RATE, PRICE_RATE, BOOK_RATE = 200, 1000, 10_000
# Most news makes an order: any non-neutral sentiment is a signal, and short
# windows make the price signal flip often (the rule still decides).
T2T_STRATEGY = {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 4}
STRATEGIES = 4  # trading at once in the run that also measures recovery: [strategy], [strategies.s2] ... (issue 9)
RUNS = (1, 4, 8)  # the tick-to-trade runs: strategies trading at once in each (issue 17)
FANOUTS = (1, 2, 4, 8)  # bare relays of the fan-out floors (1: the two-hop chain)
# The windows run: the default windows (5 and 20 ticks), any non-neutral news a signal.
WINDOW_STRATEGY = {"bullish": 50, "bearish": 50}
WINDOW_RATE, WINDOW_NEWS = 50_000, 50
PROGRAMS = ("gateway", "exchange", "orderbook", "strategy", "ordermanager", "bootstrap", "auditor", "metrics")
# What the seed system reported (seeds/: performance report, README).
SEED_T2T_MEAN_US = 3200.0
SEED_TICKS_S = 99.5
SEED_BOOK_BYTES = 144
# Issue 4's targets, and issue 9's (per strategy, four of them; an idle strategy); issue 17's: each
# strategy beside the floor of as many relays, for the runs of these numbers of strategies.
T2T_P50_X, T2T_P99_X = 1.5, 3.0
T2T_TARGET_RUNS = (1, 4)
IDLE_MAX = 0.01
FEED_MIN, FEED_RAW_SHARE = 200_000, 0.25
BOOK_P99_US = 1000.0
OM_MIN = 100_000
RSS_MAX_MB = 50.0
UP_TARGET_S = 15.0  # issue 8: kill -9 supervisord -> deploy/up -> all RUNNING and orders flowing


RECORD_RATE = 200_000  # issue 16: stack-record keeps up with the gateway at this many price ticks/s
RECORD_NEWS = 200  # news ticks/s beside them (the stack's tick-to-trade rate)


@dataclass(frozen=True)
class TapePlan:
    """The tape rows (``tapes``): the recording beside the gateway's walk, the tape served at speed 0."""

    rate: int = RECORD_RATE  # price ticks/s of the walk the recorder records
    seconds: float = 5.0  # the measured window of the recording
    serve_prices: int = 1_000_000  # the tape served at speed 0
    serve_news: int = 5_000
    raw_s: float = 2.0  # the raw stream's run, when the caller has none


# Quick: the plumbing, not figures.
QUICK_TAPE = TapePlan(rate=20_000, seconds=1.0, serve_prices=50_000, serve_news=500, raw_s=0.5)


@dataclass(frozen=True)
class Plan:
    """How long each part runs."""

    feed_s: float = 20.0
    feed_tries: int = 3  # runs of the price feed, the configured rate stepped down after each one not clean
    t2t_s: float = 40.0
    floor_n: int = 2000
    raw_s: float = 3.0
    book_s: float = 8.0
    om_s: float = 5.0
    kills: int = 5
    up_kills: int = 3
    reads: int = 200_000
    windows_s: float = 10.0
    idle_s: float = 10.0
    strategies: tuple[int, ...] = RUNS
    fanouts: tuple[int, ...] = FANOUTS
    oe_orders: int = 25_000  # per connection of the outside order-entry client
    backtest_prices: int = 10_000_000  # issue 16: the backtest's tape
    backtest_news: int = 50_000
    venue_scale: int = 1  # the venue's restart journal and engine run, divided by this
    venue_lines: int | None = None  # the restart's journal lines, if not 1,000,000 / venue_scale
    fourhop_s: float = 7.0  # each run of the four-hop floor (issue 15), at the stack's pace: while it trades, then idle
    tape: TapePlan = TapePlan()  # issue 16: stack-record at 200,000 ticks/s, a tape served at speed 0


# Each timed window about a second (none of them judged), and at most one step down of the feed's rate: the
# time of a quick run is its processes' starts, not these.
QUICK = Plan(feed_s=1.0, feed_tries=2, t2t_s=2.0, floor_n=200, raw_s=0.5, book_s=0.5, om_s=0.5, kills=1, up_kills=1,
             reads=20_000, windows_s=1.0, idle_s=1.0, strategies=(1, STRATEGIES), fanouts=(1, STRATEGIES),
             oe_orders=2_500, backtest_prices=300_000, backtest_news=1_500, venue_scale=10, venue_lines=20_000,
             fourhop_s=1.0, tape=QUICK_TAPE)


@dataclass(frozen=True)
class ABPlan:
    """How much of each figure ``deploy/bench --against`` takes."""

    oe_rounds: int = 4  # order-entry runs per side, alternating
    orders: int = 25_000  # per connection: the outside client
    conns: int = 4
    t2t_rounds: int = 2  # tick-to-trade runs per side and number of strategies, alternating
    t2t_s: float = 20.0
    strategies: tuple[int, ...] = RUNS
    floor_n: int = 2000  # news per fan-out floor


# Quick: the plumbing, not figures (each stack start is a few seconds; under load, twenty).
QUICK_AB = ABPlan(oe_rounds=1, orders=2_500, t2t_rounds=1, t2t_s=2.0, strategies=(1,), floor_n=200)


_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress, on stderr (stdout carries only the table)."""
    print(f"bench: {time.monotonic() - _T0:6.1f} s  {msg}", file=sys.stderr, flush=True)
