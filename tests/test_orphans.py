"""supervisord itself dies (issue 8): its programs must not live on as orphans.

Each daemon stops in order when its parent is gone (the parent-death signal,
and a check of the parent), writing its last records to the files supervisord
kept its output in; ``deploy/up``'s sweep (``shared.ops.ctl.sweep``, here
through ``Stack.up``) stops any that are left, in order, then starts afresh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shared import config
from shared.ops import ctl
from shared.ops.chaos import faults
from shared.ops.chaos.invariants import healed
from shared.ops.harness import PROGRAMS, Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack, Order, Reject, frame

pytestmark = pytest.mark.faults

HB_MS = 100
# Fast news and an eager rule: the strategy trades several times a second.
TRADING: dict[str, Any] = {"gateway": {"news_rate": 40, "heartbeat_ms": HB_MS},
                           "ordermanager": {"heartbeat_ms": HB_MS},
                           "strategy": {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 4}}


def one_process_per_program(stack: Stack) -> None:
    """Exactly one live process of this stack per program: supervisord's."""
    running = ctl.daemons(config.ROOT, stack.config_path)
    assert Counter(d.program for d in running) == Counter(PROGRAMS), [d.describe() for d in running]
    assert {d.program: d.pid for d in running} == stack.pids()


def shutdown_records(stack: Stack, program: str, pid: int) -> list[dict[str, Any]]:
    """What a process logged from its ``stopping`` on."""
    recs = [r for r in stack.log(program) if r.get("pid") == pid]
    i = next((i for i, r in enumerate(recs) if r["event"] == "stopping"), len(recs))
    return recs[i:]


def assert_stopped_in_order(stack: Stack, old: dict[str, int]) -> None:
    """Every old process logged ``stopping`` (reason supervisor_gone), then ``stopped``."""
    for program, pid in old.items():
        try:
            recs = stack.wait_for(lambda p=program, q=pid: (x := shutdown_records(stack, p, q))
                                  and x[-1]["event"] == "stopped" and x, timeout=30)
        except TimeoutError:
            raise AssertionError(f"{program} pid {pid} alive={ctl.proc_stat(pid)} logged "
                                 f"{[r for r in stack.log(program) if r.get('pid') == pid][-5:]}") from None
        assert recs[0]["reason"] == "supervisor_gone" and recs[0]["level"] == "warning", recs[0]


def _logon(host: str, port: int, cid: str, token: str) -> OrderClient | None:
    try:
        c = OrderClient(host, port, timeout=10)
    except OSError:
        return None
    try:
        c.logon(cid, token)
    except (OSError, EOFError, TimeoutError):
        c.close()
        return None
    return c


def test_kill9_supervisord_while_orders_flow_then_up(make_stack: Any) -> None:
    stack: Stack = make_stack(TRADING)
    cid = stack.cfg.strategy.client_id
    stack.wait_for(lambda: sum(e["client_id"] == cid for e in stack.journal()) >= 3, timeout=60)
    old = stack.pids()
    sup = stack.pid
    # A client bursts orders while supervisord is killed; it resends what was not acked after up.
    n, client = 3000, "orphan-burst"
    orders = [Order(order_id=f"o{i}", symbol="AAPL", side="BUY" if i % 2 else "SELL", qty=1, price=100.0,
                    ts_ns=time.time_ns(), tick_ts_ns=time.time_ns()) for i in range(n)]
    host, port = stack.cfg.ordermanager.host, stack.cfg.ordermanager.port
    c = OrderClient(host, port)
    c.logon(client, stack.token)

    sender = c.send_paced(orders)
    acked: dict[str, int] = {}
    killed = 0
    try:
        while True:
            m = c.recv(timeout=10)
            if isinstance(m, Ack):
                acked[m.order_id] = m.order_no
                if not killed and len(acked) >= n // 4:
                    killed = faults.kill(stack, "supervisord", signal.SIGKILL)
    except (EOFError, ConnectionError, TimeoutError):
        pass
    finally:
        sender.join()
        c.close()
    assert killed == sup, "supervisord was never killed"
    faults.wait_dead(killed)
    fault = [r for r in (json.loads(x) for x in (stack.logs / "faults.log").read_text().splitlines())
             if r.get("program") == "supervisord"][-1]
    assert (fault["target_pid"], fault["pid"]) == (sup, os.getpid())  # pid: the writer's (contract §6)
    assert len(acked) < n, "the burst ended before the kill: nothing was in flight"

    lines: list[str] = []
    stack.up(out=lines.append)  # what deploy/up does: the sweep, then a fresh supervisord
    assert stack.pid != sup
    one_process_per_program(stack)
    assert_stopped_in_order(stack, old)
    assert set(stack.pids().values()).isdisjoint(old.values())

    # The client comes back and resends everything: what was acked is a duplicate, under the same order_no.
    # Once the new ordermanager's link to the venue is up too: till then an order is unavailable (up
    # waits for RUNNING, and for listening records that the old processes' lines already satisfy).
    stack.wait_for(lambda: [r for r in stack.events("ordermanager", "venue_logged_on")
                            if r["pid"] != old["ordermanager"]], timeout=30)
    c2 = stack.wait_for(lambda: _logon(host, port, client, stack.token), timeout=30)
    try:
        c2.send_raw(b"".join(frame(o) for o in orders))
        got: dict[str, Ack] = {}
        while len(got) < n:
            m = c2.recv(timeout=20)
            assert not isinstance(m, Reject), m
            if isinstance(m, Ack):
                got[m.order_id] = m
    finally:
        c2.close()
    assert all(got[oid].duplicate and got[oid].order_no == no for oid, no in acked.items())
    healed(stack, acks=[(client, oid, a.order_no) for oid, a in got.items()])
    journal = stack.journal()
    nos = Counter(e["order_no"] for e in journal)
    assert max(nos.values()) == 1, [no for no, k in nos.items() if k > 1]
    assert sorted(e["order_id"] for e in journal if e["client_id"] == client) == sorted(o.order_id for o in orders)
    one_process_per_program(stack)
    print(f"ORPHANS swept by up: {len([x for x in lines if x.startswith('stopping')])}; "
          f"acked before the kill {len(acked)}/{n}")


def test_frozen_daemons_stop_in_order_when_supervisord_dies(make_stack: Any) -> None:
    """A frozen process group orphaned gets SIGHUP then SIGCONT from the kernel: handled as a stop."""
    stack: Stack = make_stack({"gateway": {"heartbeat_ms": HB_MS}, "ordermanager": {"heartbeat_ms": HB_MS}})
    old = stack.pids()
    assert ctl.orphans(config.ROOT, stack.config_path) == []  # supervisord's own are no orphans
    try:
        for pid in old.values():
            os.kill(pid, signal.SIGSTOP)
        # The kernel's SIGHUP and SIGCONT go only to a group already stopped when the parent dies.
        stack.wait_for(lambda: all((st := ctl.proc_stat(p)) and st[0] == "T" for p in old.values()), timeout=10,
                       interval=0.01)
        assert stack.pid is not None
        os.kill(stack.pid, signal.SIGKILL)
        assert_stopped_in_order(stack, old)
    finally:
        for pid in old.values():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    stack.up()
    one_process_per_program(stack)
    healed(stack, trading=False)


def start_by_hand(stack: Stack) -> list[subprocess.Popen[bytes]]:
    """This checkout's six daemons for ``stack``, started without supervisord (as by a person, or an
    older version that outlived its supervisord), logging where supervisord would have them log."""
    procs = []
    for program in PROGRAMS:
        out = stack.logs / f"{program}.log"
        env = {**stack.env, "STACK_LOG_STDOUT": str(out), "STACK_LOG_STDERR": str(out.with_suffix(".err"))}
        listener = program == "auditor"  # its stdout is the listener protocol; its log goes to stderr
        if listener:
            env = {**stack.env, "STACK_LOG_STDERR": str(out)}
        with open(out, "ab") as f, open(out.with_suffix(".err"), "ab") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-u", str(config.ROOT / "daemons" / f"{program}.py")], cwd=config.ROOT, env=env,
                stdin=subprocess.PIPE if listener else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if listener else f, stderr=f if listener else err))
    return procs


def test_up_sweeps_leftover_daemons_in_order(make_stack: Any) -> None:
    stack: Stack = make_stack(start=False)
    procs = start_by_hand(stack)
    try:
        stack.wait_ready(timeout=60)
        left = ctl.orphans(config.ROOT, stack.config_path)
        assert sorted(d.pid for d in left) == sorted(p.pid for p in procs)
        order = [p for p in ctl.STOP_ORDER if p in PROGRAMS]  # the recorder runs only when enabled
        assert [d.program for d in left] == order
        lines: list[str] = []
        found = ctl.sweep(config.ROOT, stack.config_path, lines.append)
        codes = [p.wait(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert found == left
    assert codes == [0] * len(PROGRAMS), codes  # each one stopped in order by itself: no SIGKILL
    assert lines[0].startswith(f"found {len(PROGRAMS)} program(s) of {config.ROOT} running without supervisord")
    assert [x.split()[1] for x in lines if x.startswith("stopping ")] == order, lines
    assert not [x for x in lines if "SIGKILL" in x], lines
    for d in found:
        recs = shutdown_records(stack, d.script, d.pid)
        assert [r["event"] for r in recs][::len(recs) - 1] == ["stopping", "stopped"], recs
        assert recs[0]["reason"] == "SIGTERM"
    assert ctl.orphans(config.ROOT, stack.config_path) == []
    stack.start()  # and now the stack starts afresh: nothing holds its ports, segment or journal
    one_process_per_program(stack)
    healed(stack, trading=False)


def _run_daemon(tmp_path: Path, stack: Stack, env: dict[str, str], parent: str) -> subprocess.Popen[bytes]:
    out = tmp_path / "bootstrap.log"
    script = str(config.ROOT / "daemons" / "bootstrap.py")
    cmd = [sys.executable, "-u", script] if parent == "python" else \
        ["sh", "-c", f'"{sys.executable}" -u "{script}" & wait']
    with open(out, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=config.ROOT,
                                env={**stack.env, "STACK_LOG_STDOUT": str(out), **env})


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def test_a_daemon_started_by_a_supervisord_already_gone_stops_at_once(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s")  # for its config only: nothing is started
    p = _run_daemon(tmp_path, stack, {"SUPERVISOR_ENABLED": "1"}, "python")  # its parent is no supervisord
    try:
        assert p.wait(timeout=30) == 0
        recs = _records(tmp_path / "bootstrap.log")
        assert [r["event"] for r in recs][-2:] == ["stopping", "stopped"], recs
        assert recs[0]["event"] == "started" and recs[0]["pdeathsig"] is True
        assert recs[-2]["reason"] == "supervisor_gone"
    finally:
        if p.poll() is None:  # it did not stop by itself: it must not outlive the test (nor re-make the segment)
            p.kill()
            p.wait()
        stack.stop()  # never started: removes its segment and run directory


def test_a_daemon_whose_parent_dies_stops_in_order(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s")
    try:
        sh = _run_daemon(tmp_path, stack, {}, "sh")
        log = tmp_path / "bootstrap.log"
        started = stack.wait_for(lambda: [r for r in _records(log) if r["event"] == "segment_created"], timeout=30)
        pid = started[0]["pid"]
        sh.kill()  # kill -9 of its parent
        sh.wait(timeout=10)
        recs = stack.wait_for(lambda: (x := _records(log)) and x[-1]["event"] == "stopped" and x, timeout=30)
        stopping = [r for r in recs if r["event"] == "stopping"]
        assert stopping[0]["pid"] == pid and stopping[0]["reason"] == "supervisor_gone"
        assert stopping[0]["parent"] == sh.pid
        faults.wait_dead(pid)
    finally:
        stack.stop()
