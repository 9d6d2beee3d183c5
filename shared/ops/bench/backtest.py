"""deploy/bench's backtest rows (issue 16): ``stack-backtest`` of the §7 rule
(the shipped ``[strategy]``) over a tape of millions of price ticks and
thousands of news ticks, made in a temporary directory, beside a bare numpy
pass over the same tape in the same run. Each runs in a process of its own,
so its peak RSS is its own; the tape is read once before either, so both find
it in the page cache.

Alone: ``python -m shared.ops.bench.backtest [PRICE_TICKS [NEWS_TICKS]]``.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.ops.bench.plan import say

TICKS_MIN = 1_000_000  # issue 16: ticks/s on one core
RSS_MAX_MB = 200.0


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: since its exec; ru_maxrss would count the parent's from before it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _figures(ticks: int, wall0: float, cpu0: float, **extra: Any) -> dict[str, Any]:
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"ticks": ticks, "wall_s": wall, "cpu_s": cpu, "rss_mb": peak_rss_mb(), **extra}


def bare(path: str) -> dict[str, Any]:
    """The least a pass over the tape can do with numpy: map it, and per chunk sum each symbol's values
    by kind (every record read), giving the chunk's pages back as the backtest does."""
    import numpy as np

    from shared import tape as tape_mod
    from shared.ops.research.feed import CHUNK

    wall0, cpu0 = time.perf_counter(), time.process_time()
    n = (os.path.getsize(path) - tape_mod.RECORDS_OFFSET) // tape_mod.RECORD_SIZE
    sums = np.zeros(512)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    records = np.frombuffer(mm, tape_mod.dtype(), count=n, offset=tape_mod.RECORDS_OFFSET)
    for a in range(0, n, CHUNK):
        r = records[a: a + CHUNK]
        sums += np.bincount(r["kind"].astype(np.int64) * 256 + r["sym"], weights=r["value"], minlength=512)
        end = tape_mod.RECORDS_OFFSET + min(n, a + CHUNK) * tape_mod.RECORD_SIZE
        mm.madvise(mmap.MADV_DONTNEED, 0, end - end % mmap.PAGESIZE)
    return _figures(n, wall0, cpu0, checksum=float(sums.sum()))


def backtest(path: str) -> dict[str, Any]:
    """stack-backtest's run of the shipped [strategy] over the tape (no report printed)."""
    from shared import config
    from shared.ops.research import backtest as bt
    from shared.ops.research.feed import Feed

    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = bt.run(Feed(path), bt.Setup(config.load(config.DEFAULT_PATH)))
    return _figures(res.price_ticks + res.news_ticks, wall0, cpu0, orders=len(res.sim.orders),
                    fills=len(res.sim.fills))


def _child(kind: str, path: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "shared.ops.bench.backtest", "--child", kind, str(path)],
                       capture_output=True, text=True, timeout=900, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"backtest bench ({kind}) failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def measure(price_ticks: int, news_ticks: int, workdir: Path | None = None) -> dict[str, Any]:
    """Make the tape, read it once (into the page cache), then the bare pass and the backtest."""
    from shared.ops.research import sampletape

    with tempfile.TemporaryDirectory(prefix="tsbt", dir=workdir) as d:
        path = Path(d) / "big.tape"
        say(f"backtest: a tape of {price_ticks:,} price and {news_ticks:,} news ticks")
        sampletape.write(path, price_ticks, news_ticks)
        _child("bare", path)  # warm: the tape from the page cache for both
        say("backtest: a bare numpy pass, then stack-backtest of the §7 rule")
        out = {"price_ticks": price_ticks, "news_ticks": news_ticks, "tape_mb": path.stat().st_size / 2**20,
               "bare": _child("bare", path), "backtest": _child("backtest", path),
               "load": os.getloadavg()[0]}
    return out


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """The bench table's rows: ticks/s (wall clock and per CPU second) and peak RSS, beside the bare pass."""
    b, bt = res["bare"], res["backtest"]
    wall, cpu = bt["ticks"] / bt["wall_s"], bt["ticks"] / bt["cpu_s"]
    bwall, bcpu = b["ticks"] / b["wall_s"], b["ticks"] / b["cpu_s"]
    what = f"{res['price_ticks']:,} price + {res['news_ticks']:,} news ticks"
    return [
        (f"backtest of the §7 rule, {what} (ticks/s, one core: wall clock (per CPU second))",
         f"{wall:,.0f} ({cpu:,.0f})",
         f"{bwall:,.0f} ({bcpu:,.0f}) bare numpy pass", f"{cpu / bcpu:.2f}×", "", f"≥ {TICKS_MIN:,} (issue 16)",
         "pass" if cpu >= TICKS_MIN else "FAIL"),
        (f"backtest peak RSS, the tape ({res['tape_mb']:,.0f} MB) memory-mapped (MB)", f"{bt['rss_mb']:,.1f}",
         f"{b['rss_mb']:,.1f} bare numpy pass", f"{bt['rss_mb'] / b['rss_mb']:.2f}×", "",
         f"≤ {RSS_MAX_MB:g} MB (issue 16)", "pass" if bt["rss_mb"] <= RSS_MAX_MB else "FAIL"),
    ]


def note(res: dict[str, Any]) -> str:
    """How the rows were made, for the notes under the table."""
    bt = res["backtest"]
    return (f"- Backtest: `shared/ops/research/sampletape.py` writes a tape of {res['price_ticks']:,} price and"
            f" {res['news_ticks']:,} news ticks ({res['tape_mb']:,.0f} MB) in a temporary directory; after one read"
            " into the page cache, a bare numpy pass (map, sum each symbol's values per chunk) and"
            " `stack-backtest`'s run of the shipped `[strategy]` (the §7 rule, market orders through the venue's"
            f" engine: {bt['orders']:,} orders, {bt['fills']:,} fills) each run in a process of its own; ticks/s by"
            " the wall clock and per CPU second of that process (the verdict takes the CPU figure, which other"
            f" processes on the machine do not slow; the ratio is of CPU figures too; load average then"
            f" {res['load']:.1f}), peak RSS its VmHWM.")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        print(json.dumps(bare(args[2]) if args[1] == "bare" else backtest(args[2])))
        return
    price = int(args[0]) if args else 10_000_000
    news = int(args[1]) if len(args) > 1 else 50_000
    res = measure(price, news)
    for r in rows(res):
        print("| " + " | ".join(r) + " |")
    print(note(res))


if __name__ == "__main__":
    main()
