"""What ``stack-top`` costs and how soon it shows a change: ``python -m shared.ops.topmeasure``.

A private stack at the shipped defaults; ``stack-top`` in a real terminal
(tmux, 100x30); its CPU (from /proc, over ``--seconds``) and peak RSS; then
kill -9 of a program, timed until the pane shows it not RUNNING, and until it
shows it RUNNING again with its new pid.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from shared.observe import proc_usage
from shared.ops import faults
from shared.ops.harness import Stack

ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "USER")


def _pane(sock: str) -> str:
    return subprocess.run(["tmux", "-L", sock, "capture-pane", "-p"], capture_output=True, text=True).stdout


def _row(screen: str, name: str) -> str:
    return " ".join(next((ln for ln in screen.splitlines() if ln.startswith(name + " ")), "").split())


def _until(sock: str, cond: object, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond(_pane(sock)):  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.02)
    raise TimeoutError("the pane never showed it")


def measure(seconds: float, program: str, refresh: float = 0.33) -> dict[str, float]:
    """CPU % of a core and peak RSS MB of stack-top over ``seconds``; seconds to show ``program`` leave and return."""
    import os

    sock = f"tsmeasure{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k in ENV_KEYS}
    top = Path(sys.executable).with_name("stack-top")
    with Stack(Path(tempfile.mkdtemp(prefix="tstop")) / "stack") as s:
        try:
            subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-x", "100", "-y", "30",
                            f"STACK_CONFIG={s.config_path} exec {top} --serverurl {s.serverurl} --refresh {refresh}"],
                           check=True, env=env)
            pid = int(subprocess.run(["tmux", "-L", sock, "list-panes", "-F", "#{pane_pid}"], capture_output=True,
                                     text=True, check=True).stdout.split()[0])
            _until(sock, lambda sc: "RUNNING" in _row(sc, "strategy"))
            time.sleep(3.0)  # past the first polls and the journal's load
            u0, t0 = proc_usage(pid), time.monotonic()
            peak = 0.0
            while time.monotonic() - t0 < seconds:
                u = proc_usage(pid)
                peak = max(peak, u[0] / 1e6 if u else 0.0)
                time.sleep(0.5)
            u1, t1 = proc_usage(pid), time.monotonic()
            assert u0 and u1
            old = faults.kill(s, program)
            t_kill = time.monotonic()
            _until(sock, lambda sc: _row(sc, program) and " RUNNING " not in f" {_row(sc, program)} ")
            gone = time.monotonic() - t_kill
            new = s.wait_for(lambda: (p := s.pids()[program]) not in (0, old) and s.status()[program] == "RUNNING"
                             and p, timeout=30, interval=0.01)
            t_running = time.monotonic()
            _until(sock, lambda sc: f"RUNNING {new}" in _row(sc, program))
            back = time.monotonic() - t_running
            return {"cpu_pct": (u1[1] - u0[1]) / (t1 - t0) * 100, "rss_mb": peak, "gone_s": gone,
                    "back_s": back}
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.ops.topmeasure", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to sample CPU and RSS (60)")
    ap.add_argument("--program", default="gateway", help="the program to kill -9 (gateway)")
    ap.add_argument("--refresh", type=float, default=0.33, help="stack-top's --refresh (0.33, its default)")
    args = ap.parse_args(argv)
    r = measure(args.seconds, args.program, args.refresh)
    print(f"stack-top CPU {r['cpu_pct']:.1f} % of a core, peak RSS {r['rss_mb']:.1f} MB over {args.seconds:g} s; "
          f"kill -9 {args.program}: shown leaving after {r['gone_s']:.2f} s, "
          f"shown RUNNING again {r['back_s']:.2f} s after supervisord said so")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
