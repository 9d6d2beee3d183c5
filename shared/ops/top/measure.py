"""What ``stack-top`` costs and how soon it shows a change: ``python -m shared.ops.top.measure``.

A private stack at the shipped defaults; ``stack-top`` in a real terminal
(tmux, 100x30); its CPU (from /proc, over ``--seconds``) and peak RSS, through
a kill -9 of a program half way, timed until the pane shows it not RUNNING,
and until it shows it RUNNING again with its new pid.
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
from shared.ops.chaos import faults
from shared.ops.harness import Stack

ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "USER")


def _pane(sock: str) -> str:
    return subprocess.run(["tmux", "-L", sock, "capture-pane", "-p"], capture_output=True, text=True).stdout


def _row(screen: str, name: str) -> str:
    return " ".join(next((ln for ln in screen.splitlines() if ln.startswith(name + " ")), "").split())


def _until(sock: str, cond: object, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond(screen := _pane(sock)):  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.02)
    raise TimeoutError(f"the pane never showed it:\n{screen}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) * 1024 / 1e6 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0.0


def measure(seconds: float, program: str, refresh: float = 0.33, profile: str = "") -> dict[str, float]:
    """CPU % of a core and peak RSS MB of stack-top over ``seconds`` with ``program`` killed half way;
    seconds to show it leave and return. With ``profile``, py-spy records stack-top over the
    window into that file (a flame graph .svg, speedscope .json, else collapsed stacks)."""
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
            spy = None
            if profile:
                fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(Path(profile).suffix, "raw")
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                                        "--duration", str(int(seconds)),
                                        "--format", fmt, "--output", profile, "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            u0, t0 = proc_usage(pid), time.monotonic()
            peak = 0.0

            def sample_until(t_end: float) -> None:
                nonlocal peak
                while time.monotonic() < t_end:
                    peak = max(peak, peak_rss_mb(pid))
                    time.sleep(0.5)

            sample_until(t0 + seconds / 2)  # the kill and the restart fall inside the CPU window
            old = faults.kill(s, program)
            t_kill = time.monotonic()
            _until(sock, lambda sc: _row(sc, program) and " RUNNING " not in f" {_row(sc, program)} ")
            gone = time.monotonic() - t_kill
            new = s.wait_for(lambda: (p := s.pids()[program]) not in (0, old) and s.status()[program] == "RUNNING"
                             and p, timeout=30, interval=0.01)
            t_running = time.monotonic()
            _until(sock, lambda sc: f"RUNNING {new}" in _row(sc, program))
            back = time.monotonic() - t_running
            sample_until(t0 + seconds)
            u1, t1 = proc_usage(pid), time.monotonic()
            assert u0 and u1
            if spy is not None:
                spy.wait(timeout=30)
            return {"cpu_pct": (u1[1] - u0[1]) / (t1 - t0) * 100, "rss_mb": max(peak, peak_rss_mb(pid)),
                    "gone_s": gone, "back_s": back}
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.ops.top.measure", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to sample CPU and RSS (60)")
    ap.add_argument("--program", default="gateway", help="the program to kill -9 (gateway)")
    ap.add_argument("--refresh", type=float, default=0.33, help="stack-top's --refresh (0.33, its default)")
    ap.add_argument("--profile", default="",
                    help="py-spy record stack-top into this file (.svg, .json: speedscope, else collapsed stacks)")
    args = ap.parse_args(argv)
    r = measure(args.seconds, args.program, args.refresh, args.profile)
    print(f"stack-top CPU {r['cpu_pct']:.1f} % of a core, peak RSS {r['rss_mb']:.1f} MB over {args.seconds:g} s; "
          f"kill -9 {args.program}: shown leaving after {r['gone_s']:.2f} s, "
          f"shown RUNNING again {r['back_s']:.2f} s after supervisord said so")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
