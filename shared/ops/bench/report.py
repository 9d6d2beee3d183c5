"""deploy/bench's report: the figures as one markdown table beside their references and targets, the notes
on how they were made, and a histogram."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.ops.bench import backtest, fourhop, tapes, venue, workfloor
from shared.ops.bench.fanout import label
from shared.ops.bench.plan import (
    BOOK_P99_US,
    BOOK_RATE,
    FEED_MIN,
    FEED_RAW_SHARE,
    IDLE_MAX,
    NEWS_RATE,
    OM_MIN,
    PRICE_RATE,
    PROGRAMS,
    RSS_MAX_MB,
    SEED_BOOK_BYTES,
    SEED_T2T_MEAN_US,
    SEED_TICKS_S,
    STRATEGIES,
    T2T_P50_X,
    T2T_P99_X,
    T2T_STRATEGY,
    T2T_TARGET_RUNS,
    UP_TARGET_S,
    WINDOW_NEWS,
    WINDOW_RATE,
    Plan,
)
from shared.ops.stats import percentile


def stats_us(ns: Sequence[int]) -> dict[str, float]:
    """p50, p99, p99.9, max and mean in microseconds, and the count."""
    us = [x / 1e3 for x in ns]
    return {"p50": percentile(us, 50), "p99": percentile(us, 99), "p99.9": percentile(us, 99.9),
            "max": max(us, default=math.nan),
            "mean": sum(us) / len(us) if us else math.nan, "n": len(us)}


def fmt(x: float | int | None, digits: int = 0) -> str:
    """A number for the table: thousands separated, NaN/None as a dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b and not math.isnan(a) and not math.isnan(b) else "–"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


Row = tuple[str, str, str, str, str, str, str]
HEAD = ("figure", "stack", "reference (same run)", "stack/ref", "seed", "target (issues 4, 9, 15, 17)", "pass/fail")


def floor_of(res: dict[str, Any], n: int) -> dict[str, float]:
    """The floor of ``n`` relays: each statistic the lower of the bare fan-out idle and while ``n`` strategies ran."""
    idle = stats_us(res["floor_idle"][n])
    if n not in res["floor_load"]:
        return idle
    load = stats_us(res["floor_load"][n])
    return {q: min(idle[q], load[q]) for q in idle}


def _plural(n: int) -> str:
    return f"{n} strateg{'y' if n == 1 else 'ies'}"


def _floor_rows(res: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for n, ns in sorted(res["floor_idle"].items()):
        idle = stats_us(ns)
        load = stats_us(res["floor_load"][n]) if n in res["floor_load"] else None
        out.append((f"{label(n)} p50 / p99 (µs), {n} bare relay{'' if n == 1 else 's'}, {len(ns):,} orders",
                    f"{fmt(idle['p50'])} / {fmt(idle['p99'])} idle",
                    f"{fmt(load['p50'])} / {fmt(load['p99'])} with {_plural(n)} trading" if load else "", "", "",
                    "the lower of each" if load else "", ""))
    return out


def _t2t_rows(res: dict[str, Any], n: int) -> list[Row]:
    """Each of ``n`` strategies beside the floor of ``n`` relays; the targets on the runs of T2T_TARGET_RUNS."""
    fl, runs, ref = floor_of(res, n), res["t2t"][n], label(n)
    out: list[Row] = []
    for program, ns in runs.items():
        t = stats_us(ns)
        for q, x in (("p50", T2T_P50_X), ("p99", T2T_P99_X)):
            judged = n in T2T_TARGET_RUNS
            out.append((f"tick-to-trade {q} {program} (µs), {_plural(n)}", fmt(t[q]), f"{fmt(fl[q])} {ref}",
                        ratio(t[q], fl[q]), "", f"≤ {x:g}× {ref}" if judged else "",
                        verdict(t[q] <= x * fl[q]) if judged else ""))
    t = stats_us([x for ns in runs.values() for x in ns])
    for q in ("p99.9", "max"):
        out.append((f"tick-to-trade {q} (µs), {_plural(n)} together", fmt(t[q]), f"{fmt(fl[q])} {ref}",
                    ratio(t[q], fl[q]), "", "", ""))
    out.append((f"tick-to-trade mean (µs), {_plural(n)} together", fmt(t["mean"]), f"{fmt(fl['mean'])} {ref}",
                ratio(t["mean"], fl["mean"]), fmt(SEED_T2T_MEAN_US), "", ""))
    out.append((f"tick-to-trade samples, {_plural(n)}", f"{t['n']:,} orders on {res['t2t_news']:,} news",
                f"{fl['n']:,}", "", "", "", ""))
    return out


def _strategy_rows(res: dict[str, Any]) -> list[Row]:
    w, idle = res["windows"], res["idle"]
    poll = idle["poll"]
    seen = poll["seen"] / poll["written"] if poll["written"] else math.nan
    ok = not w["problems"] and w["checked"] > 0 and w["rate"] >= 0.95 * WINDOW_RATE
    return [
        (f"strategy windows at {WINDOW_RATE:,} ticks/s: ticks skipped",
         f"{len(w['problems'])} in {w['checked']:,} windows checked ({fmt(w['rate'])} ticks/s into the book, "
         f"{w['unavailable']} unavailable)", f"{fmt(100 * seen, 1)} % of ticks seen by a 1 ms poll", "", "",
         "0, at ≥ 95 % of the rate", verdict(ok)),
        (f"idle strategy, no news, prices at {fmt(idle['rate'])}/s (% of a core)", fmt(100 * idle["cpu"], 2),
         f"{fmt(100 * poll['cpu'], 2)} a 1 ms book poll", ratio(idle["cpu"], poll["cpu"]), "",
         f"< {100 * IDLE_MAX:g} %", verdict(idle["cpu"] < IDLE_MAX and idle["rate"] > 0)),
    ]


def rows(res: dict[str, Any]) -> list[Row]:
    """Every row of the table, from the results of one run."""
    bk, hop = stats_us(res["book"]), stats_us(res["hop"])
    feed, om = res["feed"], res["om"]
    raw = res["raw"]
    out = _floor_rows(res)
    for n in res["t2t"]:
        out += _t2t_rows(res, n)
    out += _strategy_rows(res)
    ok = feed["clean"] and feed["rate"] >= FEED_MIN and feed["rate"] >= FEED_RAW_SHARE * raw
    out.append(("price feed into the book (ticks/s)", fmt(feed["rate"]), f"{fmt(raw)} raw stream",
                ratio(feed["rate"], raw), fmt(SEED_TICKS_S, 1),
                f"≥ {FEED_MIN:,} and ≥ {FEED_RAW_SHARE:.0%} of raw", verdict(ok)))
    out.append(("price feed gaps / slow-consumer drops / lost", f"{feed['gaps']} / {feed['drops']} / {feed['lost']}",
                "", "", "", "0 / 0 / 0", verdict(feed["clean"])))
    for q in ("p50", "p99"):
        target, ok = (f"≤ {BOOK_P99_US:,.0f} µs", bk[q] <= BOOK_P99_US and res["book_clean"]) if q == "p99" \
            else ("", None)
        out.append((f"tick → book {q} at {BOOK_RATE:,}/s (µs)", fmt(bk[q], 1), f"{fmt(hop[q], 1)} one hop",
                    ratio(bk[q], hop[q]), "", target, "" if ok is None else verdict(ok)))
    out.append(("ordermanager, 4 pipelining clients (orders/s)", fmt(om["rate"]), f"{fmt(res['om_bare'])} bare acks",
                ratio(om["rate"], res["om_bare"]), "", f"≥ {OM_MIN:,}", verdict(om["rate"] >= OM_MIN)))
    out.append(("ordermanager orders acked / journaled", f"{om['acked']:,} / {om['journaled']:,}", "", "", "",
                "equal", verdict(om["acked"] == om["journaled"] and not om["rejected"])))
    oe, oe_bare = res["oe"], res["oe_bare"]
    out.append((f"order entry, one outside client, 4 × {oe['acked'] // 4:,} orders pipelined, news {NEWS_RATE}/s"
                " (orders/s)", fmt(oe["rate"]), f"{fmt(oe_bare['rate'])} bare acks", ratio(oe["rate"], oe_bare["rate"]),
                "", "", ""))
    out.append(("order entry acked / journaled", f"{oe['acked']:,} / {oe['journaled']:,}", "", "", "", "equal",
                verdict(oe["acked"] == oe["journaled"] and not oe["rejected"] and oe["complete"])))
    if "workfloor" in res:  # issues 15 and 17: what the stack's own work per order allows at most
        wf = res["workfloor"]
        stages = " + ".join(fmt(v * 1e6, 1) for v in wf["per_order"].values())
        om_cpu = wf["per_order"][workfloor.STAGES[0]] + wf["per_order"][workfloor.STAGES[2]]
        out.append((f"order entry's work floor: the stack's own work per order in one process, no I/O, no loop"
                    f" (orders/s on {wf['cores']} cores)", fmt(workfloor.ceiling(wf)),
                    f"{stages} µs of CPU per order (ordermanager in, exchange, ordermanager execs): the ordermanager"
                    f" alone, one process, {fmt(1 / om_cpu)} orders/s", "", "", "", ""))
    rd, unpack = res["read_ns"]
    out.append(("book read from Python (ns, consistent)", fmt(rd), f"{fmt(unpack)} bare unpack", ratio(rd, unpack),
                "", "", ""))
    if "venue" in res:  # issue 15: the matching engine, the exchange's restart
        out += venue.rows(res["venue"])
    if "stack" in res.get("fourhop", {}):  # issue 15: decision → new and → fill beside the four-hop floor
        out += fourhop.rows(res["fourhop"])
    for p in PROGRAMS:  # in operation: after the feed at full rate, and while trading
        mb = max(res[k].get(p, math.nan) for k in ("rss_feed", "rss_t2t"))
        out.append((f"RSS {p} (MB, peak of 2 samples in operation)", fmt(mb, 1),
                    f"{fmt(res['rss_bare'], 1)} bare interpreter", ratio(mb, res["rss_bare"]), "",
                    f"≤ {RSS_MAX_MB:g} MB", verdict(mb <= RSS_MAX_MB)))
    # The de-duplication windows keep each client's last journal_window ids: bounded, whatever the history.
    grown = res["rss_om"].get("ordermanager", math.nan) - res["rss_feed"].get("ordermanager", math.nan)
    out.append((f"RSS ordermanager after {om['journaled']:,} orders (MB)", fmt(res["rss_om"].get("ordermanager",
                math.nan), 1), f"{fmt(grown, 1)} MB grown over them (de-duplication windows)", "", "", "", ""))
    size, nsym = res["segment"]
    out.append(("book segment (bytes)", f"{size:,} for {nsym} symbols", "", "", f"{SEED_BOOK_BYTES} for 3", "", ""))
    out.append(("book bytes per symbol", fmt(size / nsym), "", "", fmt(SEED_BOOK_BYTES / 3), "", ""))
    for key, what, ref in (("rec_gw", "kill -9 gateway → book fresh", "port listening"),
                           ("rec_om", "kill -9 ordermanager → acks flow", "port listening")):
        got, listen = [r[0] for r in res[key]], [r[1] for r in res[key]]
        for q, qq in (("p50", 50), ("p99", 99)):
            out.append((f"recovery {what} {q} (ms, {len(got)} runs)", fmt(percentile(got, qq), 1),
                        f"{fmt(percentile(listen, qq), 1)} {ref}",
                        ratio(percentile(got, qq), percentile(listen, qq)), "", "", ""))
    up = res.get("rec_up") or []
    if up:
        serving, running = [r["serving"] for r in up], [r["running"] for r in up]
        for q, pick in (("p50", lambda xs: percentile(xs, 50)), ("max", max)):
            target, ok = (f"≤ {UP_TARGET_S * 1000:,.0f} (issue 8)", pick(serving) <= UP_TARGET_S * 1000) \
                if q == "max" else ("", None)
            out.append((f"recovery kill -9 supervisord → up → all RUNNING and orders flowing {q} (ms, {len(up)} runs)",
                        fmt(pick(serving)), f"{fmt(pick(running))} all RUNNING", ratio(pick(serving), pick(running)),
                        "", target, "" if ok is None else verdict(ok)))
        dups = max(int(r["duplicated"]) for r in up)
        out.append(("journal entries duplicated after the supervisord kills", str(dups), "", "", "", "0 (issue 8)",
                    verdict(dups == 0)))
    if "tapes" in res:
        out += tapes.rows(res["tapes"])
    if "backtest" in res:
        out += backtest.rows(res["backtest"])
    return out


def table(rs: list[Row]) -> str:
    """The rows as one markdown table."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in rs]
    return "\n".join(lines)


def notes(res: dict[str, Any], plan: Plan, argv: Sequence[str]) -> str:
    """How the figures were made, under the table."""
    f = res["feed"]
    cfg_rate = "0 (as fast as possible)" if res["feed_rate_cfg"] == 0 else f"{res['feed_rate_cfg']:,}"
    return "\n".join([
        f"Command: `{' '.join(['deploy/bench', *argv])}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {os.cpu_count()} cores, Python {sys.version.split()[0]}, load average"
        f" {res['loadavg'][0]:.1f} / {res['loadavg'][1]:.1f} (1 / 5 min) at the start.",
        "",
        f"- Tick-to-trade: news `ts_ns` → the journal's `recv_ns`, per strategy, in one run for each number of"
        f" strategies trading at once ({', '.join(map(str, res['t2t']))}: `[strategy]`, `[strategies.s2]` …),"
        f" {plan.t2t_s:g} s each at {PRICE_RATE:,} prices/s and {NEWS_RATE} news/s, logging and journal on, default"
        f" durability. Their thresholds are lowered (`{', '.join(f'{k}={v}' for k, v in T2T_STRATEGY.items())}`) so"
        " most news can trade; each still orders only when both signals agree and its position is not at target."
        f" Floors: one source writing each news frame ({NEWS_RATE}/s) to N bare relay processes, each decoding it"
        " and writing an order frame to one bare sink that decodes and timestamps it (msgspec both ways, 64 KiB"
        " reads, framing by hand; one relay is the two-hop chain), measured with no stack up and again while the"
        " run of N strategies trades; each statistic the lower of the two. Each run of N strategies is set beside"
        f" the floor of N relays; targets on the runs of {' and '.join(map(str, T2T_TARGET_RUNS))}.",
        f"- Windows: at {WINDOW_RATE:,} prices/s and {WINDOW_NEWS} news/s for {plan.windows_s:g} s, a tape of the"
        " price stream (a subscriber of its own) beside the strategy (default windows 5 and 20, thresholds 50);"
        " each `order_sent` names its window (`ticks`, `first_tick_seq`, `last_tick_seq`), and the tape must hold"
        " exactly that many ticks of the symbol in that range. Reference: a reader polling the book every"
        " millisecond, as the strategy did before the ring, counting the updates it saw.",
        f"- Idle strategy: its CPU time (`/proc/PID/schedstat`) over {plan.idle_s:g} s with no news while prices"
        f" flow at {WINDOW_RATE:,}/s, beside the same 1 ms poller's own CPU.",
        f"- Price feed: book `updates` over {plan.feed_s:g} s with `price_rate` = {cfg_rate}, counting `gap_detected`,"
        " `slow_consumer` drops and ticks made (tick_seq) but not written. Raw stream: one process blasting"
        " prebuilt price frames, one counting frames by their length prefixes.",
        f"- Tick → book: `recv_ns − ts_ns` of the records a reader polling each millisecond sees, at {BOOK_RATE:,}"
        f" ticks/s; {'no' if res['book_clean'] else 'SOME'} gaps or drops meanwhile. Reference: one bare hop of"
        " the same frames at the same rate.",
        f"- Ordermanager: 4 client processes keeping 256 orders each outstanding for {plan.om_s:g} s; every ack"
        " counted, then the journal. Reference: the same clients against a bare server acking without journal or log.",
        f"- Order entry: one outside client process, 4 connections each writing {plan.oe_orders:,} pre-encoded orders"
        " as fast as the socket takes them, the answers counted by a byte scan, never decoded; accepted orders/s ="
        f" acks / (first write → last answer), at {PRICE_RATE:,} prices/s and {NEWS_RATE} news/s. Reference: the"
        " same client against the bare ack server. `deploy/bench --against REV` measures it on both trees.",
        "- RSS: VmRSS of each supervisord pid after the feed, after the ordermanager load (its de-duplication index"
        f" then holds {res['om']['acked']:,} orders) and after tick-to-trade. Reference: a bare interpreter importing"
        " nothing (`python -S`).",
        f"- Recovery: {plan.kills} × `kill -9` each; gateway: until a tick made by the new gateway is in the book;"
        " ordermanager: until a fresh client's order is acked. Reference: until the port accepts again.",
        f"- Recovery of supervisord: {plan.up_kills} × `kill -9` of supervisord while the strategy trades, then what"
        " `deploy/up` does (the orphan sweep, a fresh supervisord); until every program is RUNNING, a fresh client's"
        " order is acked and the strategy's next order is journaled (the latest of the three). Reference: until"
        " every program is RUNNING. Alone: `python -m shared.ops.bench.recovery --runs N`.",
        f"- Seed: {SEED_T2T_MEAN_US / 1000:g} ms average tick-to-trade, {SEED_TICKS_S} ticks/s,"
        f" {SEED_BOOK_BYTES} bytes of book for 3 symbols (its own report; 8 cores)."
        f" Feed run: {'clean' if f['clean'] else 'NOT clean'}.",
        *([fourhop.note(res["fourhop"])] if "stack" in res.get("fourhop", {}) else []),
        *([tapes.note(res["tapes"])] if "tapes" in res else []),
        *([backtest.note(res["backtest"])] if "backtest" in res else []),
    ])


def histogram(res: dict[str, Any], path: Path) -> bool:
    """A latency histogram PNG, if matplotlib is installed (the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = max(res["t2t"], key=lambda k: (k <= STRATEGIES, k))  # the run of STRATEGIES, else the largest
    t2t = [x for ns in res["t2t"][n].values() for x in ns]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, pairs) in zip(axes, (
            (f"tick-to-trade, {_plural(n)}", ((f"stack, all {_plural(n)}", t2t),
                                              (label(n), res["floor_idle"][n]))),
            (f"tick → book at {BOOK_RATE:,}/s", (("stack", res["book"]), ("one bare hop", res["hop"])))), strict=True):
        us = [[x / 1e3 for x in xs if x > 0] for _, xs in pairs]
        lo = min((min(u) for u in us if u), default=1.0)
        hi = max((max(u) for u in us if u), default=10.0)
        bins = [lo * (hi / lo) ** (i / 60) for i in range(61)] if hi > lo else 60
        for (name, _), u in zip(pairs, us, strict=True):
            ax.hist(u, bins=bins, alpha=0.6, label=f"{name} (n={len(u):,})")
        ax.set_xscale("log")
        ax.set_xlabel("µs")
        ax.set_ylabel("count")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- deploy/bench --journal (issue 8) -------------------------------------------

JOURNAL_RESTART_MS, JOURNAL_RSS_MB, JOURNAL_BACK_MS = 500.0, 60.0, 1000.0
JOURNAL_HEAD = ("figure", "stack", "reference (same run)", "stack/ref", "target (issue 8)", "pass/fail")


def journal_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """The journal's rows: restart and RSS after N orders, and the full disk."""
    w, big, empty = res["written"], res["restart_big"], res["restart_empty"]
    n = f"{w['orders']:,}"
    out: list[tuple[str, ...]] = [
        ("journal written (orders / closed segments / MB)", f"{n} / {w['segments']} / {w['bytes'] / 2**20:,.0f}",
         f"open segment {w['open_orders']:,} orders, {w['open_bytes'] / 2**20:.1f} MB", "", "", "")]
    for q, qq in (("p50", 50), ("max", 100)):
        got, ref = percentile(big["ack_ms"], qq), percentile(empty["ack_ms"], qq)
        out.append((f"restart after {n} orders: kill -9 → first ack {q} (ms, {len(big['ack_ms'])} runs)",
                    fmt(got, 1), f"{fmt(ref, 1)} empty journal", ratio(got, ref), f"≤ {JOURNAL_RESTART_MS:g} ms",
                    verdict(got <= JOURNAL_RESTART_MS) if q == "max" else ""))
    out.append((f"journal load at start after {n} orders (ms, max)", fmt(max(big["load_ms"]), 1),
                f"{fmt(max(empty['load_ms']), 1)} empty journal", "", "", ""))
    load = big["load"]
    out.append((f"RSS ordermanager in operation after {n} orders (MB)", fmt(big["rss_mb"], 1),
                f"{fmt(big['rss_start_mb'], 1)} before {load['acked']:,} more orders of 4 clients", "",
                f"≤ {JOURNAL_RSS_MB:g} MB", verdict(big["rss_mb"] <= JOURNAL_RSS_MB)))
    out.append(("RSS ordermanager peak (MB, VmHWM: the start included)", fmt(big["hwm_after_mb"], 1),
                f"{fmt(empty['hwm_mb'], 1)} empty journal", ratio(big["hwm_after_mb"], empty["hwm_mb"]),
                f"≤ {JOURNAL_RSS_MB:g} MB", verdict(big["hwm_after_mb"] <= JOURNAL_RSS_MB)))
    f = res["full"]
    if "skipped" in f:
        return [*out, ("disk full under load", f"skipped: {f['skipped']}", "", "", "", "")]
    out += [
        ("disk full under load: ordermanager crashes", str(f["crashes"]), "", "", "0", verdict(f["crashes"] == 0)),
        ("disk full under load: acked orders lost", f"{f['lost']} of {f['acked']:,}", "", "", "0",
         verdict(f["lost"] == 0 and not f["errors"])),
        ("disk full under load: orders answered unavailable", f"{f['refused']:,}",
         f"journal_write_failed logged {f['failed_logs']}×, journal_writable {f['writable_logs']}×", "", "> 0",
         verdict(f["refused"] > 0)),
        ("disk full under load: space back → next ack (ms)", fmt(f["back_ms"], 1), "", "",
         f"≤ {JOURNAL_BACK_MS:g} ms", verdict(f["back_ms"] is not None and f["back_ms"] <= JOURNAL_BACK_MS)),
    ]
    return out


def journal_table(rs: list[tuple[str, ...]]) -> str:
    """The journal's rows as one markdown table."""
    lines = ["| " + " | ".join(JOURNAL_HEAD) + " |", "|" + "---|" * len(JOURNAL_HEAD)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rs])


def journal_notes(res: dict[str, Any], plan: Any, argv: Sequence[str]) -> str:
    """How the journal's figures were made."""
    f = res["full"]
    return "\n".join([
        f"Command: `{' '.join(['deploy/bench', *argv])}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {os.cpu_count()} cores, Python {sys.version.split()[0]}.",
        "",
        f"- The journal of {plan.orders:,} orders of 5 clients is written straight to its files with the journal's"
        f" encoder: closed segments of `journal_segment_bytes` = {res['segment_bytes']:,}, the checkpoint (windows of"
        f" {res['window']:,} ids per client), and an open segment 95 % full, the most a restart ever reads.",
        f"- Restart: {plan.restarts} × `kill -9` of the ordermanager under supervisord, until a fresh client's order"
        " is acked; reference: the same on an empty journal. RSS in operation: VmRSS after 4 pipelining clients"
        f" for {plan.load_s:g} s; peak: VmHWM of that process (its start included).",
        f"- Disk full: a 256 MB tmpfs under the journal, 4 clients offering {plan.rate:,} orders/s; after"
        f" {plan.load_s:g} s a ballast takes every free block for {plan.full_s:g} s, then goes. Lost: acked orders"
        " not journaled exactly once under their order_no; next ack: from the ballast's removal to the first ack."
        + ("" if "skipped" in f else f" {f['acked']:,} acked, {f['refused']:,} answered unavailable."),
    ])
