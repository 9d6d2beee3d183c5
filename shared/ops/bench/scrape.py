"""``deploy/bench --scrape``: what a Prometheus scrape every second costs tick-to-trade.

One private stack at the bench's tick-to-trade load; windows of equal length
alternate without and with a scraper (GET /metrics once a second), so drift
of the machine falls on both sides alike. Tick-to-trade is the journal's
``recv_ns`` − ``tick_ts_ns`` of the orders whose news tick fell in a window.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from shared.ops.bench.plan import NEWS_RATE, PRICE_RATE, T2T_STRATEGY
from shared.ops.harness import Stack
from shared.ops.stats import percentile

TARGET_PCT = 2.0


class Scraper:
    """GET /metrics every ``period`` seconds in a thread while ``on`` is set; keeps each scrape's duration."""

    def __init__(self, url: str, period: float = 1.0) -> None:
        self.url, self.period = url, period
        self.on = threading.Event()
        self.done = threading.Event()
        self.durations: list[float] = []
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            if self.on.wait(0.05):
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(self.url, timeout=5) as r:
                        r.read()
                    self.durations.append(time.perf_counter() - t)
                except OSError:
                    self.errors += 1
                self.done.wait(max(0.0, self.period - (time.perf_counter() - t)))

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.on.set()
        self.thread.join(10)


def run(workdir: Path, windows: int = 6, window_s: float = 10.0,
        say: Any = print) -> dict[str, Any]:
    """The A/B measurement; tick-to-trade samples (ns) with and without the scraper, and the scrapes."""
    stack = Stack(workdir, {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE},
                            "strategy": T2T_STRATEGY})
    say(f"scrape A/B: {windows} windows of {window_s:g} s, alternately without and with a scrape every 1 s")
    stack.start()
    try:
        stack.wait_for(lambda: stack.events("strategy", "logged_on"), timeout=30)
        time.sleep(1.0)
        url = f"http://{stack.cfg.metrics.host}:{stack.cfg.metrics.port}/metrics"
        spans: dict[bool, list[tuple[int, int]]] = {False: [], True: []}
        cpu0 = _cpu(stack, "metrics")
        with Scraper(url) as scraper:
            for i in range(windows):
                scraping = i % 2 == 1
                if scraping:
                    scraper.on.set()
                else:
                    scraper.on.clear()
                t0 = time.time_ns()
                time.sleep(window_s)
                spans[scraping].append((t0, time.time_ns()))
            scraper.on.clear()
        cpu1 = _cpu(stack, "metrics")
        time.sleep(0.5)
        cid = stack.cfg.strategy.client_id
        journal = [e for e in stack.journal() if e.get("client_id") == cid]
        t2t = {k: [e["recv_ns"] - e["tick_ts_ns"] for e in journal
                   if any(a <= e["tick_ts_ns"] < b for a, b in v)] for k, v in spans.items()}
        return {"off": t2t[False], "on": t2t[True], "scrapes": scraper.durations, "errors": scraper.errors,
                "metrics_cpu_s": cpu1 - cpu0, "window_s": window_s, "windows": windows}
    finally:
        stack.stop()


def _cpu(stack: Stack, program: str) -> float:
    from shared.observe import proc_usage

    usage = proc_usage(stack.pids()[program])
    return usage[1] if usage else float("nan")


def table(res: dict[str, Any]) -> str:
    """The comparison as a markdown table."""
    off, on = sorted(res["off"]), sorted(res["on"])
    p50_off, p50_on = percentile(off, 50) / 1000, percentile(on, 50) / 1000
    p99_off, p99_on = percentile(off, 99) / 1000, percentile(on, 99) / 1000
    change = (p50_on / p50_off - 1) * 100
    scr = sorted(res["scrapes"])
    rows = [
        ("tick-to-trade p50 (µs)", f"{p50_off:,.0f}", f"{p50_on:,.0f}", f"{change:+.1f} %",
         f"< +{TARGET_PCT:g} %", "pass" if change < TARGET_PCT else "FAIL"),
        ("tick-to-trade p99 (µs)", f"{p99_off:,.0f}", f"{p99_on:,.0f}", f"{(p99_on / p99_off - 1) * 100:+.1f} %",
         "", ""),
        ("orders measured", f"{len(off):,}", f"{len(on):,}", "", "", ""),
        ("scrapes (failed)", "", f"{len(scr)} ({res['errors']})", "", "", ""),
        ("scrape time p50 / max (ms)", "", f"{percentile(scr, 50) * 1000:.1f} / {scr[-1] * 1000:.1f}" if scr else "-",
         "", "", ""),
        ("metrics program CPU per scrape (ms)", "", f"{res['metrics_cpu_s'] / max(len(scr), 1) * 1000:.1f}",
         "", "", ""),
    ]
    head = "| figure | no scrape | scrape every 1 s | change | target | pass/fail |\n|---|---|---|---|---|---|"
    return head + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)
