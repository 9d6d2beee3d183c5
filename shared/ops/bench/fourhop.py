"""An order's life against its floor (issue 15): decision → ``new`` and decision → fill at the strategy,
beside a bare chain over the same four hops, strategy → OM → exchange → OM → strategy, in the same run.

The floor is five spawned interpreters (``loopback.Roles``) relaying the stack's own frames over loopback
TCP with nothing but the work each hop must do, in the style of the fan-out floor: a source (the
strategy deciding) writes an ``order`` stamped with its decision time; a relay (the ordermanager)
decodes it and writes a ``route``; a relay (the exchange) decodes that and writes an ``exec`` ``new``
and an ``exec`` ``filled`` in one write; a relay (the ordermanager again) decodes each exec and forwards
the frames as they came, one write per read; a sink (the strategy) decodes each and timestamps it.
Blocking sockets, msgspec both ways, 64 KiB reads, framing by hand.

The stack's side comes from a live stack's strategy log: ``order_sent``'s ``ts_ns`` (the order's own
decision time) and ``exec_received``'s ``recv_ns``, for market orders (the default ``ord_type``), which
fill at once, so each has both figures. ``deploy/bench`` takes them from its run of one strategy;
``deploy/bench --venue`` and ``python -m shared.ops.bench.fourhop`` run a short stack of their own. The
floor runs at the strategy's pace in that window (its orders/s), so that its hops idle between orders as
long as the stack's do, while the stack trades and again once it is down.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shared.ops.bench.loopback import _LEN, FLOOR_RECV, JOIN_S, Roles, _accept, _connect, _frames, _listen, _recv
from shared.ops.bench.plan import NEWS_RATE, PRICE_RATE, T2T_STRATEGY, say
from shared.ops.stats import percentile
from shared.protocol import Exec, Order, Route

if TYPE_CHECKING:
    from shared.ops.harness import Stack

P50_X = 1.5  # issue 15: p50 ≤ 1.5× the floor (p99 is reported, not judged)
MIN_RATE, MIN_ORDERS = 10.0, 50  # the floor's slowest pace (orders/s) and fewest orders
KINDS = ("new", "fill")

# --- the bare chain ---------------------------------------------------------------


def _source(pipe: Connection, port: int, rate: float, count: int) -> None:
    """The strategy deciding: ``count`` market orders at ``rate``, each stamped when made; their times."""
    s = _connect(port)
    enc, pack = msgspec.json.Encoder(), _LEN.pack
    sent: list[int] = []
    time.sleep(0.2)  # let the far ends settle before the clock starts
    t0 = time.monotonic()
    while len(sent) < count:
        wait = t0 + len(sent) / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        n, now = len(sent) + 1, time.time_ns()
        b = enc.encode(Order(order_id=f"floor-{n}", symbol="AAPL", side="BUY" if n & 1 else "SELL", qty=20,
                             price=101.0, ts_ns=now, tick_ts_ns=now, ord_type="market", tif="ioc"))
        s.sendall(pack(len(b)) + b)
        sent.append(now)
    s.close()
    pipe.send(sent)


def _serve(pipe: Connection, out_port: int) -> tuple[socket.socket, socket.socket]:
    """A relay's two ends: connected to the next hop, then accepted from the previous one."""
    out = _connect(out_port)
    ls = _listen()
    pipe.send(ls.getsockname()[1])
    return _accept(ls), out


def _om_in(pipe: Connection, out_port: int) -> None:
    """The ordermanager accepting: decode each order, write its route."""
    s, out = _serve(pipe, out_port)
    dec, enc, pack = msgspec.json.Decoder(Order), msgspec.json.Encoder(), _LEN.pack
    n = 0
    for body in _frames(s):
        o = dec.decode(body)
        n += 1
        b = enc.encode(Route(order_no=n, client_id="floor", order_id=o.order_id, symbol=o.symbol, side=o.side,
                             qty=o.qty, price=o.price, ord_type=o.ord_type, tif=o.tif))
        out.sendall(pack(len(b)) + b)
    out.close()
    pipe.send(n)


def _venue(pipe: Connection, out_port: int) -> None:
    """The exchange: decode each route, write its ``new`` and its fill together (a market order fills at once)."""
    s, out = _serve(pipe, out_port)
    dec, enc, pack = msgspec.json.Decoder(Route), msgspec.json.Encoder(), _LEN.pack
    n = 0
    for body in _frames(s):
        r = dec.decode(body)
        now = time.time_ns()
        a = enc.encode(Exec(order_id=r.order_id, exec_id=2 * n + 1, status="new", last_qty=0, last_px=None, cum_qty=0,
                            leaves_qty=r.qty, avg_px=None, ts_ns=now, symbol=r.symbol, side=r.side,
                            client_id=r.client_id, order_no=r.order_no))
        b = enc.encode(Exec(order_id=r.order_id, exec_id=2 * n + 2, status="filled", last_qty=r.qty, last_px=100.0,
                            cum_qty=r.qty, leaves_qty=0, avg_px=100.0, ts_ns=now, symbol=r.symbol, side=r.side,
                            client_id=r.client_id, order_no=r.order_no))
        n += 1
        out.sendall(pack(len(a)) + a + pack(len(b)) + b)
    out.close()
    pipe.send(n)


def _reads(s: socket.socket) -> Iterator[tuple[bytes, list[bytes]]]:
    """Per read: the whole frames it completed, as bytes and as bodies (until EOF)."""
    buf, unpack = b"", _LEN.unpack_from
    while data := s.recv(FLOOR_RECV):
        buf = buf + data if buf else data
        pos, end, bodies = 0, len(buf), []
        while end - pos >= 4:
            size = unpack(buf, pos)[0]
            if end - pos - 4 < size:
                break
            bodies.append(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if bodies:
            yield buf[:pos], bodies
        buf = buf[pos:]


def _om_out(pipe: Connection, out_port: int) -> None:
    """The ordermanager forwarding: decode each exec, forward a read's frames as they came, in one write."""
    s, out = _serve(pipe, out_port)
    dec = msgspec.json.Decoder(Exec)
    n = 0
    for whole, bodies in _reads(s):
        for body in bodies:
            dec.decode(body)
        n += len(bodies)
        out.sendall(whole)
    out.close()
    pipe.send(n)


def _sink(pipe: Connection) -> None:
    """The strategy receiving: decode each exec and timestamp it; (order_id, status, ns) of each."""
    ls = _listen()
    pipe.send(ls.getsockname()[1])
    s = _accept(ls)
    dec = msgspec.json.Decoder(Exec)
    got: list[tuple[str, str, int]] = []
    for body in _frames(s):
        e = dec.decode(body)
        got.append((e.order_id, e.status, time.time_ns()))
    pipe.send(got)


def chain(rate: float, count: int) -> dict[str, list[int]]:
    """Decision → ``new`` and decision → fill (ns) of ``count`` orders at ``rate`` through the bare four hops."""
    with Roles() as roles:
        sink = roles.spawn(_sink)
        port = _recv(sink)
        hops = []
        for role in (_om_out, _venue, _om_in):  # each connects to the next, so from the far end back
            hops.append(roles.spawn(role, port))
            port = _recv(hops[-1])
        source = roles.spawn(_source, port, rate, count)
        sent: list[int] = _recv(source, JOIN_S + count / rate)
        for h in reversed(hops):
            _recv(h)
        got: list[tuple[str, str, int]] = _recv(sink)
    out: dict[str, list[int]] = {"new": [], "fill": []}
    for oid, status, t in got:
        out["new" if status == "new" else "fill"].append(t - sent[int(oid.rsplit("-", 1)[1]) - 1])
    return out


# --- the stack's side ------------------------------------------------------------


def from_log(stack: Stack, program: str, t0_ns: int, t1_ns: int) -> dict[str, Any]:
    """Decision → ``new`` and decision → first fill (ns) of the orders ``program`` decided in [t0, t1), from
    its log (``order_sent`` ``ts_ns``, ``exec_received`` ``recv_ns``); how many it sent, and their types."""
    log = stack.log(program)
    decided = {r["order_id"]: r["ts_ns"] for r in log if r.get("event") == "order_sent"
               and t0_ns <= r.get("ts_ns", 0) < t1_ns}
    types = {r.get("ord_type") for r in log if r.get("event") == "order_sent" and r["order_id"] in decided}
    out: dict[str, Any] = {"new": [], "fill": [], "orders": len(decided), "ord_types": sorted(map(str, types))}
    seen: set[tuple[str, str]] = set()
    for r in log:
        if r.get("event") != "exec_received" or r.get("order_id") not in decided or "recv_ns" not in r:
            continue
        kind = "new" if r["status"] == "new" else "fill" if r.get("last_qty") else None
        if kind is None or (r["order_id"], kind) in seen:
            continue
        seen.add((r["order_id"], kind))
        out[kind].append(r["recv_ns"] - decided[r["order_id"]])
    return out


def stack_side(stack: Stack, program: str, t0_ns: int, t1_ns: int, strategies: int) -> dict[str, Any]:
    """The stack's figures (``from_log``) and the floor's pace: the orders/s ``program`` sent in its window (within
    MIN_RATE and NEWS_RATE, one order per news tick at most), so that the floor's hops idle as long between
    orders as the stack's do."""
    st = from_log(stack, program, t0_ns, t1_ns)
    rate = min(float(NEWS_RATE), max(MIN_RATE, st["orders"] / ((t1_ns - t0_ns) / 1e9)))
    return {"stack": st, "rate": rate, "strategies": strategies}


def floor_run(res: dict[str, Any], key: str, seconds: float, when: str) -> None:
    """The bare chain at ``res``'s pace for ``seconds`` (MIN_ORDERS at least), into ``res[key]``."""
    count = max(MIN_ORDERS, round(res["rate"] * seconds))
    say(f"four-hop floor{when}: {count:,} orders at {res['rate']:,.0f}/s, the stack's pace")
    res[key] = chain(res["rate"], count)


def live(workdir: Path, seconds: float, floor_s: float) -> dict[str, Any]:
    """A run of its own: a stack of one strategy trading market orders at the bench's rates for ``seconds``,
    its figures; the floor at its pace while it trades, and again once it is down."""
    from shared.ops.harness import Stack  # here, not at the top: every role process imports this module

    stack = Stack(workdir, {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE},
                            "strategy": {**T2T_STRATEGY, "ord_type": "market"}})
    say(f"four-hop: a stack of one strategy trading market orders for {seconds:g} s")
    try:  # a start that fails half way still leaves nothing behind
        stack.start()
        program = stack.strategies[0].program
        stack.wait_for(lambda: stack.events(program, "exec_received"), timeout=60)
        t0 = time.time_ns()
        time.sleep(seconds)
        t1 = time.time_ns()
        time.sleep(0.5)  # the last execs and log lines in flight
        res = stack_side(stack, program, t0, t1, 1)
        floor_run(res, "floor_load", floor_s, ", the strategy trading")
    finally:
        stack.stop()
    floor_run(res, "floor_idle", floor_s, ", no stack up")
    return res


# --- the rows --------------------------------------------------------------------


def _us(ns: list[int], q: float) -> float:
    return percentile(ns, q) / 1e3


def floor(res: dict[str, Any], kind: str, q: float) -> float:
    """The floor's percentile (µs): the lower of the bare chain idle and while the stack traded."""
    return min(_us(res[k][kind], q) for k in ("floor_idle", "floor_load") if k in res)


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """The table's rows (figure, stack, reference, ratio, seed, target, verdict): the floor, then decision →
    ``new`` and decision → fill at p50 and p99 beside it; p50 judged when one strategy traded."""
    st, n = res["stack"], res["strategies"]
    who = f"{n} strateg{'y' if n == 1 else 'ies'}"
    idle, load = res["floor_idle"], res.get("floor_load")
    out = [(f"four-hop floor, decision → new / fill p50 / p99 (µs), {len(idle['fill']):,} orders at "
            f"{res['rate']:,.0f}/s",
            " / ".join(f"{_us(idle[k], q):,.0f}" for k in KINDS for q in (50, 99)) + " idle",
            " / ".join(f"{_us(load[k], q):,.0f}" for k in KINDS for q in (50, 99)) + f" with {who} trading"
            if load else "", "", "", "the lower of each" if load else "", "")]
    for kind, what in (("new", "decision → new"), ("fill", "decision → fill")):
        for q in (50, 99):
            got, ref = _us(st[kind], q), floor(res, kind, q)
            judged = q == 50 and n == 1
            ok = got <= P50_X * ref
            out.append((f"{what} p{q} at the strategy (µs), {who}, market orders", f"{got:,.0f}",
                        f"{ref:,.0f} four-hop floor", f"{got / ref:.2f}×" if ref else "–", "",
                        f"≤ {P50_X:g}× four-hop floor" if judged else "", ("pass" if ok else "FAIL") if judged else ""))
    out.append((f"decision → new / fill samples, {who}", f"{len(st['new']):,} / {len(st['fill']):,} of "
                f"{st['orders']:,} orders ({', '.join(st['ord_types'])})", f"{len(idle['fill']):,} floor orders",
                "", "", "", ""))
    return out


def note(res: dict[str, Any]) -> str:
    """How the rows were made, for the notes under the table."""
    n = res["strategies"]
    return (f"- Decision → new and decision → fill: the strategy's `order_sent` `ts_ns` (the order's decision time)"
            f" to its `exec_received` `recv_ns` (the exec decoded) of its `new` and of its first fill, for the orders"
            f" the first strategy of the run of {n} decided in the tick-to-trade window (market orders: they fill at"
            " once). Floor: five bare processes over loopback TCP, the same frames, msgspec both ways: a source"
            f" writes an order at {res['rate']:,.0f}/s (the strategy's pace in that window) → a relay writes its"
            " route → a relay writes an exec `new` and an exec `filled` in one write → a relay decodes them and"
            " forwards each read's frames → a sink decodes and timestamps each; no ack, no journal, no log."
            " Measured while the strategies trade and again once their stack is down; each statistic the lower of"
            " the two.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.ops.bench.fourhop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="of the stack's trading (15)")
    ap.add_argument("--floor-seconds", type=float, default=7.0, help="of each floor run, at the stack's pace (7)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tsfourhop"))
    try:
        res = live(tmp, args.seconds, args.floor_seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| figure | stack | reference (same run) | stack/ref | seed | target (issue 15) | pass/fail |")
    print("|---|---:|---|---:|---|---|---|")
    for row in rows(res):
        print("| " + " | ".join(row) + " |")
    say(f"four-hop: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
