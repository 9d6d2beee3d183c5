"""A backtest: one strategy of a config run over a tape (contract §10), with
the venue's engine, the ordermanager's risk checks and the stack's P&L code,
and no sockets, processes or clock.

The price path is taken a chunk at a time with numpy (``feed``): between two
news ticks only a symbol's last ``history`` prices (the rule's window, as the
strategy reads it from the ring) and the venue's quote matter, so a price tick
reaches Python only when it is the last before an order on its symbol, or
while an order of ours rests on its symbol (then every one does, in tape
order, as the live venue sees them). The marks are taken at every tick with
numpy (``equity``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from shared import config as config_mod
from shared.decision import rule_for
from shared.matching import Engine
from shared.ops.research.equity import Equity
from shared.ops.research.feed import Chunk, Feed
from shared.ops.research.sim import NewsTick, Sim
from shared.risk import Risk
from shared.rule import Tick

VENUE_DEFAULTS = {"spread_bps": 2.0, "depth": 100}  # [exchange]'s, where the config has none


@dataclass(frozen=True)
class Setup:
    """What a run needs from the config: the strategy, its rule's params, the venue and the risk limits."""

    cfg: config_mod.Config
    strategy: str = ""  # "" for [strategy], else the name of a [strategies.<name>] table
    params: tuple[tuple[str, Any], ...] = ()  # the rule's params set over the table's (a sweep's)

    def spec(self) -> config_mod.Strategy:
        """The strategy's table, with ``params`` set; ConfigError if it has no such table."""
        st = self.cfg.strategy_named(self.strategy)
        return dataclasses.replace(st, params={**st.params, **dict(self.params)}) if self.params else st

    def rule(self) -> Any:
        """The rule built from its params as the strategy builds it (shared/strategy.py, also checking
        that the ring keeps the ticks it wants); ConfigError naming a bad one."""
        return rule_for(self.cfg, self.spec())

    def venue(self) -> tuple[float, int]:
        """``[exchange]`` spread_bps and depth (contract §9)."""
        ex = getattr(self.cfg, "exchange", None)
        return (float(getattr(ex, "spread_bps", VENUE_DEFAULTS["spread_bps"])),
                int(getattr(ex, "depth", VENUE_DEFAULTS["depth"])))


@dataclass
class Result:
    """A run's outcome: the sim (orders, fills, positions), the marks and the equity."""

    setup: Setup
    rule: Any
    feed: Feed
    sim: Sim
    equity: Equity
    price_ticks: int
    news_ticks: int

    @property
    def marks(self) -> dict[str, float]:
        return {s: st.mark for s, st in self.equity.syms.items() if st.mark is not None}


class _Carry(NamedTuple):
    """A symbol's last ``history`` price ticks before a chunk: records, prices, seqs, times."""

    at: np.ndarray[Any, Any]
    price: np.ndarray[Any, Any]
    seq: np.ndarray[Any, Any]
    ts_ns: np.ndarray[Any, Any]


class _Windows:
    """One symbol's windows at its news ticks in a chunk (the i-th news: ``ticks(i)``), gathered with
    numpy a block of news at a time, so a chunk thick with news costs no more memory than a block."""

    CELLS = 1 << 18  # ticks gathered at once

    def __init__(self, ch: Chunk, keep: _Carry | None, pr: Any, news: np.ndarray[Any, Any], history: int) -> None:
        self.ch, self.keep, self.history = ch, keep, history
        parts = [x for x in (keep, pr) if x is not None]
        self.at = np.concatenate([x.at for x in parts]) if parts else np.zeros(0, np.int64)
        self.price = np.concatenate([x.price for x in parts]) if parts else np.zeros(0)
        self.k = np.searchsorted(self.at, news)  # ticks before each news tick
        self.block = max(1, self.CELLS // history)
        self.lo = self.hi = 0
        self.rows: tuple[list[list[float]], list[list[int]], list[list[int]], list[int], list[int]] = (
            [], [], [], [], [])

    def field(self, j: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        """seq or ts_ns of ticks ``j`` (indices into ``at``): from the carry, or from the chunk's records."""
        out = getattr(self.ch, name)[np.maximum(self.at[j] - self.ch.start, 0)]
        lk = len(self.keep.at) if self.keep is not None else 0
        if lk:
            out = np.where(j < lk, getattr(self.keep, name)[np.minimum(j, lk - 1)], out)
        return out

    def carry(self) -> _Carry:
        """The last ``history`` ticks, for the next chunk."""
        tail = np.arange(max(0, len(self.at) - self.history), len(self.at))
        return _Carry(self.at[tail], self.price[tail], self.field(tail, "seq"), self.field(tail, "ts_ns"))

    def ticks(self, i: int) -> tuple[list[Tick], int]:
        """The window at news ``i`` (its last ``history`` ticks, oldest first; fewer when fewer exist)
        and the record of its last tick (-1 with none)."""
        if not self.lo <= i < self.hi:
            self._load(i)
        price, ts, seq, n, last = self.rows
        r = i - self.lo
        if not n[r]:
            return [], -1
        a = self.history - n[r]
        return list(map(Tick, price[r][a:], ts[r][a:], seq[r][a:])), last[r]

    def _load(self, i: int) -> None:
        """Gather the windows of news ``i`` onwards, a block of them."""
        self.lo, self.hi = i, min(len(self.k), i + self.block)
        k = self.k[self.lo:self.hi]
        if not len(self.at):
            self.rows = ([], [], [], [0] * len(k), [0] * len(k))
            return
        j = np.maximum(k[:, None] + np.arange(-self.history, 0)[None, :], 0)
        self.rows = (self.price[j].tolist(), self.field(j, "ts_ns").tolist(), self.field(j, "seq").tolist(),
                     np.minimum(k, self.history).tolist(), self.at[j[:, -1]].tolist())


def run(feed: Feed, setup: Setup, sample: bool = False) -> Result:
    """The strategy over every chunk of the tape; ConfigError for a bad strategy or param,
    shared.tape.TapeError at a bad record."""
    rule = setup.rule()
    spec = setup.spec()
    spread_bps, depth = setup.venue()
    sim = Sim(rule, spec.client_id, Engine(spread_bps, depth), Risk(setup.cfg.risk), setup.cfg.ordermanager.max_qty,
              getattr(spec, "ord_type", "market"))
    symbols = feed.symbols
    trades = [i for i, s in enumerate(symbols) if not spec.symbols or s in spec.symbols]
    equity = Equity(symbols, sample)
    keep: dict[int, _Carry] = {}
    price_ticks = news_ticks = 0
    for ch in feed.chunks():
        wins = {s: _Windows(ch, keep.get(s), ch.prices.get(s), ch.news_at[ch.news_sym == s], rule.history)
                for s in trades}
        keep = {s: w.carry() for s, w in wins.items()}
        _news(ch, sim, wins, symbols)
        _catch_up(sim, ch, symbols, ch.stop)
        equity.chunk(ch, sim.take_changes())
        price_ticks += sum(len(p.at) for p in ch.prices.values())
        news_ticks += len(ch.news_at)
    return Result(setup, rule, feed, sim, equity, price_ticks, news_ticks)


def _news(ch: Chunk, sim: Sim, wins: dict[int, _Windows], symbols: tuple[str, ...]) -> None:
    """Every news tick of the chunk, in order."""
    row = dict.fromkeys(wins, 0)
    j = ch.news_at - ch.start
    for p, s, value, seq, ts in zip(ch.news_at.tolist(), ch.news_sym.tolist(), ch.news_value.tolist(),
                                    ch.seq[j].tolist(), ch.ts_ns[j].tolist(), strict=True):
        if sim.working:
            _catch_up(sim, ch, symbols, p)
        w = wins.get(s)
        if w is None:
            continue  # a symbol the strategy does not trade
        ticks, last_at = w.ticks(row[s])
        row[s] += 1
        sim.news(NewsTick(symbols[s], int(value), ts, seq), ticks, p, last_at)


def _catch_up(sim: Sim, ch: Chunk, symbols: tuple[str, ...], before: int) -> None:
    """Give the venue every tick of the chunk before record ``before`` of each symbol where an order
    of ours rests, in tape order (several symbols: merged by record)."""
    index = {name: i for i, name in enumerate(symbols)}
    runs = []
    for name in sorted(sim.resting()):
        s = index.get(name)
        pr = ch.prices.get(s) if s is not None else None
        if pr is None:
            continue
        a, b = np.searchsorted(pr.at, [max(sim.fed.get(name, -1) + 1, ch.start), before])
        if b > a:
            runs.append((np.full(b - a, s), pr.at[a:b], pr.price[a:b]))
    if not runs:
        return
    sym, at, price = (np.concatenate(x) for x in zip(*runs, strict=True))
    order = np.argsort(at, kind="stable")
    at = at[order]
    for s, p, px, t in zip(sym[order].tolist(), at.tolist(), price[order].tolist(), ch.ts_ns[at - ch.start].tolist(),
                           strict=True):
        name = symbols[s]
        if name in sim.resting():
            sim.tick(name, px, t, p)
