"""The fault-injection suite (issue 3): real supervisord, real daemons, real
faults from shared/ops/chaos/faults.py. Each scenario says what it breaks, checks the
symptom it must cause, then ends with ``shared.ops.chaos.invariants.healed``: every
program RUNNING, the book fresh and ticking, the strategy trading again,
each restart in the audit log, and the journal's invariants.

Scenarios share a stack per class (the faults heal, so the next scenario
starts from a healed stack and checks that first); the ones that need a
fresh start get their own.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import book, config
from shared.execjournal import read_lines
from shared.ops.chaos import faults
from shared.ops.chaos.faults import Proxy, toxic
from shared.ops.chaos.invariants import NotHealed, healed, ticks
from shared.ops.harness import PROGRAMS, Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack, LogonAck, Order, Reject, frame

pytestmark = pytest.mark.faults

HB_MS = 100  # heartbeat timeout: 3 x 100 ms
FAST: dict[str, Any] = {"gateway": {"news_rate": 20, "heartbeat_ms": HB_MS},
                        "ordermanager": {"heartbeat_ms": HB_MS}}
FREEZE_S = 1.5  # past every heartbeat timeout and book.stale_ms

RECOVERY: dict[str, float] = {}  # fault -> seconds from the fault (or its end) to healed


def recovered(name: str, stack: Stack, t_fault: float, **kw: Any) -> float:
    """healed(), and the time from ``t_fault`` to it, kept for the report."""
    healed(stack, **kw)
    RECOVERY[name] = round(time.monotonic() - t_fault, 2)
    print(f"RECOVERY {name} {RECOVERY[name]} s")
    return RECOVERY[name]


class Since:
    """What the logs and the audit log gained after this point."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.n = {p: len(stack.log(p)) for p in PROGRAMS}
        self.n_audit = len(stack.audit())

    def events(self, program: str, event: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.stack.log(program)[self.n[program]:]
                if r.get("event") == event and all(r.get(k) == v for k, v in match.items())]

    def wait(self, program: str, event: str, timeout: float = 30.0, **match: Any) -> list[dict[str, Any]]:
        """Wait until ``program`` logs ``event`` (with these fields)."""
        try:
            return self.stack.wait_for(lambda: self.events(program, event, **match), timeout)
        except TimeoutError:
            raise AssertionError(f"{program} logged no {event} {match or ''} in {timeout} s") from None

    def audit(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.stack.audit()[self.n_audit:] if all(r.get(k) == v for k, v in match.items())]


def generation(stack: Stack) -> int:
    seg = book.Segment.attach(stack.segment)
    try:
        return seg.generation
    finally:
        seg.close()


def book_lag_ms(stack: Stack) -> float:
    """The largest gap between a tick's gateway time and its write to the book, now."""
    try:
        seg = book.Segment.attach(stack.segment)
    except book.BookError:
        return 0.0
    try:
        recs = [seg.read(i) for i in range(len(seg.symbols))]
        return max(((r.recv_ns - r.ts_ns) / 1e6 for r in recs if r is not None and r.seq), default=0.0)
    finally:
        seg.close()


def _epoch(iso: str) -> float:
    """A log record's ``ts`` as seconds since the epoch."""
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def fills_through(stack: Stack, client_id: str, last_exec_id: int | None) -> dict[str, int]:
    """A client's non-zero positions from its fills in the exec journal up to ``last_exec_id``."""
    pos: dict[str, int] = defaultdict(int)
    for x in read_lines(stack.cfg.resolve(stack.cfg.ordermanager.journal)):
        if x.exec_id > (last_exec_id or 0):
            break
        if x.client_id == client_id and x.last_qty:
            pos[x.symbol] += x.last_qty if x.side == "BUY" else -x.last_qty
    return {s: q for s, q in pos.items() if q}


@pytest.fixture(scope="class")
def class_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for a class of scenarios, stopped after the last."""
    s = Stack(tmp_path_factory.mktemp("faults"), FAST)
    try:
        s.start()
        yield s
    finally:
        s.stop()


_UNHEALED: dict[int, str] = {}  # id(stack) -> why it did not heal: the class's later scenarios fail at once


@pytest.fixture
def stack(class_stack: Stack) -> Stack:
    """The class's stack, healed before the scenario starts."""
    return _healed_first(class_stack)


def _healed_first(s: Stack) -> Stack:
    if id(s) in _UNHEALED:
        pytest.fail(f"an earlier scenario left the stack unhealed: {_UNHEALED[id(s)]}")
    try:
        healed(s)
    except NotHealed as e:
        _UNHEALED[id(s)] = str(e)
        raise
    return s


# --- processes ----------------------------------------------------------------


class TestProcesses:
    """kill -9, SIGSTOP, crash loops, the segment, supervisord itself."""

    @pytest.mark.parametrize("program", PROGRAMS)
    def test_kill9(self, stack: Stack, program: str) -> None:
        since = Since(stack)
        gen0 = generation(stack)
        journal0 = stack.journal()
        t = time.monotonic()
        old = faults.kill(stack, program, signal.SIGKILL)
        recovered(f"kill9_{program}", stack, t, restarted={program: old})
        ex = since.audit(process=program, to_state="EXITED", pid=old)
        assert ex and ex[0]["expected"] is False, ex
        for daemon in ("orderbook", "strategy"):  # a new session, or a resync: never a gap
            assert not since.events(daemon, "gap_detected"), since.events(daemon, "gap_detected")
        if program == "gateway":
            for daemon, stream in (("orderbook", "price"), ("strategy", "news")):
                since.wait(daemon, "reconnected", stream=stream)
                assert since.events(daemon, "session", stream=stream), f"{daemon} missed the new session"
        elif program == "orderbook":
            assert generation(stack) > gen0
            since.wait("strategy", "generation_changed")
        elif program == "ordermanager":
            loaded = since.wait("ordermanager", "journal_loaded")[0]
            assert loaded["orders"] >= len(journal0)
            since.wait("strategy", "reconnected", stream="orders")
            since.wait("strategy", "logged_on")
        elif program == "strategy":
            on = since.wait("strategy", "logged_on")[0]
            cid = stack.cfg.strategy.client_id
            assert on["positions"] == fills_through(stack, cid, on["last_exec_id"])
        elif program == "bootstrap":
            since.wait("bootstrap", "segment_attached")
            assert not since.events("bootstrap", "segment_created")
            assert generation(stack) == gen0  # the writer was never disturbed

    def test_kill9_ordermanager_during_order_burst(self, stack: Stack) -> None:
        n, cid = 4000, "burst-1"
        orders = [Order(order_id=f"b{i}", symbol="AAPL", side="BUY" if i % 2 else "SELL", qty=1, price=100.0,
                        ts_ns=time.time_ns(), tick_ts_ns=time.time_ns()) for i in range(n)]
        host, port = stack.cfg.ordermanager.host, stack.cfg.ordermanager.port
        acked: dict[str, int] = {}
        c = OrderClient(host, port)
        c.logon(cid, stack.token)

        sender = c.send_paced(orders)  # paced, so the kill lands mid-burst
        old = 0
        t = 0.0
        try:
            while True:
                m = c.recv(timeout=10)
                if isinstance(m, Ack):
                    assert not m.duplicate
                    acked[m.order_id] = m.order_no
                    if not old and len(acked) >= n // 4:
                        t = time.monotonic()
                        old = faults.kill(stack, "ordermanager", signal.SIGKILL)
        except (EOFError, ConnectionError, TimeoutError):
            pass
        finally:
            sender.join()
            c.close()
        assert old, "the ordermanager was never killed"
        before = dict(acked)
        assert len(before) < n, "the burst ended before the kill: nothing was in flight"
        # Back (and its link to the venue too: till then an order is unavailable): log on again and
        # resend the whole burst, same order_ids.
        stack.wait_for(lambda: [r for r in stack.events("ordermanager", "venue_logged_on") if r["pid"] != old],
                       timeout=30)
        c = stack.wait_for(lambda: _logon(host, port, cid, stack.token), timeout=30)
        try:
            c.send_raw(b"".join(frame(o) for o in orders))
            dup: dict[str, bool] = {}
            while len(dup) < n:
                m = c.recv(timeout=20)
                if isinstance(m, Ack):
                    dup[m.order_id] = m.duplicate
                    if m.order_id in before:
                        assert m.order_no == before[m.order_id], m
                    acked[m.order_id] = m.order_no
                assert not isinstance(m, Reject), m
        finally:
            c.close()
        assert all(dup[oid] for oid in before), "an order acked before the kill was not a duplicate"
        assert any(not d for d in dup.values()), "nothing was left to journal after the kill"
        recovered("kill9_ordermanager_during_burst", stack, t, restarted={"ordermanager": old},
                  acks=[(cid, oid, no) for oid, no in acked.items()])
        journaled = [e for e in stack.journal() if e["client_id"] == cid]
        assert sorted(e["order_id"] for e in journaled) == sorted(o.order_id for o in orders)
        print(f"BURST acked before kill {len(before)}/{n}, duplicates on resend {sum(dup.values())}")

    @pytest.mark.parametrize(("program", "watchers"), [
        ("gateway", [("orderbook", "price"), ("strategy", "news")]),
        ("ordermanager", [("strategy", "orders")]),
    ])
    def test_sigstop_past_heartbeat_timeout(self, stack: Stack, program: str,
                                            watchers: list[tuple[str, str]]) -> None:
        since = Since(stack)
        pids = stack.pids()
        pid = faults.freeze(stack, program, FREEZE_S)
        t = time.monotonic()
        for daemon, stream in watchers:
            since.wait(daemon, "disconnected", stream=stream, reason="heartbeat_timeout")
            since.wait(daemon, "reconnected", stream=stream)
        if program == "ordermanager":
            since.wait("strategy", "logged_on")
        recovered(f"sigstop_{program}", stack, t)
        for daemon in ("orderbook", "strategy"):
            assert not since.events(daemon, "gap_detected"), since.events(daemon, "gap_detected")
        assert stack.pids() == pids and pids[program] == pid  # thawed, not restarted

    def test_sigstop_orderbook_makes_book_stale(self, stack: Stack) -> None:
        since = Since(stack)
        pids = stack.pids()
        gen0 = generation(stack)
        frozen_at = time.time()
        faults.freeze(stack, "orderbook", FREEZE_S)
        t = time.monotonic()
        stale = since.wait("strategy", "book_stale")[0]
        fresh = since.wait("strategy", "book_fresh")[0]
        assert frozen_at < _epoch(stale["ts"]) < _epoch(fresh["ts"])
        assert stale["age_ms"] is None or stale["age_ms"] > stack.cfg.book.stale_ms
        recovered("sigstop_orderbook", stack, t)
        assert stack.pids() == pids and generation(stack) == gen0  # the same writer resumed
        # The kill switch, by the order the strategy logged things (it looks at the book's age before
        # each decision, so the first decision on a stale book logs book_stale): no order between
        # book_stale and book_fresh. How soon it trips is deploy/bench --suite's figure.
        log = stack.log("strategy")[since.n["strategy"]:]
        i, j = log.index(stale), log.index(fresh)
        assert not [r for r in log[i:j] if r.get("event") == "order_sent"]
        print(f"\nkill switch: book_stale {(_epoch(stale['ts']) - frozen_at) * 1000:.0f} ms after the freeze "
              f"(stale_ms {stack.cfg.book.stale_ms})")

    def test_torn_journal_line_repaired_at_start(self, stack: Stack) -> None:
        since = Since(stack)
        path = stack.cfg.resolve(stack.cfg.ordermanager.journal)
        with faults.frozen(stack, "ordermanager"):  # nothing more is written after the tear
            torn = faults.tear_last_line(path, stack)
            t = time.monotonic()
            old = faults.kill(stack, "ordermanager", signal.SIGKILL)
        repaired = since.wait("ordermanager", "journal_repaired")[0]
        assert repaired["dropped_bytes"] == torn
        recovered("torn_journal_kill9_ordermanager", stack, t, restarted={"ordermanager": old})
        assert path.read_bytes().endswith(b"\n")

    def test_segment_removed_while_running(self, stack: Stack) -> None:
        since = Since(stack)
        old = book.Segment.attach(stack.segment)
        inode = old.inode
        old.close()
        t = time.monotonic()
        assert faults.remove_segment(stack)
        since.wait("bootstrap", "segment_created")
        since.wait("orderbook", "segment_attached")
        since.wait("strategy", "segment_attached")
        recovered("segment_removed", stack, t)
        new = book.Segment.attach(stack.segment)
        try:
            assert new.inode != inode
        finally:
            new.close()

    def test_torn_records_repaired_by_the_next_writer(self, stack: Stack) -> None:
        since = Since(stack)
        with faults.frozen(stack, "orderbook"):
            touched = faults.corrupt_segment(stack, "torn")
            seg = book.Segment.attach(stack.segment)
            try:
                assert all(seg.read(i, tries=10) is None for i in range(len(seg.symbols)))
            finally:
                seg.close()
            t = time.monotonic()
            old = faults.kill(stack, "orderbook", signal.SIGKILL)
        repaired = since.wait("orderbook", "segment_repaired")[0]
        assert repaired["symbols"] == touched
        recovered("torn_records_kill9_orderbook", stack, t, restarted={"orderbook": old})

    def test_second_orderbook_refuses(self, stack: Stack) -> None:
        pids = stack.pids()
        gen0 = generation(stack)
        r = subprocess.run([sys.executable, str(config.ROOT / "daemons" / "orderbook.py")], env=stack.env,
                           cwd=config.ROOT, capture_output=True, timeout=60)
        assert r.returncode != 0
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith(b"{")]
        conflict = [x for x in lines if x["event"] == "writer_conflict"]
        assert conflict, r.stdout.decode() + r.stderr.decode()
        assert str(pids["orderbook"]) in conflict[0]["error"]
        assert stack.pids() == pids and generation(stack) == gen0
        healed(stack)

    def test_crash_loop_until_fatal_then_start(self, stack: Stack) -> None:
        since = Since(stack)
        # Without its config a daemon cannot start at all (a missing token or journal is waited for).
        with faults.hidden(stack.config_path, stack):
            old = faults.kill(stack, "ordermanager", signal.SIGKILL)
            stack.wait_for(lambda: stack.status()["ordermanager"] == "FATAL", timeout=120, interval=0.5)
            assert "ordermanager: bad config" in (stack.logs / "ordermanager.err").read_text()
            assert not since.events("strategy", "logged_on")
        t = time.monotonic()
        stack.ctl("start", "ordermanager", check=True)
        since.wait("strategy", "logged_on")
        recovered("crash_loop_fatal_then_start", stack, t, restarted={"ordermanager": old})
        assert len(since.audit(process="ordermanager", to_state="BACKOFF")) >= 2
        stack.wait_for(lambda: since.audit(process="ordermanager", to_state="FATAL"), timeout=30)

    def test_sigterm_strategy_by_the_fault_command(self, stack: Stack) -> None:
        since = Since(stack)
        old = stack.pids()["strategy"]
        t = time.monotonic()
        r = subprocess.run([str(config.ROOT / "deploy" / "fault"), "-c", str(stack.conf), "kill", "strategy",
                            "-s", "TERM"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        rec = json.loads(r.stdout.splitlines()[-1])
        assert (rec["event"], rec["fault"], rec["program"], rec["target_pid"], rec["signal"]) == \
            ("fault_injected", "kill", "strategy", old, "SIGTERM")
        assert rec["pid"] not in (old, stack.pid)  # every record's pid is its writer's (contract §6)
        since.wait("strategy", "stopping", reason="SIGTERM")
        recovered("sigterm_strategy", stack, t, restarted={"strategy": old})
        ex = since.audit(process="strategy", to_state="EXITED", pid=old)
        assert ex and ex[0]["expected"] is True, ex  # a clean stop, exit 0

    def test_supervisord_reload(self, stack: Stack) -> None:
        pids = stack.pids()
        t = time.monotonic()
        out = stack.ctl("reload", check=True)
        assert "Restarted supervisord" in out, out
        stack.wait_running(timeout=60)
        recovered("supervisord_reload", stack, t, restarted=pids)


def _logon(host: str, port: int, cid: str, token: str) -> OrderClient | None:
    try:
        c = OrderClient(host, port, timeout=2)
    except OSError:
        return None
    try:
        ack = c.logon(cid, token)
    except (OSError, EOFError, TimeoutError):
        c.close()
        return None
    assert isinstance(ack, LogonAck)
    return c


# --- a port held at start -----------------------------------------------------


def test_port_held_at_start(tmp_path: Path) -> None:
    s = Stack(tmp_path / "held", FAST)
    try:
        with faults.hold_port(s.cfg.ordermanager.port, target=s), faults.hold_port(s.cfg.gateway.price_port, target=s):
            s.start(wait=False)
            s.wait_running()  # every program reaches RUNNING: the servers retry their bind
            for daemon, stream in (("ordermanager", "orders"), ("gateway", "price")):
                s.wait_for(lambda d=daemon, st=stream: len([r for r in s.events(d, "bind_failed")
                                                            if r["stream"] == st]) >= 2, timeout=30)
            assert not [r for r in s.events("gateway", "listening") if r["stream"] == "price"]
            assert not s.events("ordermanager", "listening")
            assert not s.events("strategy", "logged_on")
            t = time.monotonic()
        s.wait_for(lambda: s.events("ordermanager", "listening"), timeout=30)
        s.wait_for(lambda: [r for r in s.events("gateway", "listening") if r["stream"] == "price"], timeout=30)
        s.wait_for(lambda: s.events("strategy", "logged_on"), timeout=30)
        recovered("port_held_at_start", s, t)
    finally:
        s.stop()


# --- toxics on the links ------------------------------------------------------

LINKS = ("price", "news", "orders")
CLIENT = {"price": "orderbook", "news": "strategy", "orders": "strategy"}
TOXICS: dict[str, dict[str, Any]] = {
    "latency": toxic("latency", ms=150, jitter=50),
    "bandwidth": toxic("bandwidth", rate=150),
    "reset_peer": toxic("reset_peer", timeout=300),
    "blackhole": toxic("blackhole"),
    "slicer": toxic("slicer", average_size=3, size_variation=2, delay_us=50),
    "limit_data": toxic("limit_data", bytes=700),
    "garbage": toxic("garbage", probability=0.3, size=8),
}


@pytest.fixture(scope="class")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Proxy]]]:
    """A stack whose price, news and order links each run through a fault proxy."""
    listen = {name: faults.free_port() for name in LINKS}
    s = Stack(tmp_path_factory.mktemp("links"),
              {**FAST, "links": {n: f"127.0.0.1:{p}" for n, p in listen.items()}})
    g, om = s.cfg.gateway, s.cfg.ordermanager
    upstream = {"price": (g.host, g.price_port), "news": (g.host, g.news_port), "orders": (om.host, om.port)}
    proxies: dict[str, Proxy] = {}
    try:
        for name in LINKS:
            proxies[name] = Proxy(upstream[name], listen[name], name, s.logs / f"proxy-{name}.log").start()
        s.start()
        yield s, proxies
    finally:
        s.stop()
        for p in proxies.values():
            p.stop()


def _order_latency_at_least(since: Since, us: int) -> bool:
    return any(r["latency_us"] >= us for r in since.events("ordermanager", "order_received"))


def _disconnects(since: Since, link: str, reason: Any) -> list[dict[str, Any]]:
    return [r for r in since.events(CLIENT[link], "disconnected", stream=link) if reason(r["reason"])]


def _new_order(stack: Stack) -> Any:
    last = max((e["order_no"] for e in stack.journal()), default=0)
    cid = stack.cfg.strategy.client_id
    return lambda: any(e["order_no"] > last and e["client_id"] == cid for e in stack.journal())


class TestLinks:
    """Each toxic on each link, turned on and off on the live link."""

    @pytest.mark.parametrize("kind", list(TOXICS))
    @pytest.mark.parametrize("link", LINKS)
    def test_toxic(self, linked: tuple[Stack, dict[str, Proxy]], link: str, kind: str) -> None:
        s, proxies = linked
        _healed_first(s)
        p = proxies[link]
        since = Since(s)
        st0 = p.stats()
        assert st0["links"] >= 1, f"no client goes through the {link} proxy"
        with p.toxics(TOXICS[kind]):
            self.symptom(s, p, since, link, kind, st0)
        t = time.monotonic()
        recovered(f"toxic_{kind}_{link}", s, t)
        if kind != "garbage" and link != "orders":  # nothing lost inside a connection; resync from the snapshot
            assert not since.events(CLIENT[link], "gap_detected"), since.events(CLIENT[link], "gap_detected")
        if kind in ("slicer", "limit_data", "latency", "bandwidth"):
            # Cut, sliced or slowed, never garbled: the decoders kept in step.
            assert not since.events(CLIENT[link], "bad_frame"), since.events(CLIENT[link], "bad_frame")
            if link == "orders":
                assert not since.events("ordermanager", "bad_frame")

    def test_fault_command_drives_a_live_proxy(self, linked: tuple[Stack, dict[str, Proxy]]) -> None:
        s, proxies = linked
        _healed_first(s)
        cmd = [str(config.ROOT / "deploy" / "fault"), "toxic", "--control", str(proxies["price"].control_port)]
        r = subprocess.run([*cmd, "--set", "latency:ms=150,jitter=50"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        try:
            assert json.loads(r.stdout)["toxics"] == [toxic("latency", ms=150, jitter=50)]
            s.wait_for(lambda: book_lag_ms(s) >= 100, timeout=20)
        finally:
            r = subprocess.run([*cmd, "--clear"], capture_output=True, timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout)["toxics"] == []
        bad = subprocess.run([*cmd, "--set", "latency:nonsense=1"], capture_output=True, timeout=60)
        assert bad.returncode != 0 and b"unknown parameter" in bad.stderr
        t = time.monotonic()
        recovered("toxic_latency_price_by_command", s, t)

    def symptom(self, s: Stack, p: Proxy, since: Since, link: str, kind: str, st0: dict[str, Any]) -> None:
        """Wait for what this toxic must do to the stack while it is on."""
        w = s.wait_for
        if kind == "latency":
            if link == "price":
                w(lambda: book_lag_ms(s) >= 100, timeout=20)
            else:  # the news tick or the order itself is late at the ordermanager
                w(lambda: _order_latency_at_least(since, 100_000), timeout=30)
        elif kind == "bandwidth":
            if link == "price":
                w(lambda: book_lag_ms(s) >= 1000, timeout=20)
            else:
                w(lambda: _order_latency_at_least(since, 1_000_000), timeout=30)
        elif kind == "reset_peer":
            w(lambda: len(_disconnects(since, link, lambda r: r != "heartbeat_timeout")) >= 2, timeout=20)
            assert p.stats()["resets"] >= st0["resets"] + 2
        elif kind == "blackhole":
            w(lambda: _disconnects(since, link, lambda r: r == "heartbeat_timeout"), timeout=20)
            if link == "orders":
                w(lambda: since.events("ordermanager", "disconnected", reason="heartbeat_timeout"), timeout=20)
        elif kind == "slicer":
            if link == "price":
                n0 = ticks(s.segment)
                w(lambda: ticks(s.segment) >= n0 + 50, timeout=20)
            else:
                w(_new_order(s), timeout=30)
            st = p.stats()
            moved = st["bytes_upstream"] + st["bytes_downstream"] - st0["bytes_upstream"] - st0["bytes_downstream"]
            assert st["writes"] - st0["writes"] >= moved / 6  # tiny writes indeed
        elif kind == "limit_data":
            # FIN, or RST when the proxy closes with the client's bytes unread: cut either way.
            w(lambda: len(_disconnects(since, link, lambda r: r != "heartbeat_timeout")) >= 2, timeout=30)
            assert p.stats()["cuts"] >= st0["cuts"] + 2
        elif kind == "garbage":
            if link == "orders":
                w(lambda: since.events("ordermanager", "bad_frame") or since.events("strategy", "bad_frame"),
                  timeout=30)
            else:
                w(lambda: since.events(CLIENT[link], "bad_frame"), timeout=30)


# --- the fault proxy itself ---------------------------------------------------


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A threaded TCP echo server."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(c,), daemon=True).start()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield srv.getsockname()[:2]
    finally:
        stop.set()
        th.join()
        srv.close()


def _echo(c: socket.socket) -> None:
    with c:
        try:
            while data := c.recv(1 << 16):
                c.sendall(data)
        except OSError:
            pass


def _roundtrip(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float, str]:
    """Send ``data`` through the proxy to the echo server: what came back, how long, how it ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        t = time.monotonic()
        c.sendall(data)
        got, end = b"", "complete"
        try:
            while len(got) < len(data):
                chunk = c.recv(1 << 16)
                if not chunk:
                    end = "eof"
                    break
                got += chunk
        except TimeoutError:
            end = "timeout"
        except ConnectionResetError:
            end = "reset"
        return got, time.monotonic() - t, end


def test_proxy_toxics_on_an_echo_server(echo: tuple[str, int], tmp_path: Path) -> None:
    data = bytes(range(256)) * 8
    with Proxy(echo, name="echo", log_path=tmp_path / "proxy.log") as p:
        assert _roundtrip(p.port, data)[0] == data
        with p.toxics(toxic("latency", ms=200, jitter=20)):
            got, took, _ = _roundtrip(p.port, data)
            assert got == data and took >= 0.36  # both ways, at least 180 ms each
        with p.toxics(toxic("bandwidth", rate=4096)):
            got, took, _ = _roundtrip(p.port, data)  # 2 KB at 4 KB/s: the last byte is 0.5 s behind the first
            assert got == data and took >= 0.45
        w0 = p.stats()["writes"]
        with p.toxics(toxic("slicer", average_size=2, size_variation=1)):
            assert _roundtrip(p.port, data)[0] == data
        assert p.stats()["writes"] - w0 >= 2 * len(data) / 3  # both ways, 1..3 bytes a write
        with p.toxics(toxic("limit_data", bytes=1000, stream="downstream")):
            got, _, end = _roundtrip(p.port, data)
            assert (got, end) == (data[:1000], "eof")
        with p.toxics(toxic("garbage", probability=1.0, size=5, stream="upstream")):
            got, _, _ = _roundtrip(p.port, b"x" * 10, timeout=1.0)
            assert len(got) == 15 and got.count(b"x") >= 10
        with p.toxics(toxic("reset_peer", timeout=100)):
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as c:
                with pytest.raises(ConnectionResetError):
                    c.recv(10)
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as c:
            p.set(toxic("blackhole"))
            c.sendall(b"held")
            c.settimeout(0.5)
            with pytest.raises(TimeoutError):
                c.recv(10)
            p.clear()  # held bytes go through, in order
            c.settimeout(5)
            assert c.recv(10) == b"held"
        st = p.stats()
        assert st["held"] == 4 and st["resets"] >= 1 and st["cuts"] >= 1 and st["garbage"] >= 1
    log = [json.loads(x) for x in (tmp_path / "proxy.log").read_text().splitlines()]
    kinds = [r["type"] for r in log if r["event"] == "fault_injected"]
    assert kinds == ["latency", "bandwidth", "slicer", "limit_data", "garbage", "reset_peer", "blackhole"]
    assert all(r["daemon"] == "faults" and r["link"] == "echo" for r in log if r["event"] == "fault_injected")
