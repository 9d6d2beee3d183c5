"""P&L marked to market at every price tick of the tape, with numpy, a chunk at
a time: each symbol's P&L (realized + position x (last price - average cost))
after every tick and fill, the total over the symbols after every record, and
the largest fall of each from its running peak (the max drawdown, from a start
of 0). With ``sample``, the curve at each news tick, for the plot.

A symbol's position changes only at its fills (few), so between two fills its
P&L is a vector expression of its prices; the total is a cumulative sum of the
symbols' changes laid out in record order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ops.research.feed import Chunk

Change = tuple[int, int, float, float]  # (record, position, avg_price, realized) after a fill


@dataclass
class Sym:
    """One symbol carried from chunk to chunk: the position in force, the last price, P&L, peak, drawdown."""

    qty: int = 0
    avg: float = 0.0
    realized: float = 0.0
    mark: float | None = None
    pnl: float = 0.0
    peak: float = 0.0
    max_dd: float = 0.0


@dataclass
class Equity:
    """The marks, P&L and drawdowns so far; ``chunk`` takes the next chunk and its fills."""

    symbols: tuple[str, ...]
    sample: bool = False
    syms: dict[str, Sym] = field(default_factory=dict)
    total: float = 0.0
    peak: float = 0.0
    max_dd: float = 0.0
    curve: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]] = (
        field(default_factory=list))  # per chunk: news ts_ns, per-symbol P&L rows, total, drawdown

    def __post_init__(self) -> None:
        self.syms = {s: Sym() for s in self.symbols}

    def chunk(self, ch: Chunk, changes: dict[str, list[Change]]) -> None:
        """Mark the chunk's records; ``changes``: each symbol's fills in it, in order."""
        delta = np.zeros(ch.stop - ch.start)
        rows = []
        for i, name in enumerate(self.symbols):
            st = self.syms[name]
            pr = ch.prices.get(i)
            fills = changes.get(name, [])
            if pr is None and not fills:
                if self.sample:
                    rows.append(np.full(len(ch.news_at), st.pnl))
                continue
            at, pnl = self._symbol(st, pr, fills)
            delta[at - ch.start] = np.diff(pnl, prepend=st.pnl)
            if self.sample:
                k = np.searchsorted(at, ch.news_at, side="right") - 1
                rows.append(np.where(k >= 0, pnl[np.maximum(k, 0)], st.pnl))
            peaks = np.maximum.accumulate(np.concatenate(([st.peak], pnl)))[1:]
            st.max_dd = max(st.max_dd, float((peaks - pnl).max()))
            st.peak, st.pnl = float(peaks[-1]), float(pnl[-1])
        eq = self.total + np.cumsum(delta)
        peaks = np.maximum(np.maximum.accumulate(eq), self.peak)
        dd = peaks - eq
        if len(eq):
            self.max_dd = max(self.max_dd, float(dd.max()))
            self.total, self.peak = float(eq[-1]), float(peaks[-1])
        if self.sample:
            j = ch.news_at - ch.start
            per = np.vstack(rows) if rows else np.zeros((0, len(j)))
            self.curve.append((ch.ts_ns[j], per, eq[j], dd[j]))

    def _symbol(self, st: Sym, pr: Any, fills: list[Change]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The records where this symbol's P&L may change (its ticks and fills) and the P&L after each."""
        q = np.array([f[0] for f in fills], dtype=np.int64)
        qty = np.array([st.qty] + [f[1] for f in fills], dtype=np.float64)
        avg = np.array([st.avg] + [f[2] for f in fills])
        real = np.array([st.realized] + [f[3] for f in fills])
        at = pr.at if pr is not None else np.zeros(0, dtype=np.int64)
        price = pr.price if pr is not None else np.zeros(0)
        k = np.searchsorted(q, at, side="right")  # fills at or before each tick: a fill at a tick is after it
        pnl = real[k] + qty[k] * (price - avg[k])
        if len(q):
            j = np.searchsorted(at, q)
            at_tick = (j < len(at)) & (at[np.minimum(j, len(at) - 1)] == q) if len(at) else np.zeros(len(q), bool)
            # a fill between ticks: marked at the last price before it
            before = np.where(j > 0, price[np.maximum(j - 1, 0)] if len(at) else 0.0,
                              st.mark if st.mark is not None else np.nan)
            before = np.where(np.isnan(before), avg[1:], before)  # no price yet: no unrealized
            own = ~at_tick
            fill_pnl = real[1:] + qty[1:] * (before - avg[1:])
            at = np.concatenate((at, q[own]))
            pnl = np.concatenate((pnl, fill_pnl[own]))
            order = np.argsort(at, kind="stable")
            at, pnl = at[order], pnl[order]
            st.qty, st.avg, st.realized = int(qty[-1]), float(avg[-1]), float(real[-1])
        if len(price):
            st.mark = float(price[-1])
        return at, pnl
