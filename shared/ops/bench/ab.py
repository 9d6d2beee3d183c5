"""deploy/bench --against REV: the same figures on this tree and on another
commit, in one run, alternating the two, each beside the fan-out floors (issue 17).

REV is checked out with ``git worktree add --detach`` into a temporary
directory, removed afterwards even on failure. Each side's stacks are started
by that tree's own harness in an agent process whose ``sys.path`` starts at the
tree (``shared/ops/bench/abagent.py``), with this venv's interpreter; the agent
reports where its ``shared`` and every program's script came from, and a side
running another tree's code stops the run. The outside clients (order entry,
the journal's tick-to-trade) are this tree's and speak only the wire protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import ROOT
from shared.ops.bench import abagent, fanout
from shared.ops.bench.abreport import notes, table
from shared.ops.bench.orderentry import outside_client
from shared.ops.bench.plan import NEWS_RATE, PRICE_RATE, T2T_STRATEGY, ABPlan, say

BOOT = "import runpy, sys; p = sys.argv[1]; sys.argv = [p]; runpy.run_path(p, run_name='__main__')"


class SideError(RuntimeError):
    """A side's agent could not do what it was asked (its message says why)."""


def git(*args: str) -> str:
    """Run git in this tree; its stripped stdout."""
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if r.returncode:
        raise SideError(f"git {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


@contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``rev`` in a temporary directory and its commit;
    removed (and pruned from git's list) afterwards, even on failure."""
    sha = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="tsab"))
    tree = tmp / "tree"
    try:
        git("worktree", "add", "--detach", str(tree), sha)
        yield tree, sha
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


class Remote:
    """One agent process of a side: a command in, its answer back."""

    def __init__(self, root: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
        env.pop("STACK_CONFIG", None)
        self.proc = subprocess.Popen([sys.executable, "-c", BOOT, abagent.__file__], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info: dict[str, Any] = {}

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; its answer, or SideError."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SideError(f"{cmd}: the agent ended (exit {self.proc.wait()})")
        res: dict[str, Any] = json.loads(line)
        if not res.pop("ok"):
            raise SideError(f"{cmd}: {res['error']}")
        return res

    def close(self) -> None:
        """Stop the stack and the agent (killed if it does not end within a minute)."""
        try:
            if self.proc.poll() is None:
                self.call("stop")
        except (SideError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Side:
    """One source tree and its figures."""

    label: str
    root: Path
    oe: list[dict[str, Any]] = field(default_factory=list)
    t2t: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    code: str = ""

    @contextmanager
    def stack(self, workdir: Path, overrides: dict[str, Any]) -> Iterator[Remote]:
        """A running stack of this tree, through its agent; stopped afterwards."""
        remote = Remote(self.root)
        try:
            remote.info = remote.call("start", workdir=str(workdir), overrides=overrides)
            shared = Path(remote.info["shared"])
            if not shared.is_relative_to(self.root.resolve()) or remote.info["foreign"]:
                raise SideError(f"{self.label}: code from outside {self.root}: {shared} {remote.info['foreign']}")
            self.code = f"{shared} ({remote.info['harness']})"
            yield remote
        finally:
            remote.close()


def order_entry(side: Side, workdir: Path, plan: ABPlan) -> dict[str, Any]:
    """The outside client against a fresh stack of ``side`` at 1,000 prices/s and 200 news/s."""
    with side.stack(workdir, {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE}}) as st:
        time.sleep(1.0)  # past the start, into the steady pace
        r = outside_client(st.info["host"], st.info["port"], st.info["token"], st.info["symbols"][0],
                           plan.conns, plan.orders, prefix="oe")
        time.sleep(0.2)
        r["journaled"] = st.call("count", prefix="oe")["journaled"]
    return r


def tick_to_trade(side: Side, workdir: Path, n: int, seconds: float) -> dict[str, list[int]]:
    """Each of ``n`` strategies' tick-to-trade (ns) over ``seconds`` on a fresh stack of ``side``."""
    overrides: dict[str, Any] = {"gateway": {"price_rate": PRICE_RATE, "news_rate": NEWS_RATE},
                                 "strategy": dict(T2T_STRATEGY)}
    if n > 1:
        overrides["strategies"] = {f"s{i}": dict(T2T_STRATEGY) for i in range(2, n + 1)}
    with side.stack(workdir, overrides) as st:
        if len(st.info["strategies"]) != n:
            raise SideError(f"asked for {n} strategies, the stack runs {len(st.info['strategies'])}")
        st.call("logged_on", timeout=30)
        time.sleep(1.0)
        t0 = time.time_ns()
        time.sleep(seconds)
        t1 = time.time_ns()
        time.sleep(0.5)  # the last orders in flight
        return st.call("t2t", t0=t0, t1=t1)["t2t"]  # type: ignore[no-any-return]


def _guard(side: Side, what: str, strict: bool, fn: Any) -> Any:
    """``fn()``; a SideError on the other commit's side is noted (it may predate the feature), on ours raised."""
    try:
        return fn()
    except SideError as e:
        if strict:
            raise
        side.errors[what] = str(e)
        say(f"{side.label}: {what}: {e}")
        return None


def run(rev: str, plan: ABPlan, workdir: Path) -> dict[str, Any]:
    """Floors, then order entry and tick-to-trade on both sides, alternating; the results."""
    res: dict[str, Any] = {"floors": {}, "loadavg": [os.getloadavg()], "plan": plan}
    with worktree(rev) as (tree, sha):
        for n in sorted({1, *plan.strategies}):
            say(f"{fanout.label(n)}: {plan.floor_n} news at {NEWS_RATE}/s to {n} bare relay(s)")
            res["floors"][n] = fanout.fanout(n, NEWS_RATE, plan.floor_n)
        this, other = Side("this tree", ROOT), Side(f"{rev} ({sha[:9]})", tree)
        res["sides"], res["sha"] = (this, other), sha
        k = 0
        for r in range(plan.oe_rounds):
            for side in ((this, other) if r % 2 == 0 else (other, this)):
                say(f"order entry, round {r + 1}: {side.label}, {plan.conns} × {plan.orders:,} orders")
                k += 1
                got = _guard(side, "order entry", side is this,
                             lambda s=side, d=workdir / f"oe{k}": order_entry(s, d, plan))
                if got is not None:
                    side.oe.append(got)
        for r in range(plan.t2t_rounds):
            for i, n in enumerate(plan.strategies):
                for side in ((this, other) if (r + i) % 2 == 0 else (other, this)):
                    if f"{n} strategies" in side.errors:
                        continue
                    say(f"tick-to-trade, round {r + 1}: {side.label}, {n} strategy(ies) for {plan.t2t_s:g} s")
                    k += 1
                    got = _guard(side, f"{n} strategies", side is this,
                                 lambda s=side, n=n, d=workdir / f"t2t{k}": tick_to_trade(s, d, n, plan.t2t_s))
                    for cid, lat in (got or {}).items():
                        side.t2t.setdefault(n, {}).setdefault(cid, []).extend(lat)
    res["loadavg"].append(os.getloadavg())
    return res


def main(rev: str, plan: ABPlan, out: Path, argv: list[str]) -> int:
    """deploy/bench --against REV: print the A/B table, write it to ``out``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the worktree and the stacks go
    workdir = Path(tempfile.mkdtemp(prefix="tsbenchab"))
    try:
        res = run(rev, plan, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = table(res)
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{report}\n\n{notes(res, plan, argv)}\n")
    say(f"wrote {out}")
    return 0
