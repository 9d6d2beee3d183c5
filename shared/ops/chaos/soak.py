"""Chaos soak: random faults from the fault tool's menu for N minutes, each
followed by the invariants, on a private stack whose three links run through
fault proxies. Prints a table of faults injected, recoveries and their p99
time, and orders sent / journaled / duplicated / lost.

    deploy/soak                 # 5 minutes
    deploy/soak --seconds 30    # what CI runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from shared import logs
from shared.ops.chaos import disk, faults
from shared.ops.chaos.invariants import NotHealed, healed, journal_problems, strategy_acks
from shared.ops.harness import Stack
from shared.ops.stats import percentile

HB_MS = 100
OVERRIDES: dict[str, Any] = {"gateway": {"news_rate": 20, "heartbeat_ms": HB_MS},
                             "ordermanager": {"heartbeat_ms": HB_MS}, "exchange": {"heartbeat_ms": HB_MS}}
LINKS = ("price", "news", "orders")
JOURNAL_FS = 16 << 20  # the tmpfs under the soak's journal (root only)


def order_counts(stack: Stack) -> dict[str, int]:
    """Orders sent by the strategies, journaled, journaled twice, acked but not journaled."""
    strategies = stack.cfg.all_strategies()
    cids = {st.client_id for st in strategies}
    sent = {(st.client_id, r["order_id"]) for st in strategies for r in stack.events(st.program, "order_sent")}
    ids = [(e["client_id"], e["order_id"]) for e in stack.journal() if e["client_id"] in cids]
    acked = {(cid, oid) for cid, oid, _ in strategy_acks(stack)}
    return {"sent": len(sent), "journaled": len(ids), "duplicated": len(ids) - len(set(ids)),
            "lost": len(acked - set(ids)),
            "duplicate_acks": sum(1 for st in strategies for r in stack.events(st.program, "order_acked")
                                  if r.get("duplicate"))}


def run(seconds: float, seed: int, workdir: Path, gap: float = 0.5) -> dict[str, Any]:
    """The soak itself; returns the report as a dict. As root, the journal lies on
    a small tmpfs of its own, and the menu has ``disk_full_journal`` too."""
    with contextlib.ExitStack() as mounts:
        fs = mounts.enter_context(disk.tmpfs(workdir / "journalfs", JOURNAL_FS)) if os.geteuid() == 0 else None
        return _run(seconds, seed, workdir, gap, fs)


def _run(seconds: float, seed: int, workdir: Path, gap: float, fs: Path | None) -> dict[str, Any]:
    rng = random.Random(seed)
    listen = {name: faults.free_port() for name in LINKS}
    om_keys = {**OVERRIDES["ordermanager"], **({"journal": str(fs / "orders.jsonl")} if fs else {})}
    stack = Stack(workdir, {**OVERRIDES, "ordermanager": om_keys,
                            "links": {n: f"127.0.0.1:{p}" for n, p in listen.items()}})
    g, om = stack.cfg.gateway, stack.cfg.ordermanager
    upstream = {"price": (g.host, g.price_port), "news": (g.host, g.news_port), "orders": (om.host, om.port)}
    proxies: dict[str, faults.Proxy] = {}
    recoveries: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    try:
        for name in LINKS:
            proxies[name] = faults.Proxy(upstream[name], listen[name], name, stack.logs / f"proxy-{name}.log").start()
        stack.start()
        healed(stack)
        menu = {**faults.MENU, **faults.program_menu(stack.programs), **faults.toxic_menu(proxies)}
        if fs is not None:
            menu["disk_full_journal"] = disk.full_for(fs)
        names = sorted(menu)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            name = rng.choice(names)
            print(f"fault {name}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                info = menu[name](stack)
                if info.get("up"):  # supervisord killed: what a person does, deploy/up
                    orphans = stack.up()
                    faults.emit("stack_up", stack, level="info", orphans=[d.describe() for d in orphans])
                healed(stack, restarted=info.get("restarted"))
                recoveries[name].append(time.monotonic() - t0)
            except (NotHealed, faults.FaultError, TimeoutError) as e:
                failures.append(f"{name}: {e}")
                print(f"  NOT HEALED: {e}", file=sys.stderr, flush=True)
                stack.up()  # a no-op while supervisord runs
                healed(stack, timeout=120)  # carry on only from a healed stack
            time.sleep(rng.uniform(0, gap))
        # Positions are held to their bounds on the fills, by healed() after each fault: counting every
        # journaled order as filled would flag a strategy that sends again after an ioc order expired.
        problems = journal_problems(stack.journal())
        failures += problems
        return {"seconds": seconds, "seed": seed, "recoveries": dict(recoveries), "failures": failures,
                "orders": order_counts(stack)}
    finally:
        stack.stop()
        for p in proxies.values():
            p.stop()


def table(report: dict[str, Any]) -> str:
    """The report as markdown."""
    rec: dict[str, list[float]] = report["recoveries"]
    allr = [x for xs in rec.values() for x in xs]
    lines = [f"Chaos soak: {report['seconds']:.0f} s, seed {report['seed']}", "",
             "| fault | injected | recovered | p50 s | p99 s | max s |", "|---|---:|---:|---:|---:|---:|"]
    for name in sorted(rec):
        xs = rec[name]
        lines.append(f"| {name} | {len(xs)} | {len(xs)} | {statistics.median(xs):.2f} | "
                     f"{percentile(xs, 99):.2f} | {max(xs):.2f} |")
    failed = len(report["failures"])
    if allr:
        lines.append(f"| **all** | {len(allr) + failed} | {len(allr)} | {statistics.median(allr):.2f} | "
                     f"{percentile(allr, 99):.2f} | {max(allr):.2f} |")
    o = report["orders"]
    lines += ["", "| orders sent | journaled | duplicated | lost | duplicate acks (resends) |",
              "|---:|---:|---:|---:|---:|",
              f"| {o['sent']} | {o['journaled']} | {o['duplicated']} | {o['lost']} | {o['duplicate_acks']} |"]
    if report["failures"]:
        lines += ["", "Failures:"] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, help="overrides --minutes")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    faults._log = logs.configure("faults", sys.stderr.buffer)  # fault records to stderr; stdout is the table
    seconds = a.seconds if a.seconds is not None else a.minutes * 60
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    workdir = Path(tempfile.mkdtemp(prefix="soak"))
    report = run(seconds, seed, workdir)
    text = table(report)
    print(json.dumps(report, indent=1) if a.json else text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    ok = not report["failures"] and report["orders"]["duplicated"] == 0 and report["orders"]["lost"] == 0
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
