"""The journal under real faults, on a private stack under the real supervisord:
a second ordermanager on the same journal waits for its lock (it never binds,
never appends); a token file missing at start is waited for, not crashed on;
a real full filesystem (a tmpfs; CI runs as root) under the journal while a
client trades: rejects ``unavailable``, no crash, then acks again with nothing
lost or doubled. Each ends with ``shared.ops.chaos.invariants.healed``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared import config
from shared.ops.chaos import disk, faults
from shared.ops.chaos.invariants import healed
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack, Heartbeat, LogonAck, Reject

pytestmark = pytest.mark.faults

# Heartbeats a loaded machine keeps (a 3 s timeout): the links that must never drop here are
# checked, and a 300 ms timeout dropped them by chance when a process was starved for a moment.
HB_MS = 1000
FAST: dict[str, Any] = {"gateway": {"news_rate": 20, "heartbeat_ms": HB_MS},
                        "ordermanager": {"heartbeat_ms": HB_MS}}


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a process wrote to ``path`` so far."""
    return [json.loads(x) for x in path.read_bytes().splitlines() if x.startswith(b"{")]


def new_events(stack: Stack, program: str, since: int, event: str) -> list[dict[str, Any]]:
    """``event`` records of a program's log after its first ``since`` records."""
    return [r for r in stack.log(program)[since:] if r.get("event") == event]


def test_second_ordermanager_waits_for_the_journal_lock(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", FAST)
    out = tmp_path / "second.log"
    proc: subprocess.Popen[bytes] | None = None
    acks: list[tuple[str, str, int]] = []
    try:
        stack.start()
        healed(stack)
        owner = stack.pids()["ordermanager"]
        with open(out, "wb") as f:
            proc = subprocess.Popen([sys.executable, str(config.ROOT / "daemons" / "ordermanager.py")],
                                    env=stack.env, cwd=config.ROOT, stdout=f, stderr=subprocess.STDOUT)
        stack.wait_for(lambda: len([r for r in records(out) if r["event"] == "journal_locked"]) >= 3, timeout=30)
        locked = next(r for r in records(out) if r["event"] == "journal_locked")
        assert locked["holder_pid"] == owner and locked["level"] == "warning", locked
        assert str(stack.cfg.resolve(stack.cfg.ordermanager.journal)) == locked["path"]
        # Waiting: it has not read the journal, nor tried the port.
        assert not [r for r in records(out) if r["event"] in ("journal_loaded", "listening", "bind_failed")]
        healed(stack)  # the owner goes on alone: order_no contiguous, nothing twice
        assert stack.pids()["ordermanager"] == owner
        # The owner stops: the waiting one takes the journal over, then the port, and serves.
        stack.ctl("stop", "ordermanager", check=True)
        stack.wait_for(lambda: [r for r in records(out) if r["event"] == "listening"], timeout=30)
        events = [r["event"] for r in records(out)]
        assert max(events.index("journal_lock_acquired"), events.index("journal_loaded")) < events.index("listening")
        om = stack.cfg.ordermanager
        with OrderClient(om.host, om.port, timeout=10) as c:
            c.logon("lock-1", stack.token)
            c.order("lock-1-1", "AAPL", "BUY", 1, 100.0)
            ack = c.recv_type(Ack, Reject, timeout=10)
        assert isinstance(ack, Ack) and not ack.duplicate, ack
        acks.append(("lock-1", "lock-1-1", ack.order_no))
        nos = [e["order_no"] for e in stack.journal()]
        assert nos == list(range(1, len(nos) + 1)) and ack.order_no in nos
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        try:
            if stack.pid is not None:
                stack.ctl("start", "ordermanager")
                healed(stack, acks=acks)
        finally:
            stack.stop()


def test_token_file_missing_at_start_is_waited_for(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", FAST)
    try:
        stack.start()
        healed(stack)
        n = len(stack.log("ordermanager"))
        token = stack.cfg.resolve(stack.cfg.ordermanager.token_file)
        with faults.hidden(token, stack):
            old = faults.kill(stack, "ordermanager", signal.SIGKILL)
            stack.wait_for(lambda: len(new_events(stack, "ordermanager", n, "token_unreadable")) >= 3, timeout=30)
            waiting = stack.pids()["ordermanager"]
            rec = new_events(stack, "ordermanager", n, "token_unreadable")[0]
            assert rec["level"] == "error" and rec["path"] == str(token) and "No such file" in rec["error"]
            stack.wait_for(lambda: len(new_events(stack, "ordermanager", n, "token_unreadable")) >= 6, timeout=30)
            assert stack.pids()["ordermanager"] == waiting != old  # waiting, not crash-looping
            assert stack.status()["ordermanager"] == "RUNNING"
            assert not new_events(stack, "ordermanager", n, "listening")  # nobody can connect meanwhile
        stack.wait_for(lambda: new_events(stack, "ordermanager", n, "listening"), timeout=30)
        assert new_events(stack, "ordermanager", n, "token_read")
        healed(stack, restarted={"ordermanager": old})
        assert stack.pids()["ordermanager"] == waiting
    finally:
        stack.stop()


def test_disk_full_under_the_journal_while_a_client_trades(tmp_path: Path) -> None:
    with disk.tmpfs(tmp_path / "fs", 2 << 20) as mnt:
        journal = mnt / "orders.jsonl"
        stack = Stack(tmp_path / "stack", {**FAST, "ordermanager": {"heartbeat_ms": HB_MS, "journal": str(journal)}})
        try:
            stack.start()
            healed(stack)
            pid = stack.pids()["ordermanager"]
            n_log, n_strategy = len(stack.log("ordermanager")), len(stack.log("strategy"))
            om = stack.cfg.ordermanager
            c = OrderClient(om.host, om.port, timeout=10)
            c.logon("disk-1", stack.token)
            acked: dict[str, int] = {}
            refused: list[Reject] = []
            seq = iter(range(1, 1 << 30))

            def trade() -> Ack | Reject:
                oid = f"disk-1-{next(seq)}"
                c.order(oid, "AAPL", "BUY" if len(acked) % 2 else "SELL", 1, 100.0)
                m = c.recv_type(Ack, Reject, timeout=10)
                assert m.order_id == oid, m
                if isinstance(m, Ack):
                    assert not m.duplicate, m
                    acked[oid] = m.order_no
                else:
                    refused.append(m)
                return m

            for _ in range(20):
                assert isinstance(trade(), Ack)
            with disk.full(mnt, stack):
                for _ in range(5000):  # the journal's last block may still take a few lines
                    if isinstance(trade(), Reject) and len(refused) >= 10:
                        break
                assert len(refused) >= 10, "the full disk never refused an order"
                assert {(r.reason, r.detail) for r in refused} == {("unavailable",
                                                                    "journal unavailable: No space left on device")}
                # Still serving: a resend of an acked order is acked again, a logon is answered.
                first = next(iter(acked))
                c.order(first, "AAPL", "SELL", 1, 100.0)
                dup = c.recv_type(Ack, Reject, timeout=10)
                assert isinstance(dup, Ack) and dup.duplicate and dup.order_no == acked[first], dup
                with OrderClient(om.host, om.port, timeout=10) as c2:
                    assert isinstance(c2.logon("disk-2", stack.token), LogonAck)
                failed = stack.wait_for(lambda: new_events(stack, "ordermanager", n_log, "journal_write_failed"))
                assert failed[0]["errno"] == "ENOSPC" and failed[0]["level"] == "error", failed

                def strategy_refused() -> list[dict[str, Any]]:
                    c.send(Heartbeat(ts_ns=time.time_ns()))  # our link stays up while we wait
                    return [r for r in new_events(stack, "strategy", n_strategy, "order_refused")
                            if r["reason"] == "unavailable"]

                stack.wait_for(strategy_refused, timeout=60)  # the strategy's own orders meet the full disk too
                for _ in range(20):
                    assert isinstance(trade(), Reject)
            t_free = time.monotonic()
            while not isinstance(trade(), Ack):
                assert time.monotonic() - t_free < 5, "no ack within 5 s of the space coming back"
                time.sleep(0.01)
            for _ in range(20):
                assert isinstance(trade(), Ack)
            c.close()
            stack.wait_for(lambda: new_events(stack, "ordermanager", n_log, "journal_writable"))
            assert len(new_events(stack, "ordermanager", n_log, "journal_write_failed")) == 1  # not once per order
            assert stack.pids()["ordermanager"] == pid  # no crash, no restart
            assert not [r for r in new_events(stack, "strategy", n_strategy, "disconnected") if r["stream"] == "orders"]
            assert not [r for r in stack.audit() if r["process"] == "ordermanager" and r["to_state"] == "EXITED"]
            healed(stack, acks=[("disk-1", oid, no) for oid, no in acked.items()])
            mine = [e["order_id"] for e in stack.journal() if e["client_id"] == "disk-1"]
            assert mine == list(acked), "the journal holds exactly the acked orders, once, in order"
            assert not {r.order_id for r in refused} & set(mine)
        finally:
            stack.stop()
