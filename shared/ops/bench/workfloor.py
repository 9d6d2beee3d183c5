"""The work floor of order entry with the venue: the stack's own per-order work, in one process, with
no socket, no event loop, no file write, no state kept (issues 15 and 17).

Per order, as the stack does it: the ordermanager decodes the order frame, encodes its journal line,
renders its ``order_received`` log line, its ack and its route; the exchange decodes the route,
encodes its journal line, matches it, and encodes each exec (wire body, frame, journal line); the
ordermanager decodes each exec, encodes its exec journal line and renders ``order_filled`` for a
fill. The orders are the order-entry client's (one lot, alternately buying and selling at 100.0).

Everything left out (the reads and writes, the loops, risk, the indexes, the client) only adds to
this, so ``cores / (CPU per order)`` bounds what any order-entry figure can reach on this machine.
``python -m shared.ops.bench.workfloor [--orders N]`` prints the CPU per order by stage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from shared import logs, matching
from shared.execstate import ExecLine
from shared.journal import Entry
from shared.ops.bench.orderentry import orders
from shared.protocol import Ack, Cancel, Exec, FrameDecoder, Heartbeat, Logon, Order, Route, frame
from shared.venuejournal import framed
from shared.venuerecords import OrderIn, body, encode, exec_line

STAGES = ("ordermanager: order in", "exchange: route in, match, execs out", "ordermanager: execs in")


def _decoded(decoder: msgspec.json.Decoder[Any], data: bytes) -> list[Any]:
    return FrameDecoder(decoder).feed(data)


def measure(n: int = 20_000) -> dict[str, Any]:
    """CPU seconds per order of each stage (best of three passes), and the execs per order."""
    om_in = msgspec.json.Decoder(Logon | Order | Cancel | Heartbeat)
    x_in = msgspec.json.Decoder(Logon | Route | Cancel | Heartbeat)
    exec_in = msgspec.json.Decoder(Exec)
    enc = msgspec.json.Encoder()
    best = dict.fromkeys(STAGES, float("inf"))
    execs_per_order = 0.0
    with open(os.devnull, "wb") as sink:
        logs.configure("workfloor", sink)
        for p in range(3):
            wire = orders(f"wf{p}", "AAPL", n)
            engine = matching.Engine(2.0, 100)
            engine.tick("AAPL", 173.0, 0)
            t0 = time.process_time()
            routes = bytearray()
            acks = bytearray()
            for no, o in enumerate(_decoded(om_in, wire), 1):
                jl = bytearray()
                enc.encode_into(Entry(no, o.order_id, "wf", o.symbol, o.side, o.qty, o.price, o.ts_ns, o.tick_ts_ns,
                                      time.time_ns(), o.ord_type, o.tif), jl, -1)
                logs.hot("order_received", order_no=no, order_id=o.order_id, client_id="wf", symbol=o.symbol,
                         side=o.side, qty=o.qty, price=o.price, ord_type=o.ord_type, tif=o.tif, latency_us=0,
                         msg=f"Received Order {no}: {o.side} {o.qty} {o.symbol} @ {o.price:.2f}")
                acks += frame(Ack(order_id=o.order_id, order_no=no, duplicate=False))
                routes += frame(Route(order_no=no, client_id="wf", order_id=o.order_id, symbol=o.symbol, side=o.side,
                                      qty=o.qty, price=o.price, ord_type=o.ord_type, tif=o.tif))
            logs.flush()
            t1 = time.process_time()
            out = bytearray()
            for r in _decoded(x_in, bytes(routes)):
                rec = OrderIn(r.order_no, r.client_id, r.order_id, r.symbol, r.side, r.qty, r.price, r.ord_type, r.tif,
                              time.time_ns())
                encode(rec)  # its journal line
                for e in engine.order(rec.order_no, rec.client_id, rec.order_id, rec.symbol, rec.side, rec.qty,
                                      rec.price, rec.ord_type, rec.tif, rec.ts_ns):
                    b = body(e)
                    exec_line(b)
                    out += framed(b)
            t2 = time.process_time()
            m = 0
            for x in _decoded(exec_in, bytes(out)):
                m += 1
                enc.encode(ExecLine(x.order_id, x.exec_id, x.status, x.last_qty, x.last_px, x.cum_qty, x.leaves_qty,
                                    x.avg_px, x.ts_ns, x.symbol, x.side, x.client_id, x.order_no, time.time_ns()))
                if x.last_qty:
                    logs.hot("order_filled", order_id=x.order_id, client_id=x.client_id, exec_id=x.exec_id,
                             last_qty=x.last_qty, last_px=x.last_px, cum_qty=x.cum_qty, status=x.status,
                             order_no=x.order_no, symbol=x.symbol, side=x.side, leaves_qty=x.leaves_qty)
            logs.flush()
            t3 = time.process_time()
            for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                best[stage] = min(best[stage], dt / n)
            execs_per_order = m / n
    return {"per_order": best, "execs_per_order": execs_per_order, "cores": os.cpu_count() or 1}


def role(pipe: Connection, n: int) -> None:
    """``measure`` in a process of its own (it configures the process's logging), for ``deploy/bench``."""
    pipe.send(measure(n))


def ceiling(r: dict[str, Any]) -> float:
    """Orders/s that ``measure``'s CPU per order allows on every core."""
    return r["cores"] / sum(r["per_order"].values())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workfloor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=20_000, help="orders per pass (20,000; best of 3 passes)")
    args = ap.parse_args(argv)
    r = measure(args.orders)
    total = sum(r["per_order"].values())
    print("| stage | CPU µs per order |\n|---|---:|")
    for stage, s in r["per_order"].items():
        print(f"| {stage} | {s * 1e6:.1f} |")
    print(f"| all ({r['execs_per_order']:.2f} execs per order) | {total * 1e6:.1f} |\n")
    om = r["per_order"][STAGES[0]] + r["per_order"][STAGES[2]]
    print(f"Ceiling on {r['cores']} cores, with no I/O and no loop: {ceiling(r):,.0f} orders/s "
          f"(one core: {1 / total:,.0f}); the ordermanager alone, one process: {1 / om:,.0f} orders/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
