"""The tick ring's race (contract §8), as tests/test_ring.py runs it and ``deploy/bench --suite``
measures it: a writer process writing ticks at a rate, reader processes each reading windows of
the last N ticks of a slot, checking every tick they read.

A reader reads until it has read ``windows`` windows and ``seconds`` have passed (or a deadline),
so the test waits for what it checks; the rates are the bench's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from shared import book
from shared.book import Segment
from shared.config import ROOT

K = 256  # ticks kept per symbol
SYMBOLS = ["AAPL", "MSFT", "GOOGL"]

WRITER = """
import sys, time
from pathlib import Path
from shared.book import Segment, Writer
seg = Segment.attach(sys.argv[1])
stop, rate = Path(sys.argv[2]), int(sys.argv[3])
w = Writer(seg)
n = len(seg.symbols)
k = 0
t0 = time.monotonic()
deadline = t0 + 300
while time.monotonic() < deadline and not stop.exists():
    due = int((time.monotonic() - t0) * rate)
    while k < due:  # tick k of symbol k % n: its price, time and seq all say k
        k += 1
        w.write(k % n, float(k), k, k)
    w.heartbeat()
    time.sleep(0.0005)
print(k, k / (time.monotonic() - t0))
w.release()
"""

READER = """
import json, sys, time
from shared import book
from shared.book import Segment
seg = Segment.attach(sys.argv[1])
want, at_least, seconds, wrap = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
n = len(seg.symbols)
while (r := seg.read(0)) is None or r.updates < max(want, wrap):  # the ring has wrapped
    time.sleep(0.001)
windows = torn = inexact = unavailable = 0
t0 = time.monotonic()
end, deadline = t0 + seconds, t0 + 240
slot = 0
while (windows < at_least or time.monotonic() < end) and time.monotonic() < deadline:
    slot = (slot + 1) % n
    ticks = seg.ticks(slot, want)
    if ticks is None:
        unavailable += 1
        continue
    windows += 1
    for t in ticks:
        if not (t.price == float(t.tick_seq) and t.ts_ns == t.tick_seq and t.tick_seq % n == slot):
            torn += 1
    seqs = [t.tick_seq for t in ticks]
    # Exact: the slot's last `want` ticks, each one, none skipped (slot s gets k = s mod n).
    if len(seqs) != want or seqs != list(range(seqs[0], seqs[0] + n * want, n)):
        inexact += 1
print(json.dumps({"want": want, "windows": windows, "torn": torn, "inexact": inexact,
                  "unavailable": unavailable, "seconds": time.monotonic() - t0}))
"""


def child(script: str, *args: str) -> subprocess.Popen[str]:
    """A separate Python process running ``script`` with the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float = 300) -> str:
    """Wait for a child; kill it if it hangs; its stdout (a RuntimeError with its stderr if it failed)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {err}")
    return out


def race(rate: int, wants: tuple[int, ...] = (20, 200), windows: int = 1000, seconds: float = 3.0,
         name: str | None = None) -> dict[str, Any]:
    """A writer at ``rate`` ticks/s against one reader per window size in ``wants``; each reads at
    least ``windows`` windows over at least ``seconds``. The writer's ticks and ticks/s, and each
    reader's windows, torn ticks, inexact windows, windows it could not read, and seconds."""
    own = name is None
    name = name or f"ts_ring_{uuid.uuid4().hex[:8]}"
    seg = Segment.create(name, SYMBOLS, K)
    stop = Path(tempfile.mkdtemp(prefix="tsring")) / "stop"
    writer = child(WRITER, name, str(stop), str(rate))
    readers = [child(READER, name, str(want), str(windows), str(seconds), str(2 * K)) for want in wants]
    try:
        results = [json.loads(finish(r)) for r in readers]
    finally:
        stop.touch()
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.communicate()
        written, achieved = finish(writer).split()
        seg.close()
        if own:
            book.unlink(name)
        stop.unlink(missing_ok=True)
        stop.parent.rmdir()
    return {"rate": rate, "written": int(written), "ticks_per_s": float(achieved), "readers": results}


if __name__ == "__main__":
    print(json.dumps(race(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=1))
