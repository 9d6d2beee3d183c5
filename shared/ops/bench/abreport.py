"""The table of ``deploy/bench --against REV``: each figure on this tree and on REV,
their ratio, and each beside the fan-out floor of its run measured in the same run."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from shared.ops.bench.fanout import label
from shared.ops.bench.plan import NEWS_RATE, PRICE_RATE, T2T_STRATEGY, ABPlan
from shared.ops.bench.report import fmt, ratio, stats_us

HEAD = ("figure", "this tree", "{rev}", "this/{rev}", "floor (same run)", "this/floor", "{rev}/floor")
Row = tuple[str, str, str, str, str, str, str]


def _oe_rows(this: Any, other: Any, conns: int, orders: int) -> list[Row]:
    def median(side: Any) -> float:
        return statistics.median(r["rate"] for r in side.oe) if side.oe else float("nan")

    def each(side: Any) -> str:
        return ", ".join(fmt(r["rate"]) for r in side.oe) or "–"

    def counts(side: Any) -> str:
        if not side.oe:
            return "–"
        acked, rej = sum(r["acked"] for r in side.oe), sum(r["rejected"] for r in side.oe)
        return f"{acked:,} / {rej:,} / {sum(r['journaled'] for r in side.oe):,}"

    a, b = median(this), median(other)
    what = f"{conns} × {orders:,} orders pipelined, news {NEWS_RATE}/s"
    return [(f"order entry, one outside client, {what} (accepted orders/s, median of {len(this.oe)})",
             fmt(a), fmt(b), ratio(a, b), "", "", ""),
            ("order entry, each run in turn (orders/s)", each(this), each(other), "", "", "", ""),
            ("order entry acked / rejected / journaled, all runs", counts(this), counts(other), "", "", "", "")]


def _t2t_rows(n: int, this: Any, other: Any, floor: dict[str, float]) -> list[Row]:
    out: list[Row] = []
    pooled = {s.label: stats_us([x for lat in s.t2t.get(n, {}).values() for x in lat]) for s in (this, other)}
    each = {s.label: [stats_us(lat) for lat in s.t2t.get(n, {}).values() if lat] for s in (this, other)}
    fl = f"{fmt(floor['p50'])} / {fmt(floor['p99'])}"
    for q in ("p50", "p99"):
        for what, pick in (("all strategies", lambda lb, q=q: pooled[lb][q]),
                           ("slowest strategy", lambda lb, q=q: max((t[q] for t in each[lb]), default=float("nan")))):
            a, b = pick(this.label), pick(other.label)
            out.append((f"tick-to-trade {q}, {n} strateg{'y' if n == 1 else 'ies'}, {what} (µs)", fmt(a), fmt(b),
                        ratio(a, b), f"{fmt(floor[q])} {label(n)}", ratio(a, floor[q]), ratio(b, floor[q])))
    out.append((f"tick-to-trade samples, {n} strateg{'y' if n == 1 else 'ies'}",
                f"{pooled[this.label]['n']:,}", f"{pooled[other.label]['n']:,}", "", f"{fl} p50 / p99", "", ""))
    return out


def table(res: dict[str, Any]) -> str:
    """The A/B rows as one markdown table."""
    this, other = res["sides"]
    rev = other.label
    floors = {n: stats_us(ns) for n, ns in res["floors"].items()}
    rows: list[Row] = [(f"{label(n)} p50 / p99 (µs), {n} bare relay{'' if n == 1 else 's'}, {len(ns):,} orders", "", "",
                        "", f"{fmt(floors[n]['p50'])} / {fmt(floors[n]['p99'])} {label(n)}", "", "")
                       for n, ns in res["floors"].items()]
    rows += _oe_rows(this, other, res["plan"].conns, res["plan"].orders)
    for n in res["plan"].strategies:
        rows += _t2t_rows(n, this, other, floors[n])
    head = [h.format(rev=rev) for h in HEAD]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def notes(res: dict[str, Any], plan: ABPlan, argv: Sequence[str]) -> str:
    """How the A/B figures were made, and anything a side could not do."""
    this, other = res["sides"]
    (l1, l5, _), (e1, e5, _) = res["loadavg"][0], res["loadavg"][-1]
    lines = [
        f"Command: `{' '.join(['deploy/bench', *argv])}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {os.cpu_count()} cores, Python {sys.version.split()[0]}, load average {l1:.1f} / {l5:.1f} (1 / 5 min)"
        f" at the start, {e1:.1f} / {e5:.1f} at the end.",
        "",
        f"- Sides: this tree (the working tree, uncommitted changes included; code from {this.code or '–'}) and"
        f" {other.label} (a detached worktree; code from {other.code or '–'}), each stack started by its own tree's"
        " harness under supervisord with this venv's interpreter; one side at a time, the order of the two"
        " alternating run by run.",
        f"- Order entry: a fresh stack per run at {PRICE_RATE:,} prices/s and {NEWS_RATE} news/s (the default"
        f" strategy trading); one outside client process with {plan.conns} connections, each writing"
        f" {plan.orders:,} pre-encoded orders as fast as the socket takes them and counting the answers by a byte"
        " scan; accepted orders/s = acks / (first write → last answer). Journaled: orders in that stack's journal.",
        f"- Tick-to-trade: news `ts_ns` → the journal's `recv_ns`, {plan.t2t_s:g} s per run and {plan.t2t_rounds}"
        f" run(s) per side and number of strategies, pooled; thresholds"
        f" `{', '.join(f'{k}={v}' for k, v in T2T_STRATEGY.items())}`. Floor: {plan.floor_n:,} news at"
        f" {NEWS_RATE}/s from one source to N bare relays (decode, encode an order) and one bare sink,"
        " measured before the stacks, with no stack up.",
    ]
    for side in (this, other):
        for what, err in side.errors.items():
            lines.append(f"- {side.label} could not run {what}: {err}")
    return "\n".join(lines)
