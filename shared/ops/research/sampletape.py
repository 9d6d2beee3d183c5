"""Tapes made deterministically, without a stack: the shipped sample
(``deploy/tapes/sample.tape``) and the bench's big one. The same arguments
give the same bytes.

The prices move as the gateway's random walk does: round robin over the
symbols, a cent up or down per tick, a tick every 10 ms (100/s as shipped);
a news tick (a random symbol and sentiment 0..100) after every ``gap`` price
ticks. Seqs count each stream from 1.

``python -m shared.ops.research.sampletape OUT [--price-ticks N] [--news-ticks M] [--seed S]``
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from shared import tape as tape_mod

SYMBOLS = ("AAPL", "MSFT", "GOOGL")
START_NS = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC: a fixed time, so the bytes are fixed
TICK_NS = 10_000_000  # a price tick every 10 ms
SAMPLE = {"price_ticks": 7_500, "news_ticks": 150, "seed": 1}  # deploy/tapes/sample.tape (< 300 KB)
BLOCK = 4_096  # news periods written at a time


def write(path: str | os.PathLike[str], price_ticks: int, news_ticks: int, seed: int = 1,
          symbols: tuple[str, ...] = SYMBOLS) -> int:
    """Write a new tape at ``path`` (replacing any); the number of records."""
    if news_ticks < 1 or price_ticks < news_ticks:
        raise ValueError("need news_ticks >= 1 and price_ticks >= news_ticks")
    rng = np.random.default_rng(seed)
    n = len(symbols)
    cents = rng.integers(5_000, 30_000, size=n).astype(np.int64)
    gap = price_ticks // news_ticks  # price ticks before each news tick; the rest come after the last
    dt = tape_mod.dtype()
    done = 0  # price ticks written
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(tape_mod.header(symbols, START_NS))
        for first in range(0, news_ticks, BLOCK):
            periods = min(BLOCK, news_ticks - first)
            last = first + periods == news_ticks
            npx = periods * gap + (price_ticks - news_ticks * gap if last else 0)
            j = np.arange(done, done + npx, dtype=np.int64)  # global price tick numbers
            sym = (j % n).astype(np.uint8)
            steps = rng.integers(0, 2, size=npx, dtype=np.int64) * 2 - 1
            px = np.empty(npx, dtype=np.int64)
            for s in range(n):
                mine = sym == s
                walk = cents[s] + np.cumsum(steps[mine])
                px[mine] = np.maximum(walk, 1)
                if len(walk):
                    cents[s] = walk[-1]
            is_news = np.zeros(npx + periods, dtype=bool)
            is_news[(np.arange(periods) + 1) * (gap + 1) - 1] = True
            rec = np.zeros(npx + periods, dtype=dt)
            rec["kind"][is_news] = tape_mod.NEWS
            rec["sym"][~is_news] = sym
            rec["seq"][~is_news] = j + 1
            rec["ts_ns"][~is_news] = START_NS + j * TICK_NS
            rec["value"][~is_news] = px / 100
            k = np.arange(first, first + periods, dtype=np.int64)
            rec["sym"][is_news] = rng.integers(0, n, size=periods)
            rec["seq"][is_news] = k + 1
            rec["ts_ns"][is_news] = START_NS + ((k + 1) * gap - 1) * TICK_NS + TICK_NS // 2
            rec["value"][is_news] = rng.integers(0, 101, size=periods)
            f.write(rec.tobytes())
            done += npx
    os.replace(tmp, path)
    return price_ticks + news_ticks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m shared.ops.research.sampletape", description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--price-ticks", type=int, default=SAMPLE["price_ticks"])
    ap.add_argument("--news-ticks", type=int, default=SAMPLE["news_ticks"])
    ap.add_argument("--seed", type=int, default=SAMPLE["seed"])
    a = ap.parse_args(argv)
    n = write(a.out, a.price_ticks, a.news_ticks, a.seed)
    print(f"{a.out}: {n:,} records, {os.path.getsize(a.out):,} bytes")


if __name__ == "__main__":
    main()
