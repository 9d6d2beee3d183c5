"""``deploy/bench --journal``: the journal's figures (issue 8), on private stacks
under the real supervisord.

- A journal of N orders (5M by default), written straight to its files with the
  journal's own encoder (closed segments, the checkpoint, an open segment filled
  to 95 % of ``journal_segment_bytes``: a restart's worst case); then ``kill -9``
  of the ordermanager until a fresh client's order is acked, and its RSS in
  operation. Reference: the same restart on an empty journal.
- The disk full for 10 s under load (a tmpfs under the journal; root only):
  crashes, acked orders lost, and the time from the space coming back to the
  next ack.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from shared import config
from shared.journal import Entry
from shared.journalfiles import CHECKPOINT, Checkpoint, encode_checkpoint, write_atomically
from shared.ops.bench import loopback
from shared.ops.bench.plan import say
from shared.ops.bench.recovery import recover_ordermanager
from shared.ops.bench.report import journal_notes, journal_rows, journal_table
from shared.ops.chaos import disk, faults
from shared.ops.chaos.invariants import ack_problems
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack, Order, Reject, frame

CLIENTS = ("strategy-1", "bench-1", "bench-2", "bench-3", "bench-4")
SYMBOLS = ("AAPL", "MSFT", "GOOGL")
OPEN_FILL = 0.95


@dataclass(frozen=True)
class JournalPlan:
    """How big and how long."""

    orders: int = 5_000_000
    restarts: int = 5
    load_s: float = 3.0  # pipelined load after the restarts (RSS in operation); before and after the full disk
    full_s: float = 10.0
    rate: int = 10_000  # orders/s offered by 4 clients while the disk fills and empties


QUICK = JournalPlan(orders=100_000, restarts=1, load_s=0.5, full_s=1.0, rate=2_000)


def write_journal(path: Path, orders: int, segment_bytes: int, window: int) -> dict[str, Any]:
    """A journal of ``orders`` orders of five clients, written straight to its files:
    closed segments of ``segment_bytes``, the checkpoint, an open segment 95 % full."""
    enc = msgspec.json.Encoder()
    t_ns = time.time_ns() - orders * 1000
    sample = enc.encode(Entry(orders, f"bench-4-{orders}", "bench-4", "GOOGL", "SELL", 10, 199.99, t_ns, t_ns, t_ns))
    n_open = min(orders, int(segment_bytes * OPEN_FILL / (len(sample) + 1)))
    positions: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    ids: dict[str, deque[tuple[str, int]]] = {c: deque(maxlen=window) for c in CLIENTS}
    last_id: dict[str, str] = {}
    buf, seg, closed_orders = bytearray(), 0, 0
    t0 = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    for no in range(1, orders + 1):
        cid, sym = CLIENTS[no % len(CLIENTS)], SYMBOLS[no % len(SYMBOLS)]
        oid, side, ts = f"{cid}-{no}", "BUY" if no // 5 % 2 else "SELL", t_ns + no * 1000
        enc.encode_into(Entry(no, oid, cid, sym, side, 10, 100.0 + no % 10_000 / 100, ts, ts - 400_000, ts),
                        buf, -1)
        buf += b"\n"
        if no <= orders - n_open:  # the checkpoint's state: the closed segments only
            positions[cid][sym] += 10 if side == "BUY" else -10
            ids[cid].append((oid, no))
            last_id[cid] = oid
        if no == orders - n_open or (no < orders - n_open and len(buf) >= segment_bytes):
            seg += 1
            Path(f"{path}.{seg}").write_bytes(buf)
            buf, closed_orders = bytearray(), no
    path.write_bytes(buf)
    if seg:
        write_atomically(str(path) + CHECKPOINT, encode_checkpoint(Checkpoint(
            segments=seg, orders=closed_orders, last_no=closed_orders,
            positions={c: {s: q for s, q in p.items() if q} for c, p in positions.items()}, last_id=last_id,
            window={c: dict(d) for c, d in ids.items() if d}, window_size=window, written_ns=time.time_ns())))
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"orders": orders, "segments": seg, "open_orders": orders - closed_orders, "bytes": size,
            "open_bytes": path.stat().st_size, "write_s": time.monotonic() - t0}


def proc_kb(pid: int, field: str) -> float:
    """A field of /proc/<pid>/status in MB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def restarts(stack: Stack, n: int) -> dict[str, Any]:
    """``n`` × kill -9 ordermanager → a fresh client's order acked; the load times and peak RSS."""
    got = [recover_ordermanager(stack, i) for i in range(n)]
    loads = [r["ms"] for r in stack.events("ordermanager", "journal_loaded")][-n:]
    pid = stack.pids()["ordermanager"]
    return {"ack_ms": [g[0] for g in got], "listen_ms": [g[1] for g in got], "load_ms": loads,
            "hwm_mb": proc_kb(pid, "VmHWM")}


def restart_run(plan: JournalPlan, workdir: Path, res: dict[str, Any]) -> None:
    """The N-order journal: restarts, then RSS in operation; the same restarts on an empty journal."""
    for name, orders in (("big", plan.orders), ("empty", 0)):
        stack = Stack(workdir / name)
        om = stack.cfg.ordermanager
        path = stack.cfg.resolve(om.journal)
        if orders:
            say(f"journal: writing {orders:,} orders")
            res["written"] = write_journal(path, orders, om.journal_segment_bytes, om.journal_window)
            say(f"journal: {res['written']['segments']} closed segments, {res['written']['bytes'] / 2**20:,.0f} MB"
                f" in {res['written']['write_s']:.1f} s")
        try:
            stack.start()
            say(f"journal: {plan.restarts} × kill -9 ordermanager with {orders:,} orders journaled")
            res[f"restart_{name}"] = r = restarts(stack, plan.restarts)
            if orders:
                pid = stack.pids()["ordermanager"]
                r["rss_start_mb"] = proc_kb(pid, "VmRSS")
                say(f"journal: 4 pipelining clients for {plan.load_s:g} s")
                r["load"] = loopback.order_load(om.port, stack.token, "AAPL", plan.load_s, prefix="load")
                r["rss_mb"], r["hwm_after_mb"] = proc_kb(pid, "VmRSS"), proc_kb(pid, "VmHWM")
        finally:
            stack.stop()


class Load:
    """4 clients, each sending its share of ``rate`` orders/s in small batches and
    noting every answer with its time (threads: the ordermanager is another process)."""

    def __init__(self, stack: Stack, rate: int, clients: int = 4) -> None:
        self.stack, self.per_tick = stack, max(1, rate // clients // 200)  # a batch every 5 ms
        self.acks: list[tuple[str, str, int, float]] = []  # client_id, order_id, order_no, when
        self.rejects: list[tuple[str, float]] = []  # reason, when
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(f"full-{i + 1}",)) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, cid: str) -> None:
        om = self.stack.cfg.ordermanager
        try:
            with OrderClient(om.host, om.port, timeout=10) as c:
                c.logon(cid, self.stack.token)
                n, next_at = 0, time.monotonic()
                while not self.stop.is_set():
                    now = time.time_ns()
                    batch = [Order(order_id=f"{cid}-{n + k}", symbol="AAPL", side="BUY" if (n + k) % 2 else "SELL",
                                   qty=1, price=100.0, ts_ns=now, tick_ts_ns=now) for k in range(1, self.per_tick + 1)]
                    n += self.per_tick
                    c.send_raw(b"".join(frame(o) for o in batch))
                    for _ in batch:
                        m = c.recv_type(Ack, Reject, timeout=10)
                        if isinstance(m, Ack):
                            self.acks.append((cid, m.order_id, m.order_no, time.monotonic()))
                        else:
                            self.rejects.append((m.reason, time.monotonic()))
                    next_at += 0.005
                    time.sleep(max(0.0, next_at - time.monotonic()))
        except (OSError, EOFError, TimeoutError) as e:
            self.errors.append(f"{cid}: {e}")

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def disk_full_run(plan: JournalPlan, workdir: Path, res: dict[str, Any]) -> None:
    """The disk under the journal full for ``full_s`` while 4 clients trade."""
    if os.geteuid() != 0:
        res["full"] = {"skipped": "needs root (a tmpfs under the journal)"}
        return
    with disk.tmpfs(workdir / "fs", 256 << 20) as mnt:
        stack = Stack(workdir / "full", {"ordermanager": {"journal": str(mnt / "orders.jsonl")}})
        try:
            stack.start()
            pid = stack.pids()["ordermanager"]
            say(f"journal: {plan.rate:,} orders/s, the disk full for {plan.full_s:g} s")
            load = Load(stack, plan.rate)
            try:
                time.sleep(plan.load_s)
                with disk.full(mnt, stack):
                    t_full = time.monotonic()
                    time.sleep(plan.full_s)
                t_free = time.monotonic()
                time.sleep(plan.load_s)
            finally:
                load.close()
            acks = [(c, o, n) for c, o, n, _ in load.acks]
            after = [t for *_, t in load.acks if t >= t_free]
            refused = [t for reason, t in load.rejects if reason == "unavailable"]
            exits = [r for r in stack.audit() if r.get("process") == "ordermanager" and r["to_state"] == "EXITED"]
            res["full"] = {
                "acked": len(acks), "refused": len(refused), "errors": load.errors,
                "refused_in_window": sum(t_full <= t <= t_free + 1 for t in refused),
                "lost": len(ack_problems(stack.journal(), acks)),
                "crashes": len(exits) + (stack.pids()["ordermanager"] != pid),
                "back_ms": (min(after) - t_free) * 1000 if after else None,
                "failed_logs": len(stack.events("ordermanager", "journal_write_failed")),
                "writable_logs": len(stack.events("ordermanager", "journal_writable"))}
        finally:
            stack.stop()


def run(plan: JournalPlan, workdir: Path) -> dict[str, Any]:
    """Every journal measurement; the results by name."""
    res: dict[str, Any] = {"segment_bytes": config.OrderManager().journal_segment_bytes,
                           "window": config.OrderManager().journal_window}
    restart_run(plan, workdir, res)
    with contextlib.suppress(FileNotFoundError):
        for p in (workdir / "big" / "logs").glob("orders.jsonl.*"):  # a GB of segments: gone before the next run
            p.unlink()
    disk_full_run(plan, workdir, res)
    return res


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """deploy/bench --journal [--quick] [--orders N] [--out PATH]."""
    faults.configure_log(sys.stderr.buffer)  # the fault records beside the progress; stdout is the table
    plan = QUICK if args.quick else JournalPlan()
    if args.orders is not None:
        plan = JournalPlan(**{**plan.__dict__, "orders": args.orders})
    workdir = Path(tempfile.mkdtemp(prefix="tsbenchj"))
    try:
        res = run(plan, workdir)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = journal_table(journal_rows(res))
    print(report)
    out = Path(args.out if args.out != "logs/bench.md" else "logs/bench-journal.md")
    out = out if out.is_absolute() else Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{report}\n\n{journal_notes(res, plan, argv)}\n")
    say(f"wrote {out}")
    return 0
