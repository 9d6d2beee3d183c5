"""Where the ordermanager's time per order goes: py-spy samples it while the
outside order-entry client (``orderentry``) keeps it busy, at 1,000 prices/s and
200 news/s, on a private stack of this tree (issue 17).

``python -m shared.ops.bench.omprofile [--seconds 20]`` prints the top frames by
own time and by inclusive time, each as a share of the samples and as µs per
accepted order (the ordermanager's CPU over the window / orders acked), and
keeps py-spy's raw stacks (``--out``) for a flame graph. py-spy is not a
dependency: ``.venv/bin/pip install py-spy``. Root, or ptrace allowed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.ops.bench.orderentry import outside_client
from shared.ops.bench.plan import NEWS_RATE, PRICE_RATE, say
from shared.ops.bench.probes import cpu_seconds
from shared.ops.harness import Stack

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/x.py:12)`` as ``x.py:func``: lines folded, so a function is one entry."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{Path(m['file']).name}:{m['func']}"


def tally(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Own and inclusive samples per function, and all samples, from py-spy's raw (collapsed) stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return own, incl, total


def render(own: Counter[str], incl: Counter[str], total: int, us_per_order: float, top: int = 25) -> str:
    """Two markdown tables: the top frames by own time, and by inclusive time."""
    out = []
    for title, c in (("own time", own), ("inclusive time", incl)):
        out += [f"| top frames by {title} | % of samples | µs per order |", "|---|---:|---:|"]
        out += [f"| `{name}` | {100 * n / total:.1f} | {us_per_order * n / total:.2f} |"
                for name, n in c.most_common(top)]
        out.append("")
    return "\n".join(out)


def _load(stack: Stack, until: float, got: list[dict[str, Any]]) -> None:
    """The outside client, round after round (new order ids each), until ``until``."""
    r = 0
    while time.monotonic() < until:
        r += 1
        got.append(outside_client(stack.cfg.ordermanager.host, stack.cfg.ordermanager.port, stack.token,
                                  stack.cfg.symbols[0], prefix=f"prof{r}"))


def profile(seconds: float, rate: int, raw_path: Path, program: str = "ordermanager") -> dict[str, Any]:
    """Run the stack, the load and py-spy on ``program``; the tallies, the cost per order, and every
    program's CPU seconds over the window (which one is the bottleneck)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("omprofile: py-spy not found (.venv/bin/pip install py-spy)")
    workdir = Path(tempfile.mkdtemp(prefix="tsprof"))
    stack = Stack(workdir, {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE}})
    try:
        stack.start()
        pids = stack.pids()
        pid = pids[program]
        got: list[dict[str, Any]] = []
        warm = time.monotonic() + 1.0
        load = threading.Thread(target=_load, args=(stack, warm + seconds + 2.0, got), daemon=True)
        load.start()
        time.sleep(max(0.0, warm - time.monotonic()))
        t0, c0 = time.time_ns(), {name: cpu_seconds(p) for name, p in pids.items()}
        say(f"py-spy on the {program} (pid {pid}) for {seconds:g} s at {rate} samples/s")
        subprocess.run([spy, "record", "-p", str(pid), "-r", str(rate), "-d", str(int(seconds)), "-f", "raw",
                        "-o", str(raw_path)], check=True, stdout=subprocess.DEVNULL)
        t1 = time.time_ns()
        cpus = {name: cpu_seconds(p) - c0[name] for name, p in pids.items()}
        load.join()
        # The client's rounds straddle the window: the orders are those the journal received in it.
        orders = max(1, sum(1 for e in stack.journal() if t0 <= e["recv_ns"] < t1))
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    own, incl, total = tally(raw_path.read_text())
    rates = [g["rate"] for g in got]
    return {"own": own, "incl": incl, "total": total, "cpu": cpus[program], "cpus": cpus, "orders": orders,
            "rates": rates, "window": (t1 - t0) / 1e9}


def main(argv: Sequence[str] | None = None) -> int:
    """python -m shared.ops.bench.omprofile [--seconds S] [--rate HZ] [--out PATH]."""
    ap = argparse.ArgumentParser(prog="omprofile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="py-spy's window (20)")
    ap.add_argument("--rate", type=int, default=250, help="samples per second (250)")
    ap.add_argument("--out", default="logs/omprofile.txt", help="py-spy's raw stacks")
    ap.add_argument("--program", default="ordermanager", help="the program to sample (ordermanager)")
    args = ap.parse_args(argv)
    raw = Path(args.out).resolve()
    raw.parent.mkdir(parents=True, exist_ok=True)
    res = profile(args.seconds, args.rate, raw, args.program)
    us = 1e6 * res["cpu"] / res["orders"]
    busy = ", ".join(f"{name} {100 * c / res['window']:.0f} %" for name, c in
                     sorted(res["cpus"].items(), key=lambda kv: -kv[1]))
    print(f"CPU over the {res['window']:.1f} s window, as a share of one core: {busy}")
    print(f"{args.program}: {res['cpu']:.2f} s of CPU for about {res['orders']:,} orders acked: {us:.1f} µs per order;"
          f" {res['total']:,} samples; client rounds at {', '.join(f'{r:,.0f}' for r in res['rates'])} orders/s\n")
    print(render(res["own"], res["incl"], res["total"], us))
    say(f"raw stacks in {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
