"""deploy/bench: the stack's figures, each beside its reference measured in
the same run, as one markdown table (issues 4, 9 and 17).

The references run first, with no stack up (bare loopback processes from
``shared.ops.bench.loopback`` and the fan-out floors of ``fanout``); then the
gateway and ``stack-record`` alone (``tapes``); then private stacks under the
real supervisord (logging on, journal on, the default durability): one for the
price feed, the book, the strategy's windows and idle CPU, and the
ordermanager; then one per tick-to-trade run (1, 4 and 8 strategies), each
followed by the floor of as many relays while it runs; the run of four
strategies also measures recovery. ``--against REV`` is the A/B mode instead
(``ab``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.book import Segment
from shared.config import ROOT
from shared.ops.bench import (
    ab,
    backtest,
    fanout,
    fourhop,
    journal,
    loopback,
    orderentry,
    scrape,
    suite,
    tapes,
    venue,
    workfloor,
)
from shared.ops.bench.plan import (
    BOOK_RATE,
    NEWS_RATE,
    PRICE_RATE,
    QUICK,
    QUICK_AB,
    RUNS,
    STRATEGIES,
    T2T_STRATEGY,
    WINDOW_NEWS,
    WINDOW_RATE,
    WINDOW_STRATEGY,
    ABPlan,
    Plan,
    TapePlan,
    say,
)
from shared.ops.bench.probes import SNAPSHOT_S, idle_run, records, snapshot, windows_run
from shared.ops.bench.recovery import recover_gateway, recover_ordermanager, recover_supervisord
from shared.ops.bench.report import histogram, notes, rows, table
from shared.ops.harness import Stack, dump_toml

OUT = "logs/bench.md"

# --- the stack ----------------------------------------------------------------


def attach(stack: Stack, timeout: float = 30.0) -> Segment:
    """The stack's segment, once a writer keeps it fresh and every slot is written."""

    def ready() -> Segment | None:
        try:
            seg = Segment.attach(stack.segment)
        except Exception:
            return None
        recs = records(seg)
        if seg.age_ms() < stack.cfg.book.stale_ms and all(r is not None and r.seq for r in recs):
            return seg
        seg.close()
        return None

    return stack.wait_for(ready, timeout=timeout, interval=0.05)


def wait_fresh(seg: Segment, since_ns: int, timeout: float = 30.0) -> int:
    """Wait until the book holds a tick made after ``since_ns``; its recv_ns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [r.recv_ns for r in records(seg) if r is not None and r.ts_ns > since_ns]
        if fresh:
            return min(fresh)
        time.sleep(0.001)
    raise TimeoutError("the book did not become fresh")


def set_gateway(stack: Stack, seg: Segment, **values: Any) -> None:
    """Rewrite the gateway's config keys, restart it, wait for fresh ticks."""
    stack.doc["gateway"].update(values)
    stack.config_path.write_text(dump_toml(stack.doc))
    t = time.time_ns()
    stack.ctl("restart", "gateway", check=True)
    wait_fresh(seg, t)
    time.sleep(0.5)  # past the new gateway's start, into its steady pace


def count_events(stack: Stack) -> tuple[int, int]:
    """(gap_detected in the orderbook, slow_consumer drops in the gateway or any
    reconnect of the orderbook's price link) so far."""
    gaps = len(stack.events("orderbook", "gap_detected"))
    drops = sum(1 for e in stack.events("gateway", "disconnected") if e.get("reason") == "slow_consumer")
    return gaps, max(drops, len(stack.events("orderbook", "disconnected")))


def rss_mb(stack: Stack) -> dict[str, float]:
    """VmRSS of every program, in MB."""
    out = {}
    for name, pid in stack.pids().items():
        try:
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        out[name] = kb / 1024
    return out


def feed_run(stack: Stack, seg: Segment, seconds: float) -> dict[str, Any]:
    """Ticks/s written into the book over ``seconds`` (less, at the first gap or
    drop), and whether any was lost.

    Ticks made (the advance of the newest tick_seq) must equal ticks written
    (the sum of ``updates``), give or take those landing while the slots are read.
    """
    ev0 = count_events(stack)
    a, ta = snapshot(seg)
    end, ev1 = ta + seconds, ev0
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.5, left))
        ev1 = count_events(stack)
        if ev1 != ev0:
            break  # not clean: no need to wait for the end
    b, tb = snapshot(seg)
    upd = sum(r.updates for r in b) - sum(r.updates for r in a)
    made = max(r.tick_seq for r in b) - max(r.tick_seq for r in a)
    rate = upd / (tb - ta)
    slack = len(seg.symbols) + 2 * math.ceil(rate * SNAPSHOT_S)
    lost = made - upd if abs(made - upd) > slack else 0
    gaps, drops = ev1[0] - ev0[0], ev1[1] - ev0[1]
    return {"rate": rate, "gaps": gaps, "drops": drops, "lost": lost,
            "clean": gaps == drops == lost == 0 and made > 0}


def book_latency(seg: Segment, seconds: float) -> list[int]:
    """recv_ns - ts_ns of the ticks a reader polling every millisecond sees."""
    seen: dict[int, int] = {}
    out: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, r in enumerate(records(seg)):
            if r is not None and seen.get(i) != r.tick_seq:
                seen[i] = r.tick_seq
                out.append(r.recv_ns - r.ts_ns)
        time.sleep(0.001)
    return out[len(seg.symbols):]  # the first look finds old ticks


def read_ns(seg: Segment, n: int) -> tuple[float, float]:
    """ns per consistent ``Segment.read``, and per bare unpack of the same bytes."""
    read, slot = seg.read, 0
    t = time.perf_counter_ns()
    for _ in range(n):
        read(slot)
    consistent = (time.perf_counter_ns() - t) / n
    unpack, buf, off = struct.Struct("<QdQQQQ").unpack_from, seg.buf, seg.offset(0)
    assert buf is not None
    t = time.perf_counter_ns()
    for _ in range(n):
        unpack(buf, off)
    return consistent, (time.perf_counter_ns() - t) / n


def bare_rss_mb() -> float:
    """VmRSS of a bare interpreter that imports nothing: the floor of any Python daemon."""
    code = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')))"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout) / 1024


def journal_count(stack: Stack, prefix: str) -> int:
    return sum(1 for e in stack.journal() if str(e.get("client_id", "")).startswith(prefix))


# --- the phases ---------------------------------------------------------------


def references(plan: Plan, res: dict[str, Any]) -> None:
    """Everything measured without the stack."""
    res["loadavg"] = os.getloadavg()[:2]
    res["floor_idle"], res["floor_load"] = {}, {}
    for n in fanouts(plan):
        say(f"{fanout.label(n)}: {plan.floor_n} news at {NEWS_RATE}/s to {n} bare relay(s)")
        res["floor_idle"][n] = fanout.fanout(n, NEWS_RATE, plan.floor_n)
    say(f"one-hop chain, prices at {BOOK_RATE}/s")
    res["hop"] = loopback.chain(1, "price", BOOK_RATE, int(BOOK_RATE * plan.book_s))
    say("raw framed stream")
    res["raw"] = loopback.raw_stream(plan.raw_s)
    say("bare ack server, 4 pipelining clients")
    res["om_bare"] = loopback.bare_order_load(plan.om_s)
    say(f"bare ack server, the outside client: 4 × {plan.oe_orders:,} orders")
    res["oe_bare"] = orderentry.bare_outside(n=plan.oe_orders)
    say(f"work floor: the stack's own work for {plan.oe_orders:,} orders, one process, no I/O")
    with loopback.Roles() as roles:
        res["workfloor"] = loopback._recv(roles.spawn(workfloor.role, plan.oe_orders), 120)
    res["rss_bare"] = bare_rss_mb()


def fanouts(plan: Plan) -> list[int]:
    """The floors to measure: the plan's, and one for every run's number of strategies."""
    return sorted({*plan.fanouts, *plan.strategies})


def feed_stack(workdir: Path, plan: Plan, res: dict[str, Any]) -> None:
    """Price feed, tick -> book, ordermanager throughput, book reads, RSS."""
    stack = Stack(workdir, {"gateway": {"price_rate": 0}, "strategy": WINDOW_STRATEGY})
    say("stack 1: price feed as fast as possible")
    try:
        stack.start()
        seg = attach(stack)
        try:
            time.sleep(min(2.0, plan.feed_s / 2))  # past the start, into the steady state
            rate = 0
            for attempt in range(plan.feed_tries):
                f = feed_run(stack, seg, plan.feed_s)
                if f["clean"] or attempt == plan.feed_tries - 1:
                    break
                rate = int(f["rate"] * 0.8)  # not clean: step the configured rate down
                say(f"feed not clean ({f}); stepping price_rate to {rate}")
                set_gateway(stack, seg, price_rate=rate)
            res["feed"], res["feed_rate_cfg"] = f, rate
            res["segment"] = (seg.size, len(seg.symbols))
            res["rss_feed"] = rss_mb(stack)
            say(f"tick -> book at {BOOK_RATE}/s")
            set_gateway(stack, seg, price_rate=BOOK_RATE)
            ev = count_events(stack)
            res["book"] = book_latency(seg, plan.book_s)
            res["book_clean"] = count_events(stack) == ev
            say(f"strategy windows at {WINDOW_RATE:,} ticks/s, {WINDOW_NEWS} news/s")
            set_gateway(stack, seg, price_rate=WINDOW_RATE, news_rate=WINDOW_NEWS)
            res["windows"] = windows_run(stack, seg, plan.windows_s)
            say(f"idle strategy: no news, prices at {WINDOW_RATE:,}/s; a 1 ms book poller beside it")
            set_gateway(stack, seg, news_rate=0.001)
            res["idle"] = idle_run(stack, seg, plan.idle_s)
            set_gateway(stack, seg, price_rate=100, news_rate=2)
            say("ordermanager: 4 pipelining clients")
            om = loopback.order_load(stack.cfg.ordermanager.port, stack.token, stack.cfg.symbols[0], plan.om_s)
            om["journaled"] = journal_count(stack, "bench-")
            res["om"] = om
            res["rss_om"] = rss_mb(stack)
            res["read_ns"] = read_ns(seg, plan.reads)
            say(f"order entry: the outside client, 4 × {plan.oe_orders:,} orders, news at {NEWS_RATE}/s")
            set_gateway(stack, seg, price_rate=PRICE_RATE, news_rate=NEWS_RATE)
            oe = orderentry.outside_client(stack.cfg.ordermanager.host, stack.cfg.ordermanager.port, stack.token,
                                           stack.cfg.symbols[0], n=plan.oe_orders, prefix="oe")
            time.sleep(0.2)
            oe["journaled"] = journal_count(stack, "oe-")
            res["oe"] = oe
        finally:
            seg.close()
    finally:
        stack.stop()


def t2t_stack(workdir: Path, plan: Plan, n: int, res: dict[str, Any], recovery: bool, fourhop_run: bool) -> None:
    """Tick-to-trade of ``n`` strategies at 1,000 prices/s and 200 news/s; the
    floor of ``n`` relays again while they run; if asked, decision → new and →
    fill of the first strategy and the four-hop floor while they run; then, if
    asked, recovery."""
    stack = Stack(workdir, {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE},
                            "strategy": T2T_STRATEGY,
                            "strategies": {f"s{i}": dict(T2T_STRATEGY) for i in range(2, n + 1)}})
    say(f"stack: tick-to-trade of {len(stack.strategies)} strategy(ies) for {plan.t2t_s:g} s")
    try:
        stack.start()
        seg = attach(stack)
        try:
            for st in stack.strategies:
                stack.wait_for(lambda p=st.program: stack.events(p, "logged_on"), timeout=30)
            time.sleep(1.0)
            t0 = time.time_ns()
            time.sleep(plan.t2t_s)
            t1 = time.time_ns()
            time.sleep(0.5)  # the last orders in flight
            entries = stack.journal()
            res["t2t"][n] = {st.program: [e["recv_ns"] - e["tick_ts_ns"] for e in entries
                                          if e.get("client_id") == st.client_id and t0 <= e["tick_ts_ns"] < t1]
                             for st in stack.strategies}
            say(f"{fanout.label(n)} again, with {n} strategy(ies) trading: {plan.floor_n} news at {NEWS_RATE}/s")
            res["floor_load"][n] = fanout.fanout(n, NEWS_RATE, plan.floor_n)
            if fourhop_run:  # its floor again once the stack is down (run)
                res["fourhop"] = fourhop.stack_side(stack, stack.strategies[0].program, t0, t1, n)
                fourhop.floor_run(res["fourhop"], "floor_load", plan.fourhop_s, f", {n} strategy(ies) trading")
            for program, mb in rss_mb(stack).items():
                res["rss_t2t"][program] = max(mb, res["rss_t2t"].get(program, 0.0))
            if recovery:
                say(f"recovery: kill -9 gateway, ordermanager, {plan.kills} times each")
                res["rec_gw"] = [recover_gateway(stack, seg) for _ in range(plan.kills)]
                res["rec_om"] = [recover_ordermanager(stack, i) for i in range(plan.kills)]
                say(f"recovery: kill -9 supervisord, then deploy/up's sweep and start, {plan.up_kills} times")
                res["rec_up"] = [recover_supervisord(stack, i) for i in range(plan.up_kills)]
        finally:
            seg.close()
    finally:
        stack.stop()


def run(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Every measurement; the results by name."""
    res: dict[str, Any] = {"t2t": {}, "rss_t2t": {}, "t2t_news": round(NEWS_RATE * plan.t2t_s)}
    res["backtest"] = backtest.measure(plan.backtest_prices, plan.backtest_news, workdir)
    references(plan, res)
    res["tapes"] = tapes.measure(plan.tape, workdir / "tapes", raw=res["raw"])
    res["venue"] = venue.run(plan.venue_scale, workdir / "venue", plan.venue_lines)
    feed_stack(workdir / "feed", plan, res)
    recovery_run = STRATEGIES if STRATEGIES in plan.strategies else plan.strategies[-1]
    for n in plan.strategies:  # decision → new and → fill in the run of fewest strategies (one, by default)
        first = n == min(plan.strategies)
        t2t_stack(workdir / f"t2t{n}", plan, n, res, recovery=n == recovery_run, fourhop_run=first)
        if first:
            fourhop.floor_run(res["fourhop"], "floor_idle", plan.fourhop_s, ", no stack up")
    return res


def _counts(text: str) -> tuple[int, ...]:
    """``--strategies 1,4,8``: positive numbers, in the order given."""
    out = tuple(int(x) for x in text.split(","))
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: numbers of strategies, each at least 1")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """deploy/bench [--quick] [--duration S] [--out PATH]."""
    ap = argparse.ArgumentParser(prog="deploy/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds of everything (the smoke test)")
    ap.add_argument("--duration", type=float, help="seconds of the price feed run (default 20; "
                    "with --tape, of the recording's window, default 5)")
    ap.add_argument("--t2t-duration", type=float, help="seconds of the tick-to-trade run (default 40)")
    ap.add_argument("--kills", type=int, help="kill -9 runs per program (default 5)")
    ap.add_argument("--up-kills", type=int, help="kill -9 supervisord -> up runs (default 3)")
    ap.add_argument("--strategies", type=_counts, help="tick-to-trade runs: strategies trading at once in each, "
                    f"comma-separated (default {','.join(map(str, RUNS))}; recovery runs in the run of {STRATEGIES})")
    ap.add_argument("--against", metavar="REV", help="A/B: order entry and tick-to-trade on this tree and on a "
                    "worktree of REV in one run, alternating, beside the fan-out floors (shared/ops/bench/ab.py); "
                    "--strategies and --t2t-duration apply (default 1,4,8 and 20 s)")
    ap.add_argument("--rounds", type=int, help="--against: order-entry runs per side (default 4)")
    ap.add_argument("--out", default=OUT, help="markdown report (a .png beside it)")
    ap.add_argument("--keep", action="store_true", help="keep the stacks' directories (logs, journal)")
    ap.add_argument("--scrape", action="store_true", help="only tick-to-trade without and with a /metrics scrape "
                    "every second, in alternating windows (shared/ops/bench/scrape.py)")
    ap.add_argument("--windows", type=int, default=6, help="--scrape: alternating windows (6)")
    ap.add_argument("--window", type=float, default=10.0, help="--scrape: seconds per window (10)")
    ap.add_argument("--journal", action="store_true",
                    help="the journal's figures instead: restart after N orders, RSS, a full disk (issue 8)")
    ap.add_argument("--orders", type=int, help="with --journal: orders in the journal (default 5,000,000)")
    ap.add_argument("--venue", action="store_true", help="only the venue's figures: the matching engine, the "
                    "exchange's restart on a long journal, decision → new and → fill beside the four-hop floor "
                    "(issue 15)")
    ap.add_argument("--tape", action="store_true", help="only the tape's figures: stack-record beside the gateway "
                    "at 200,000 price ticks/s, the gateway serving a tape at speed 0 (issue 16, "
                    "shared/ops/bench/tapes.py)")
    ap.add_argument("--suite", action="store_true", help="only the timing figures the test suite no longer judges: "
                    "the tick ring's race, ack waits under bad input, the kill switch, short heartbeats "
                    "(shared/ops/bench/suite.py)")
    args = ap.parse_args(argv)
    if args.scrape:
        return _scrape(args)
    if args.venue:
        return venue.main(["--quick"] if args.quick else [])
    if args.suite:
        report = suite.table(suite.run(args.duration or 10.0))
        print(report)
        return 0
    if args.tape:
        return _tape(args)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.journal:
        return journal.main(args, argv)
    if args.against:
        out = Path(args.out if args.out != OUT else "logs/bench-ab.md")
        ab_plan = QUICK_AB if args.quick else ABPlan()
        ab_over = {"strategies": args.strategies, "t2t_s": args.t2t_duration, "oe_rounds": args.rounds}
        ab_plan = ABPlan(**{**ab_plan.__dict__, **{k: v for k, v in ab_over.items() if v is not None}})
        return ab.main(args.against, ab_plan, out if out.is_absolute() else Path.cwd() / out, argv)
    plan = QUICK if args.quick else Plan()
    overrides = {"feed_s": args.duration, "t2t_s": args.t2t_duration, "kills": args.kills, "up_kills": args.up_kills,
                 "strategies": args.strategies}
    plan = Plan(**{**plan.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    workdir = Path(tempfile.mkdtemp(prefix="tsbench"))
    try:
        res = run(plan, workdir)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = table(rows(res))
    print(report)
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{report}\n\n{notes(res, plan, argv)}\n")
    say(f"wrote {out}")
    png = out.with_suffix(".png")
    if histogram(res, png):
        say(f"wrote {png}")
    return 0


def _tape(args: argparse.Namespace) -> int:
    plan = (QUICK if args.quick else Plan()).tape
    if args.duration:
        plan = TapePlan(**{**plan.__dict__, "seconds": args.duration})
    workdir = Path(tempfile.mkdtemp(prefix="tsbench"))
    try:
        res = tapes.measure(plan, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(tapes.rows(res)))
    print()
    print(tapes.note(res))
    return 0


def _scrape(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="tsbench"))
    try:
        report = scrape.table(scrape.run(workdir / "scrape", args.windows, args.window, say))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

