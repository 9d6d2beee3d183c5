"""``--plot FILE.png``: a backtest's P&L over time per symbol and in all, and
its drawdown below (matplotlib, the ``plot`` extra), sampled at each news tick."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shared.ops.research.backtest import Result


class NoMatplotlib(RuntimeError):
    """matplotlib is not installed."""


def draw(res: Result, path: str | os.PathLike[str], title: str = "") -> None:
    """Write the PNG; NoMatplotlib when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NoMatplotlib("--plot needs matplotlib: deploy/install plot (or pip install 'tradestack[plot]')") from None
    curve = res.equity.curve
    ts = np.concatenate([c[0] for c in curve]) if curve else np.zeros(0, np.int64)
    per = np.hstack([c[1] for c in curve]) if curve else np.zeros((len(res.feed.symbols), 0))
    total = np.concatenate([c[2] for c in curve]) if curve else np.zeros(0)
    dd = np.concatenate([c[3] for c in curve]) if curve else np.zeros(0)
    t0 = res.feed.first_ts() or 0
    x = (ts - t0) / 60e9  # minutes into the tape
    fig: Any
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), gridspec_kw={"height_ratios": [3, 1]})
    for i, sym in enumerate(res.feed.symbols):
        if i < len(per) and len(x):
            top.plot(x, per[i], lw=1, label=sym)
    top.plot(x, total, lw=1.8, color="black", label="total")
    top.axhline(0, color="grey", lw=0.5)
    top.set_ylabel("P&L")
    top.legend(loc="upper left", fontsize="small")
    top.set_title(title or "backtest")
    bottom.fill_between(x, -dd, 0, color="tab:red", alpha=0.4, step="post")
    bottom.set_ylabel("drawdown")
    bottom.set_xlabel("minutes into the tape")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
