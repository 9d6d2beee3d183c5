"""Outside observers the bench runs beside a live stack: snapshots of the book;
in processes of their own, a tape of the price stream (which tick went to which
symbol) and a book reader polling every millisecond, as the strategy did before
the ring (its CPU, and how many ticks it saw); and the bench's runs built on them."""

from __future__ import annotations

import socket
import time
from array import array
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import msgspec

from shared.book import Record, Segment
from shared.ops.bench.loopback import JOIN_S, Roles, _frames, _recv

if TYPE_CHECKING:
    from shared.ops.harness import Stack


class _Frame(msgspec.Struct):
    """What the tape keeps of a frame of the price stream."""

    type: str
    seq: int = 0
    symbol: str = ""
    snapshot: bool = False


def _tape(pipe: Connection, host: str, port: int, seconds: float) -> None:
    """Subscribe to the price stream; after ``seconds``, report each symbol's
    live tick seqs and whether the stream stayed contiguous."""
    s = socket.create_connection((host, port), timeout=JOIN_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dec = msgspec.json.Decoder(_Frame)
    seqs: dict[str, array[int]] = {}
    first = last = 0
    gaps = 0
    end = 0.0
    for body in _frames(s):
        m = dec.decode(body)
        if m.type == "hello":
            pipe.send("ready")
            end = time.monotonic() + seconds
        elif m.type == "price" and not m.snapshot:
            if last and m.seq != last + 1:
                gaps += 1
            first, last = first or m.seq, m.seq
            seqs.setdefault(m.symbol, array("Q")).append(m.seq)
        if end and time.monotonic() > end:
            break
    s.close()
    pipe.send({"seqs": seqs, "first": first, "last": last, "gaps": gaps})


class Tape:
    """``with Tape(host, port, seconds) as t: ...; t.result()``: the price stream's ticks."""

    def __init__(self, host: str, port: int, seconds: float) -> None:
        self.roles = Roles()
        self.seconds = seconds
        self.pipe = self.roles.spawn(_tape, host, port, seconds)
        _recv(self.pipe)  # subscribed

    def result(self) -> dict[str, Any]:
        return _recv(self.pipe, JOIN_S + self.seconds)  # type: ignore[no-any-return]

    def __enter__(self) -> Tape:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.roles.close()


def window_problems(orders: Iterable[dict[str, Any]], tape: dict[str, Any]) -> tuple[int, list[str]]:
    """Check each ``order_sent`` window the tape covers: the symbol's ticks from
    ``first_tick_seq`` to ``last_tick_seq`` must number ``ticks``, none skipped.
    Returns (windows checked, problems)."""
    checked, problems = 0, []
    if tape["gaps"]:
        problems.append(f"the tape itself has {tape['gaps']} gaps")
    for r in orders:
        first, last = r.get("first_tick_seq"), r.get("last_tick_seq")
        if first is None or last is None or not tape["first"] <= first <= last <= tape["last"]:
            continue
        mine = tape["seqs"].get(r["symbol"], ())
        n = sum(1 for q in mine if first <= q <= last)  # the tapes are short: no bisect needed
        checked += 1
        if n != r["ticks"]:
            problems.append(f"{r['order_id']}: window of {r['ticks']} ticks from {first} to {last}, "
                            f"the stream had {n} {r['symbol']} ticks there")
    return checked, problems


def _poller(pipe: Connection, segment: str, seconds: float) -> None:
    """Read every slot each millisecond for ``seconds``: CPU used, ticks seen, ticks written."""
    seg = Segment.attach(segment)
    n = len(seg.symbols)
    last = [r.updates if (r := seg.read(i)) is not None else 0 for i in range(n)]
    start = list(last)
    seen = 0
    c0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        for i in range(n):
            r = seg.read(i)
            if r is not None and r.updates != last[i]:
                last[i] = r.updates
                seen += 1
        time.sleep(0.001)
    cpu, elapsed = time.process_time() - c0, time.monotonic() - t0
    seg.close()
    pipe.send({"cpu": cpu / elapsed, "seen": seen, "written": sum(last) - sum(start)})


def poll_book(segment: str, seconds: float) -> dict[str, Any]:
    """A 1 ms book poller's share of a core and of the ticks, over ``seconds``."""
    with Roles() as roles:
        return _recv(roles.spawn(_poller, segment, seconds), JOIN_S + seconds)  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (ns precision, from schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


# --- the book, and the runs on it ---------------------------------------------


def records(seg: Segment) -> list[Record | None]:
    return [seg.read(i) for i in range(len(seg.symbols))]


SNAPSHOT_S = 50e-6  # the longest a read of every slot may take to count as one instant


def snapshot(seg: Segment) -> tuple[list[Record], float]:
    """Every slot, read within SNAPSHOT_S (retried when the reader was preempted); and when."""
    for _ in range(10_000):
        t = time.perf_counter()
        recs = records(seg)
        if time.perf_counter() - t < SNAPSHOT_S and all(recs):
            break
    return [r for r in recs if r is not None], time.monotonic()


def windows_run(stack: Stack, seg: Segment, seconds: float) -> dict[str, Any]:
    """The strategy's windows against a tape of the price stream: each order's
    window must hold every tick of its symbol between its first and last."""
    g = stack.cfg.gateway
    n0 = len(stack.events("strategy", "order_sent"))
    u0 = len(stack.events("strategy", "window_unavailable"))
    a, ta = snapshot(seg)
    with Tape(g.host, g.price_port, seconds) as tape:
        got = tape.result()
    b, tb = snapshot(seg)
    time.sleep(0.5)  # the last order_sent lines reach the log
    orders = stack.events("strategy", "order_sent")[n0:]
    checked, problems = window_problems(orders, got)
    return {"rate": (sum(r.updates for r in b) - sum(r.updates for r in a)) / (tb - ta), "orders": len(orders),
            "checked": checked, "problems": problems,
            "unavailable": len(stack.events("strategy", "window_unavailable")) - u0}


def idle_run(stack: Stack, seg: Segment, seconds: float) -> dict[str, Any]:
    """The strategy's share of a core with no news while prices flow, beside a
    1 ms book poller's (how the strategy read the book before the ring)."""
    time.sleep(1.0)  # past the start, and any news in flight
    pid = stack.pids()["strategy"]
    a, ta = snapshot(seg)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    poll = poll_book(stack.segment, seconds)
    cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    b, tb = snapshot(seg)
    return {"cpu": cpu, "poll": poll, "rate": (sum(r.updates for r in b) - sum(r.updates for r in a)) / (tb - ta),
            "orders": len(stack.events("strategy", "order_sent"))}
