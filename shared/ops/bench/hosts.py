"""deploy/bench --hosts: the stack across simulated hosts (issue 11).

A market host, up to eight trader hosts and an orders host, deployed by the
playbook. Tick-to-trade across the veth hops (news on md1 -> a trader's
strategy -> the ordermanager on om1, over TLS) beside the floor measured over
the same hops (bare processes in the same namespaces: a source on md1, a
relay on trader1 that answers each news frame with an order frame, a sink on
om1); then tick-to-trade and the gateway's fan-out cost with 1, 2, 4 and 8
trader hosts running, each measured, not extrapolated.

``python -m shared.ops.bench.hosts ROLE ...`` runs one role of the floor inside a host.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from shared.config import ROOT
from shared.ops.fleet.hosts import Cluster, Host, wheelhouse
from shared.ops.stats import percentile
from shared.protocol import FrameDecoder, News, Order, frame

PORT = 9100  # the floor's ports, inside the hosts' own namespaces
RATES = {"price": 2000, "news": 200}  # per second, as the gateway makes them
STRATEGY = {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 4, "qty": 10}


# --- the floor's roles, each run inside a host ----------------------------------------


def _serve(addr: str, port: int) -> socket.socket:
    ls = socket.create_server((addr, port))
    ls.settimeout(60)
    print("listening", flush=True)
    s, _ = ls.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(60)
    return s


def _connect(addr: str, port: int) -> socket.socket:
    s = socket.create_connection((addr, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def role(argv: list[str]) -> None:
    """source ADDR PORT RATE COUNT | relay ADDR PORT SINK_ADDR SINK_PORT | sink ADDR PORT"""
    name, args = argv[0], argv[1:]
    if name == "sink":  # order frames in; prints every (now - tick_ts_ns) in µs at EOF
        s, dec, lat = _serve(args[0], int(args[1])), FrameDecoder(msgspec.json.Decoder(Order)), []
        while data := s.recv(1 << 18):
            now = time.time_ns()
            lat += [(now - m.tick_ts_ns) // 1000 for m in dec.feed(data) if isinstance(m, Order)]
        print(json.dumps(lat), flush=True)
    elif name == "relay":  # the bare strategy: one order frame for each news frame
        out = _connect(args[2], int(args[3]))
        s, dec, n = _serve(args[0], int(args[1])), FrameDecoder(msgspec.json.Decoder(News)), 0
        while data := s.recv(1 << 18):
            for m in dec.feed(data):
                if isinstance(m, News):
                    n += 1
                    out.sendall(frame(Order(order_id=f"r-{n}", symbol=m.symbol, side="BUY", qty=1, price=1.0,
                                            ts_ns=time.time_ns(), tick_ts_ns=m.ts_ns)))
        out.close()
    elif name == "source":  # news frames at a rate, what is due at once in one write
        s, rate, count = _connect(args[0], int(args[1])), float(args[2]), int(args[3])
        time.sleep(0.2)
        t0, made = time.monotonic(), 0
        while made < count:
            due = min(count, int((time.monotonic() - t0) * rate)) - made
            if due > 0:
                s.sendall(b"".join(frame(News(seq=made + i + 1, ts_ns=time.time_ns(), symbol="AAPL",
                                              sentiment=50)) for i in range(due)))
                made += due
            else:
                time.sleep(max(0.0, t0 + (made + 1) / rate - time.monotonic()))
        s.close()


def floor(c: Cluster, source: Host, relay: Host, sink: Host, rate: float, count: int) -> list[int]:
    """The bare two-hop chain over the veths: source -> relay -> sink; latencies in µs."""
    py = sys.executable
    mod = ["-m", "shared.ops.bench.hosts"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = []
    try:
        sk = sink.popen(py, *mod, "sink", sink.addr("oe"), str(PORT), stdout=-1, text=True, env=env, mounts=False)
        procs.append(sk)
        assert sk.stdout is not None and sk.stdout.readline().strip() == "listening"
        rl = relay.popen(py, *mod, "relay", relay.addr("md"), str(PORT), sink.addr("oe"), str(PORT), stdout=-1,
                         text=True, env=env, mounts=False)
        procs.append(rl)
        assert rl.stdout is not None and rl.stdout.readline().strip() == "listening"
        src = source.popen(py, *mod, "source", relay.addr("md"), str(PORT), str(rate), str(count), env=env,
                           mounts=False)
        procs.append(src)
        src.wait(timeout=count / rate + 60)
        rl.wait(timeout=30)
        out = sk.stdout.readline()
        sk.wait(timeout=30)
        return list(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --- the stack ---------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(c: Cluster, traders: list[Host], seconds: float) -> dict[str, Any]:
    """Tick-to-trade of the given traders' orders, and the gateway's CPU, over ``seconds``."""
    gw = c["md1"].rpc.getProcessInfo("gateway")["pid"]
    cpu0, t0 = cpu_s(gw), time.time_ns()
    time.sleep(seconds)
    cpu1, t1 = cpu_s(gw), time.time_ns()
    names = {t.name for t in traders}
    lat = [(e["recv_ns"] - e["tick_ts_ns"]) // 1000 for e in c["om1"].journal()
           if e["client_id"] in names and t0 <= e["recv_ns"] <= t1]
    return {"hosts": len(traders), "orders": len(lat), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "gateway_cpu_pct": 100 * (cpu1 - cpu0) / ((t1 - t0) / 1e9),
            "frames_out_per_s": (RATES["price"] + RATES["news"]) * len(traders)}


def set_traders(c: Cluster, traders: list[Host], active: int) -> None:
    """Run the trading programs on the first ``active`` trader hosts only; wait until they trade."""
    for i, t in enumerate(traders):
        st = t.status()
        if i < active and st.get("strategy") != "RUNNING":
            t.rpc.startAllProcesses(True)
        elif i >= active and st.get("strategy") == "RUNNING":
            for p in ("strategy", "orderbook", "bootstrap"):
                t.rpc.stopProcess(p, True)
    now = time.time_ns()
    for t in traders[:active]:
        c.wait_for(lambda t=t: any(e["client_id"] == t.name and e["recv_ns"] > now for e in c["om1"].journal()),
                   60, f"{t.name} trading")


def fleet(workdir: Path, traders: int) -> Cluster:
    """Build and deploy a market host, ``traders`` trader hosts and an orders host."""
    layout: dict[str, tuple[str, ...]] = {"md1": ("market",)}
    layout |= {f"trader{i}": ("trader",) for i in range(1, traders + 1)}
    layout["om1"] = ("orders",)
    c = Cluster(workdir, layout).start()
    try:
        wheelhouse(workdir / "wheels")
        c.inventory(tradestack_wheels=workdir / "wheels", tradestack_price_rate=RATES["price"],
                    tradestack_news_rate=RATES["news"], tradestack_strategy=STRATEGY)
        c.playbook(timeout=900)
    except BaseException:
        c.close()
        raise
    return c


def report(floor_us: list[int], rows: list[dict[str, Any]]) -> str:
    """The markdown tables."""
    one = rows[0]
    out = ["| figure (1 trader host, across the veths) | stack | floor, same hops | stack/floor |",
           "|---|---:|---:|---:|"]
    for q in (50, 99):
        f = percentile(floor_us, q)
        out.append(f"| tick-to-trade p{q} (µs) | {one[f'p{q}']:,.0f} | {f:,.0f} | {one[f'p{q}'] / f:.2f}× |")
    out.append(f"| samples | {one['orders']:,} orders | {len(floor_us):,} frames | |")
    out += ["", "| trader hosts | orders | tick-to-trade p50 (µs) | p99 (µs) | gateway CPU (% of a core) "
            "| frames out of the gateway (/s) | gateway CPU per frame out (µs) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {r['hosts']} | {r['orders']:,} | {r['p50']:,.0f} | {r['p99']:,.0f} | {r['gateway_cpu_pct']:.1f} "
            f"| {r['frames_out_per_s']:,} | {r['gateway_cpu_pct'] * 1e4 / r['frames_out_per_s']:.2f} |" for r in rows]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("source", "relay", "sink"):
        role(argv)
        return 0
    ap = argparse.ArgumentParser(prog="deploy/bench --hosts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-hosts", type=int, default=8, help="trader hosts at most (1, 2, 4 ... up to it)")
    ap.add_argument("--seconds", type=float, default=15.0, help="each measuring window")
    ap.add_argument("--floor-n", type=int, default=2000, help="frames through the bare chain")
    a = ap.parse_args(argv)
    steps = [n for n in (1, 2, 4, 8, 16) if n <= a.max_hosts]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tshosts") as d:
        c = fleet(Path(d), steps[-1])
        try:
            print(f"hostbench: {len(c.hosts)} hosts deployed in {time.monotonic() - t0:.0f} s", file=sys.stderr)
            traders = [c[f"trader{i}"] for i in range(1, steps[-1] + 1)]
            rows = []
            for n in steps:
                set_traders(c, traders, n)
                if n == 1:
                    f_us = floor(c, c["md1"], traders[0], c["om1"], RATES["news"], a.floor_n)
                rows.append(window(c, traders[:n], a.seconds))
                print(f"hostbench: {n} trader hosts: {rows[-1]}", file=sys.stderr)
        finally:
            c.close()
    text = report(f_us, rows)
    print(text)
    (ROOT / "logs").mkdir(exist_ok=True)
    (ROOT / "logs" / "bench-hosts.md").write_text(text)
    print(f"hostbench: {time.monotonic() - t0:.0f} s in all; the tables are in logs/bench-hosts.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
