"""Recovery measurements for deploy/bench: ``kill -9`` of a program, or of
supervisord itself followed by what ``deploy/up`` does, to the stack serving again.

    python -m shared.ops.bench.recovery --runs 5    # kill -9 supervisord -> up, alone, on a private stack
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shared.book import Segment
from shared.config import ROOT
from shared.ops import ctl
from shared.ops.bench.plan import NEWS_RATE, PRICE_RATE, T2T_STRATEGY, UP_TARGET_S
from shared.ops.chaos.faults import wait_dead
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.ops.stats import percentile
from shared.protocol import Ack, Reject


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _kill(stack: Stack, program: str) -> int:
    """SIGKILL a program once supervisord has it RUNNING; the time of the kill."""
    stack.wait_running((program,))
    pid = stack.pids()[program]
    t = time.time_ns()
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)  # until then its listening socket still accepts
    return t


def recover_gateway(stack: Stack, seg: Segment) -> tuple[float, float]:
    """kill -9 gateway: ms until the book is fresh again, and until the port listens."""
    t0 = _kill(stack, "gateway")
    listen: float | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if listen is None and _listening(stack.cfg.gateway.price_port):
            listen = (time.time_ns() - t0) / 1e6
        recs = [seg.read(i) for i in range(len(seg.symbols))]
        fresh = [r.recv_ns for r in recs if r is not None and r.ts_ns > t0]
        if fresh:
            ms = (min(fresh) - t0) / 1e6
            return ms, min(listen if listen is not None else ms, ms)
        time.sleep(0.001)
    raise TimeoutError("the book did not become fresh after kill -9 gateway")


def first_ack(stack: Stack, order_id: str, timeout: float = 30.0) -> None:
    """Log on as a fresh client and send one order, until it is acked."""
    om = stack.cfg.ordermanager
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = OrderClient(om.host, om.port, timeout=0.5)
        except OSError:
            time.sleep(0.001)
            continue
        try:
            with c:
                c.logon("bench-recovery", stack.token)
                c.order(order_id, stack.cfg.symbols[0], "BUY", 1, 100.0)
                if isinstance(c.recv_type(Ack, Reject, timeout=5), Ack):
                    return
        except (OSError, EOFError, TimeoutError):
            time.sleep(0.001)
    raise TimeoutError(f"no ack for {order_id} in {timeout} s")


def recover_ordermanager(stack: Stack, trial: int) -> tuple[float, float]:
    """kill -9 ordermanager: ms until an order is acked again, and until the port listens."""
    t0 = _kill(stack, "ordermanager")
    deadline = time.monotonic() + 30
    while not _listening(stack.cfg.ordermanager.port):
        if time.monotonic() > deadline:
            raise TimeoutError("the ordermanager never listened again")
        time.sleep(0.001)
    listen = (time.time_ns() - t0) / 1e6
    first_ack(stack, f"rec-{trial}")
    return (time.time_ns() - t0) / 1e6, listen


def duplicated(journal: list[dict[str, Any]]) -> int:
    """order_no (or client_id/order_id) journaled more than once."""
    nos = Counter(e["order_no"] for e in journal)
    ids = Counter((e["client_id"], e["order_id"]) for e in journal)
    return sum(n - 1 for n in nos.values()) + sum(n - 1 for n in ids.values())


def recover_supervisord(stack: Stack, trial: int) -> dict[str, float]:
    """kill -9 supervisord, then what deploy/up does (sweep the orphans, start
    afresh): ms from the kill to the orphans gone, every program RUNNING, a
    fresh client's order acked, the strategy's next order journaled; and the
    duplicates in the journal afterwards."""
    stack.wait_running()
    cid = stack.cfg.strategy.client_id
    last = max((e["order_no"] for e in stack.journal()), default=0)
    assert stack.pid is not None
    t0 = time.monotonic()
    os.kill(stack.pid, signal.SIGKILL)
    wait_dead(stack.pid)

    def ms() -> float:
        return (time.monotonic() - t0) * 1000

    found = ctl.sweep(ROOT, stack.config_path, lambda _: None)
    swept = ms()
    stack.start(wait=False)
    stack.wait_running(timeout=60)
    running = ms()
    first_ack(stack, f"rec-up-{trial}")
    acked = ms()
    stack.wait_for(lambda: any(e["order_no"] > last and e["client_id"] == cid for e in stack.journal()),
                   timeout=60, interval=0.01)
    trading = ms()
    return {"swept": swept, "running": running, "acked": acked, "trading": trading,
            "serving": max(running, acked, trading), "orphans": len(found),
            "duplicated": duplicated(stack.journal())}


def up_table(runs: list[dict[str, float]]) -> str:
    """The supervisord runs as markdown: each phase's p50 and max, from the kill."""
    lines = [f"kill -9 supervisord -> up ({len(runs)} runs), ms from the kill", "",
             "| until | p50 | max |", "|---|---:|---:|"]
    for key, what in (("swept", "orphans gone (the sweep)"), ("running", "every program RUNNING"),
                      ("acked", "a fresh client's order acked"), ("trading", "the strategy's next order journaled"),
                      ("serving", "all RUNNING and orders flowing")):
        xs = [r[key] for r in runs]
        lines.append(f"| {what} | {percentile(xs, 50):,.0f} | {max(xs):,.0f} |")
    worst = max(r["serving"] for r in runs) / 1000
    lines += ["", f"orphans left for the sweep: {sum(int(r['orphans']) for r in runs)}; "
              f"duplicated in the journal: {max(int(r['duplicated']) for r in runs)}; "
              f"target <= {UP_TARGET_S:g} s: {'pass' if worst <= UP_TARGET_S else 'FAIL'} (worst {worst:.1f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure kill -9 supervisord -> up on a private stack trading as in the bench."""
    ap = argparse.ArgumentParser(prog="python -m shared.ops.bench.recovery", description=main.__doc__)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tsrecovery"))
    stack = Stack(workdir, {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE}, "strategy": T2T_STRATEGY})
    try:
        stack.start()
        stack.wait_for(lambda: stack.journal(), timeout=60)
        runs = []
        for i in range(a.runs):
            runs.append(recover_supervisord(stack, i))
            print(f"run {i + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(up_table(runs))
    return 0 if max(r["serving"] for r in runs) <= UP_TARGET_S * 1000 and not any(r["duplicated"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
