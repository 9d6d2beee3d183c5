"""The venue's figures (issue 15): the matching engine in-process, and a restart of the exchange
with a long journal behind it.

``deploy/bench`` has them as rows of its table; ``python -m shared.ops.bench.venue [--quick]``
(or ``deploy/bench --venue``) measures and prints only them (``--restart``: the restart alone):

- engine: events per second through a ``shared.matching.Engine`` holding 1,000 resting orders
  per symbol (``shared.ops.bench.engine``: passive orders and their cancels, ioc orders, ticks),
  per CPU second too, and p50/p99 per event;
- restart: a journal of 1,000,000 lines with 100,000 orders resting, written as the exchange
  writes it (its segments, rolls and checkpoints, the default segment size); then the exchange
  is started on it and a client that connects as soon as it can routes one order: the time from
  the process's start to that order's first exec, the exchange's own restore time, and its RSS;
- alone (``--venue``), an order's life: decision → ``new`` and decision → fill at the strategy of a
  short stack of its own, beside the bare four-hop floor (``shared.ops.bench.fourhop``; the full
  bench takes them from its run of one strategy instead).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared import config
from shared.ops.bench import engine as enginebench
from shared.ops.bench import fourhop
from shared.ops.bench.plan import say
from shared.ops.harness import Stack, free_port, read_jsonl
from shared.ops.peer import VenueClient
from shared.protocol import Exec
from shared.venuejournal import VenueJournal
from shared.venuerecords import OrderIn, Start, Tick, body, encode

SYMBOLS = ("AAPL", "MSFT", "GOOGL")
ENGINE_MIN = 100_000  # order events/s (issue 15)
FIRST_EXEC_S, RESTART_RSS_MB = 0.5, 80.0
LEVELS = 500  # price levels per side and symbol of the restart's resting orders, a cent apart


# --- the engine ---------------------------------------------------------------


def engine_rate(n: int = 300_000) -> dict[str, float]:
    """The engine's own bench (shared.ops.bench.engine, the engine's author's mix: passive orders and their
    cancels, ioc orders taking the quote or sweeping the book, ticks) on 1,000 resting orders per symbol."""
    return enginebench.run(n, 1000, len(SYMBOLS))


# --- the restart --------------------------------------------------------------


def write_journal(path: Path, resting: int, lines: int, segment_bytes: int) -> dict[str, Any]:
    """A journal as the exchange writes one: ``resting`` orders that rest, then ticks and marketable
    orders until it holds ``lines`` lines and its open segment is 90 % full (with its rolls and
    checkpoints on the way)."""
    log = _Quiet()
    j = VenueJournal(str(path), "write", log, segment_bytes)
    st = j.restore(2.0, 100)
    eng, window = st.engine, st.window
    ticks: dict[str, tuple[str, int]] = {}
    seq = 0

    def turn(recs: list[Any]) -> None:
        for rec in recs:
            if type(rec) is OrderIn:
                window.add(rec.client_id, rec.order_id, rec.order_no)
                execs = eng.order(rec.order_no, rec.client_id, rec.order_id, rec.symbol, rec.side, rec.qty,
                                  rec.price, rec.ord_type, rec.tif, rec.ts_ns)
            elif type(rec) is Tick:
                ticks[rec.symbol] = (rec.session, rec.seq)
                execs = eng.tick(rec.symbol, rec.price, rec.ts_ns)
            else:
                execs = eng.cancel(rec.client_id, rec.order_id, rec.ts_ns) or []
            j.stage(encode(rec))
            for e in execs:
                j.stage_exec(body(e))
        j.commit()
        if j.due():
            j.roll(eng, window, ticks, "size")

    j.stage(encode(Start("bench", 2.0, 100, time.time_ns())))
    no = 0
    for s in SYMBOLS:
        seq += 1
        turn([Tick(s, 100.0, seq, time.time_ns(), "gw")])
    for k in range(resting):  # far from the market: they rest for good
        no += 1
        s, side = SYMBOLS[k % 3], "BUY" if k % 2 else "SELL"
        px = round(100 + (-1 if side == "BUY" else 1) * (5 + (k // 6) % LEVELS * 0.01), 2)
        turn([OrderIn(no, f"c{k % 8}", f"r{no}", s, side, 10, px, "limit", "day", time.time_ns())])
    rng = random.Random(2)
    # On to the line count, then on until the open segment is 90 % full: the most a restart ever replays.
    while j.lines + j.staged_lines < lines or j.size < 0.9 * segment_bytes:
        no += 1
        seq += 1
        s = SYMBOLS[no % 3]
        now = time.time_ns()
        turn([Tick(s, round(100 + rng.uniform(-1, 1), 2), seq, now, "gw"),
              OrderIn(no, f"c{no % 8}", f"m{no}", s, rng.choice(("BUY", "SELL")), rng.randint(1, 50), None, "market",
                      "ioc", now)])
    out = {"lines": j.lines, "segments": j.closed, "open_bytes": j.size, "resting": len(eng._live),
           "next_exec_id": eng.next_exec_id, "orders": no}
    j.close()
    return out


class _Quiet:
    """A logger that drops everything (the journal's own records)."""

    def __getattr__(self, _: str) -> Any:
        return lambda *a, **kw: None


def restart(workdir: Path, resting: int = 100_000, lines: int = 1_000_000) -> dict[str, Any]:
    """Start the exchange on a journal of ``lines`` lines with ``resting`` orders resting; the time to
    the first exec of an order routed as soon as it listens, its restore time and its RSS."""
    seg_bytes = config.Exchange().journal_segment_bytes
    stack = Stack(workdir, {"exchange": {"port": free_port(), "journal": str(workdir / "logs" / "exchange.jsonl")},
                            "links": {"price": f"127.0.0.1:{free_port()}"}})  # no feed: the quotes are restored
    shutil.rmtree(stack.run, ignore_errors=True)
    t0 = time.monotonic()
    made = write_journal(workdir / "logs" / "exchange.jsonl", resting, lines, seg_bytes)
    say(f"venue: wrote {made['lines']:,} journal lines ({made['segments']} closed segments, "
        f"{made['resting']:,} resting) in {time.monotonic() - t0:.1f} s")
    x = stack.cfg.exchange
    log = stack.logs / "exchange.log"
    with open(log, "ab") as f:
        start = time.monotonic()
        p = subprocess.Popen([sys.executable, str(config.ROOT / "daemons" / "exchange.py")], env=stack.env,
                             cwd=config.ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        c = _connect(x.host, x.port, start + 30)
        c.logon(stack.token, made["next_exec_id"] - 1)
        c.route(made["orders"] + 1, "bench", "first", SYMBOLS[0], "BUY", 1, None, "market")
        first = c.next(Exec, timeout=30)
        first_s = time.monotonic() - start
        assert first.status == "new", first
        cpu_s = _cpu_s(p.pid)
        status = Path(f"/proc/{p.pid}/status").read_text()
        rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
        hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
        c.close()
    finally:
        p.terminate()
        p.wait(30)
    restored = next(r for r in read_jsonl(log) if r.get("event") == "exchange_restored")
    bare_s, bare_cpu_s = _bare_start_s()
    return {**made, "first_exec_s": first_s, "first_exec_cpu_s": cpu_s, "restore_s": restored["seconds"],
            "restore_cpu_s": restored["cpu_seconds"], "replayed": restored["lines"], "rss_mb": rss, "hwm_mb": hwm,
            "bare_start_s": bare_s, "bare_start_cpu_s": bare_cpu_s, "load": os.getloadavg()[0]}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connect(host: str, port: int, deadline: float) -> VenueClient:
    while True:
        try:
            return VenueClient(host, port, timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def _bare_start_s() -> tuple[float, float]:
    """How long this machine takes to start the interpreter and import what a daemon imports: wall and CPU s."""
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # what daemons/exchange.py imports before it restores: the lifecycle (and the logging) too
    subprocess.run([sys.executable, "-c", "from shared import config; import shared.exchange, shared.lifecycle"],
                   cwd=config.ROOT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic() - t0, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


# --- the rows -----------------------------------------------------------------


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """The bench table's rows of these figures (its columns: figure, stack, reference, ratio, seed,
    target, verdict). Wall times on a loaded machine mislead: the CPU seconds stand beside them."""
    e = res["engine"]
    ok = e["events_per_s"] >= ENGINE_MIN
    engine = (f"matching engine, {e['resting_start']:,.0f} resting per symbol (events/s)", f"{e['events_per_s']:,.0f}",
              f"{e['events_per_cpu_s']:,.0f} per CPU second; p50 {e['p50_us']:.1f} µs, p99 {e['p99_us']:.1f} µs an "
              "event", "", "", f"≥ {ENGINE_MIN:,}", "pass" if ok else "FAIL")
    return [engine, *restart_rows(res["restart"])]


def restart_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """The restart's two rows (first exec, RSS)."""
    out: list[tuple[str, str, str, str, str, str, str]] = []
    label = f"{r['resting']:,} resting, {r['lines']:,} journal lines"
    out.append((f"exchange restart, {label}: first exec (s)", f"{r['first_exec_s']:.3f} ({r['first_exec_cpu_s']:.2f} "
                f"CPU)", f"{r['bare_start_s']:.3f} ({r['bare_start_cpu_s']:.2f} CPU) interpreter and imports; restore "
                f"{r['restore_s']:.3f} ({r['restore_cpu_s']:.2f} CPU, {r['replayed']:,} lines replayed)",
                f"{r['first_exec_s'] / r['bare_start_s']:.2f}×", "", f"≤ {FIRST_EXEC_S:g} s",
                "pass" if r["first_exec_s"] <= FIRST_EXEC_S else "FAIL"))
    out.append((f"exchange restart, {label}: RSS (MB)", f"{r['rss_mb']:.1f}", f"{r['hwm_mb']:.1f} peak (VmHWM)", "", "",
                f"≤ {RESTART_RSS_MB:g} MB", "pass" if r["rss_mb"] <= RESTART_RSS_MB else "FAIL"))
    return out


def run(scale: int = 1, workdir: Path | None = None, lines: int | None = None) -> dict[str, Any]:
    """Both measurements, their sizes divided by ``scale`` (10: ``--quick``); the restart's journal ``lines``
    long if given (at least its resting orders and an open segment 90 % full)."""
    say("venue: the matching engine in-process")
    res: dict[str, Any] = {"engine": engine_rate(300_000 // scale)}
    tmp = Path(tempfile.mkdtemp(prefix="tsvenue")) if workdir is None else workdir
    try:
        say("venue: a restart of the exchange on a long journal")
        res["restart"] = restart(tmp / "restart", 100_000 // scale, lines or 1_000_000 // scale)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.ops.bench.venue", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--restart", action="store_true", help="only the restart of the exchange (its two rows)")
    args = ap.parse_args(argv)
    if args.restart:
        return _restart_only(10 if args.quick else 1)
    res = run(10 if args.quick else 1)
    tmp = Path(tempfile.mkdtemp(prefix="tsvenue"))
    try:  # an order's life: a short stack of its own (the full bench uses its run of one strategy)
        res["fourhop"] = fourhop.live(tmp, 3.0 if args.quick else 15.0, 1.0 if args.quick else 7.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| figure | stack | reference (same run) | stack/ref | seed | target (issue 15) | pass/fail |")
    print("|---|---:|---|---:|---|---|---|")
    for row in [*rows(res), *fourhop.rows(res["fourhop"])]:
        print("| " + " | ".join(row) + " |")
    say(f"venue: load average {res['restart']['load']:.1f} on {os.cpu_count()} CPUs during the restart")
    return 0


def _restart_only(scale: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tsvenue"))
    try:
        r = restart(tmp / "restart", 100_000 // scale, 1_000_000 // scale)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| figure | stack | reference (same run) | stack/ref | seed | target (issue 15) | pass/fail |")
    print("|---|---:|---|---:|---|---|---|")
    for row in restart_rows(r):
        print("| " + " | ".join(row) + " |")
    say(f"venue: load average {r['load']:.1f} on {os.cpu_count()} CPUs during the restart")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
