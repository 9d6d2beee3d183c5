"""System tests on the real supervisord (issue 2): a private stack started from
a temporary copy of deploy/supervisord.conf with its own ports, segment and
socket. Two stacks, each shared by the tests that follow its fixture, in file
order: ``live`` (fast news, so the strategy trades at once; its last test stops
it) and ``quiet`` (slow feeds, so the streams fall silent long enough for
heartbeats) for an outside program that knows only the contract.
"""

from __future__ import annotations

import datetime as dt
import json
import mmap
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.book import BookError, Segment
from shared.ops.harness import PROGRAMS, Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack, Order, Reject, frame

MSG = re.compile(r"^Received Order (\d+): (BUY|SELL) (\d+) (\S+) @ (\d+\.\d{2})$")
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}
LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}


def utc(ts: Any) -> dt.datetime:
    """Parse an ISO 8601 timestamp and insist that it is UTC."""
    assert isinstance(ts, str), ts
    t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert t.utcoffset() == dt.timedelta(0), ts
    return t


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def start(stack: Stack) -> Stack:
    """Start the stack and wait until it serves: RUNNING only means alive for startsecs."""
    try:
        stack.start(timeout=60)
        g, om = stack.cfg.gateway, stack.cfg.ordermanager
        stack.wait_for(lambda: all(listening(p) for p in (g.price_port, g.news_port, om.port)), timeout=60)
        stack.wait_for(lambda: book_fresh(stack), timeout=60)
    except BaseException:
        stack.stop()
        raise
    return stack


def shm_inode(stack: Stack) -> int:
    return os.stat(f"/dev/shm/{stack.segment}").st_ino


def book_fresh(stack: Stack) -> bool:
    """The book has a live writer (the current orderbook) and a recent heartbeat."""
    try:
        seg = Segment.attach(stack.segment)
    except BookError:
        return False
    try:
        return seg.writer_pid == stack.pids()["orderbook"] and seg.age_ms() < stack.cfg.book.stale_ms
    finally:
        seg.close()


def stack_processes(stack: Stack) -> list[int]:
    """Pids of every live process whose environment names this stack's config."""
    needle = f"\0STACK_CONFIG={stack.config_path}\0".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = b"\0" + (d / "environ").read_bytes() + b"\0"
        except OSError:
            continue
        if needle in env:
            found.append(int(d.name))
    return found


def complete_lines(path: Path) -> list[bytes]:
    """The lines of a file that end in a newline (a write may be in flight)."""
    data = path.read_bytes()
    return data.split(b"\n")[:-1]


# --- the main stack: fast news, so the strategy trades within seconds ------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start(Stack(tmp_path_factory.mktemp("system"), {"gateway": {"news_rate": 40}}))
    try:
        yield s
    finally:
        s.stop()


def test_all_programs_running(live: Stack) -> None:
    assert live.status() == dict.fromkeys(PROGRAMS, "RUNNING")
    out = live.ctl("status")
    for name in PROGRAMS:
        assert re.search(rf"^{name}\s+RUNNING\s+pid \d+", out, re.M), out
    pids = live.pids()
    assert len(set(pids.values())) == len(PROGRAMS) and all(p > 0 for p in pids.values())


def test_strategy_orders_reach_journal_and_log(live: Stack) -> None:
    cid = live.cfg.strategy.client_id
    live.wait_for(lambda: len([e for e in live.journal() if e["client_id"] == cid]) >= 3, timeout=40)
    journal = {e["order_no"]: e for e in live.journal()}
    received = live.wait_for(lambda: [r for r in live.events("ordermanager", "order_received")
                                      if r["client_id"] == cid and r["order_no"] in journal][:3] or None)
    # the strategy logs order_sent after the order is out: wait for those lines rather than race them
    sent = live.wait_for(lambda: {r["order_id"]: r for r in live.events("strategy", "order_sent")}
                         if {journal[r["order_no"]]["order_id"] for r in received}
                         <= {r["order_id"] for r in live.events("strategy", "order_sent")} else None)
    for r in received:
        e = journal[r["order_no"]]
        for key in ("order_id", "client_id", "symbol", "side", "qty", "price"):
            assert r[key] == e[key], key
        assert e["symbol"] in live.cfg.symbols and e["side"] in ("BUY", "SELL") and e["qty"] > 0
        assert r["msg"] == f"Received Order {e['order_no']}: {e['side']} {e['qty']} {e['symbol']} @ {e['price']:.2f}"
        assert MSG.match(r["msg"])
        assert isinstance(r["latency_us"], int)
        assert e["recv_ns"] >= e["tick_ts_ns"] and e["ts_ns"] >= e["tick_ts_ns"]
        s = sent[e["order_id"]]
        assert (s["symbol"], s["side"], s["qty"], s["price"]) == (e["symbol"], e["side"], e["qty"], e["price"])


def test_pipelined_orders_all_acked_journaled_and_logged(live: Stack) -> None:
    n = 500
    cid = "pipeline-client"
    syms = live.cfg.symbols
    orders = [Order(order_id=f"p-{i}", symbol=syms[i % len(syms)], side="BUY" if i % 2 else "SELL",
                    qty=1 + i % 7, price=round(100 + i * 0.125, 3), ts_ns=time.time_ns(), tick_ts_ns=time.time_ns())
              for i in range(n)]
    with OrderClient(live.cfg.ordermanager.host, live.cfg.ordermanager.port) as c:
        ack = c.logon(cid, live.token)
        assert ack.positions == {} and ack.last_order_id is None
        c.send_raw(b"".join(frame(o) for o in orders))  # one burst, nothing waited for
        acks = [c.recv_type(Ack, Reject, timeout=30) for _ in range(n)]
    assert all(isinstance(a, Ack) and not a.duplicate for a in acks), [a for a in acks if not isinstance(a, Ack)][:3]
    assert [a.order_id for a in acks] == [o.order_id for o in orders]
    nos = [a.order_no for a in acks]
    assert nos == sorted(nos) and len(set(nos)) == n

    journal = live.journal()
    mine = [e for e in journal if e["client_id"] == cid]
    assert [e["order_id"] for e in mine] == [o.order_id for o in orders]
    assert [e["order_no"] for e in mine] == nos
    # order_no counts from 1 across all clients, with no gap and no repeat.
    assert [e["order_no"] for e in journal] == list(range(1, len(journal) + 1))

    recs = live.wait_for(lambda: (r := [x for x in live.events("ordermanager", "order_received")
                                        if x["client_id"] == cid]) and len(r) >= n and r, timeout=20)
    assert len(recs) == n
    by_id = {o.order_id: o for o in orders}
    for r, no in zip(recs, nos, strict=True):
        o = by_id[r["order_id"]]
        assert r["order_no"] == no
        assert r["msg"] == f"Received Order {no}: {o.side} {o.qty} {o.symbol} @ {o.price:.2f}"
    # The contract's own example, to the letter.
    with OrderClient(live.cfg.ordermanager.host, live.cfg.ordermanager.port) as c:
        c.logon(cid, live.token)
        c.order("p-example", "AAPL", "BUY", 10, 173.2)
        a = c.recv_type(Ack, Reject)
    assert isinstance(a, Ack)
    rec = live.wait_for(lambda: [x for x in live.events("ordermanager", "order_received")
                                 if x["order_id"] == "p-example"])
    assert rec[0]["msg"] == f"Received Order {a.order_no}: BUY 10 AAPL @ 173.20"


def test_resent_order_is_acked_as_duplicate_and_journaled_once(live: Stack) -> None:
    cid = "dup-client"
    with OrderClient(live.cfg.ordermanager.host, live.cfg.ordermanager.port) as c:
        c.logon(cid, live.token)
        c.order("d-1", "MSFT", "SELL", 3, 321.5)
        first = c.recv_type(Ack, Reject)
        c.order("d-1", "MSFT", "SELL", 3, 321.5)
        again = c.recv_type(Ack, Reject)
        c.order("d-2", "MSFT", "BUY", 3, 321.0)  # answered after the resend: the resend is settled
        last = c.recv_type(Ack, Reject)
    assert isinstance(first, Ack) and first.duplicate is False
    assert isinstance(again, Ack) and again.duplicate is True and again.order_no == first.order_no
    assert isinstance(last, Ack) and last.order_no > first.order_no
    mine = [e["order_id"] for e in live.journal() if e["client_id"] == cid]
    assert mine == ["d-1", "d-2"]
    assert len([r for r in live.events("ordermanager", "order_received") if r["order_id"] == "d-1"]) == 1


def test_audit_log_records_process_state_events(live: Stack) -> None:
    pids = live.pids()
    for name in PROGRAMS:
        live.wait_for(lambda name=name: any(r["process"] == name and r["to_state"] == "RUNNING"
                                            and r["pid"] == pids[name] for r in live.audit()))
    # An exit supervisord did not ask for: EXITED with expected false, then a restart.
    old = pids["gateway"]
    os.kill(old, signal.SIGKILL)
    exited = live.wait_for(lambda: [r for r in live.audit() if r["process"] == "gateway"
                                    and r["to_state"] == "EXITED" and r["pid"] == old], timeout=30)
    assert exited[0]["expected"] is False and exited[0]["from_state"] == "RUNNING"
    live.wait_running(timeout=60)
    new = live.pids()["gateway"]
    assert new != old
    live.wait_for(lambda: any(r["process"] == "gateway" and r["to_state"] == "RUNNING" and r["pid"] == new
                              for r in live.audit()), timeout=30)
    for r in live.audit():
        assert {"ts", "event", "process", "from_state", "to_state", "expected", "pid"} <= r.keys(), r
        assert r["event"] == "process_state"
        utc(r["ts"])
        assert r["process"] in PROGRAMS
        assert r["from_state"] in STATES and r["to_state"] in STATES, r
        if r["to_state"] == "EXITED":
            assert isinstance(r["expected"], bool), r
        else:
            assert r["expected"] is None, r
        if r["to_state"] in ("RUNNING", "EXITED"):
            assert isinstance(r["pid"], int) and r["pid"] > 0, r


def test_restart_each_program_in_turn_and_the_stack_recovers(live: Stack) -> None:
    inode = shm_inode(live)
    live.wait_for(lambda: book_fresh(live), timeout=30)
    for name in PROGRAMS:
        before = live.pids()
        journaled = len(live.journal())
        seg = Segment.attach(live.segment)
        generation = seg.generation
        seg.close()

        out = live.ctl("restart", name)
        assert f"{name}: stopped" in out and f"{name}: started" in out, out
        live.wait_running(timeout=60)
        after = live.pids()
        assert after[name] != before[name], name
        assert {k: v for k, v in after.items() if k != name} == {k: v for k, v in before.items() if k != name}

        # Attaching daemons exit without removing (or re-creating) the segment.
        assert shm_inode(live) == inode, f"segment replaced after restarting {name}"
        live.wait_for(lambda: book_fresh(live), timeout=30)
        if name == "orderbook":
            seg = Segment.attach(live.segment)
            assert seg.generation == generation + 1 and seg.writer_pid == after["orderbook"]
            seg.close()
        if name in ("gateway", "ordermanager", "strategy"):
            live.wait_for(lambda n=journaled: len(live.journal()) > n + 1, timeout=60)

    assert len(live.events("bootstrap", "segment_created")) == 1
    journal = live.journal()
    assert [e["order_no"] for e in journal] == list(range(1, len(journal) + 1))
    keys = [(e["client_id"], e["order_id"]) for e in journal]
    assert len(keys) == len(set(keys))
    assert live.status() == dict.fromkeys(PROGRAMS, "RUNNING")


def test_every_log_line_is_a_json_record(live: Stack) -> None:
    """Run after the restarts, so every program's log holds two or more lives."""
    pids: dict[str, set[int]] = {}
    for r in live.audit():
        if r["to_state"] == "RUNNING":
            pids.setdefault(r["process"], set()).add(r["pid"])
    for name in PROGRAMS:
        lines = complete_lines(live.logs / f"{name}.log")
        assert len(lines) >= 4, name
        events = set()
        for line in lines:
            rec = json.loads(line)
            assert isinstance(rec, dict), line
            assert {"ts", "level", "event", "daemon", "pid"} <= rec.keys(), line
            utc(rec["ts"])
            assert rec["level"] in LEVELS, line
            assert SNAKE.match(rec["event"]), line
            assert rec["daemon"] == name, line
            assert rec["pid"] in pids[name], line
            events.add(rec["event"])
        assert {"started", "stopping", "stopped"} <= events, (name, events)
        assert all(r.get("reason") for r in live.events(name, "stopping")), name


def test_stop_leaves_no_process_no_segment_no_port(live: Stack) -> None:
    sup = live.pid
    pids = list(live.pids().values())
    assert sup is not None and {sup, *pids} <= set(stack_processes(live))
    live.stop()
    assert stack_processes(live) == []
    r = subprocess.run(["pgrep", "-f", str(live.conf)], capture_output=True, text=True)
    assert r.stdout.strip() == ""
    assert not os.path.exists(f"/dev/shm/{live.segment}")
    assert not live.run.exists()
    g, om = live.cfg.gateway, live.cfg.ordermanager
    for port in (g.price_port, g.news_port, om.port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- an outside program that knows only the contract -----------------------------------------------
# Slow feeds, so both streams fall silent long enough for heartbeats.


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start(Stack(tmp_path_factory.mktemp("outside"), {"gateway": {"price_rate": 3, "news_rate": 2}}))
    try:
        yield s
    finally:
        s.stop()


class Wire:
    """A contract peer from the standard library alone: length-prefixed JSON frames."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        (n,) = struct.unpack(">I", self._take(4, deadline))
        assert 1 <= n <= 65536
        obj = json.loads(self._take(n, deadline).decode("utf-8"))
        assert isinstance(obj, dict) and "type" in obj, obj
        return obj

    def send(self, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def close(self) -> None:
        self.sock.close()


HEADER = struct.Struct("<8sIIIIIIQQQQ")
RECORD = struct.Struct("<QdQQQQ")


def read_book(name: str) -> dict[str, Any]:
    """The whole book by contract §5: mmap, struct, and the seqlock read protocol."""
    path = f"/dev/shm/{name}"
    fd = os.open(path, os.O_RDONLY)
    assert os.fstat(fd).st_mode & 0o777 == 0o600
    try:
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        (magic, version, capacity, nsymbols, record_size, symbols_offset, records_offset,
         created_ns, writer_pid, heartbeat_ns, generation) = HEADER.unpack_from(mm, 0)
        assert magic == b"TSTKBOOK" and version == 1 and record_size == 64 and symbols_offset == 128
        assert records_offset % 64 == 0 and nsymbols <= capacity
        assert records_offset >= 128 + 16 * capacity and len(mm) >= records_offset + 64 * capacity
        symbols = [mm[128 + 16 * i : 128 + 16 * (i + 1)].rstrip(b"\0").decode("ascii") for i in range(nsymbols)]
        records: dict[str, tuple[float, int, int, int, int] | None] = {}
        for i, sym in enumerate(symbols):
            off = records_offset + 64 * i
            records[sym] = None  # unavailable, unless a consistent copy is had
            for _ in range(1000):
                (s1,) = struct.unpack_from("<Q", mm, off)
                if s1 & 1:
                    continue
                _, price, ts_ns, recv_ns, tick_seq, updates = RECORD.unpack_from(mm, off)
                (s2,) = struct.unpack_from("<Q", mm, off)
                if s1 == s2:
                    records[sym] = (price, ts_ns, recv_ns, tick_seq, updates) if s1 else None
                    break
        return {"symbols": symbols, "created_ns": created_ns, "writer_pid": writer_pid,
                "heartbeat_ns": heartbeat_ns, "generation": generation, "records": records}
    finally:
        mm.close()


def test_outside_program_reads_the_book_with_mmap_and_struct(quiet: Stack) -> None:
    syms = list(quiet.cfg.symbols)
    book = quiet.wait_for(lambda: (b := read_book(quiet.segment)) and all(b["records"].values()) and b, timeout=30)
    assert book["symbols"] == syms
    assert book["writer_pid"] == quiet.pids()["orderbook"]
    assert book["generation"] >= 1 and 0 < book["created_ns"] <= time.time_ns()
    quiet.wait_for(lambda: (time.time_ns() - read_book(quiet.segment)["heartbeat_ns"]) / 1e6
                   < quiet.cfg.book.stale_ms, timeout=30)
    for sym, (price, ts_ns, recv_ns, tick_seq, updates) in book["records"].items():
        assert price > 0 and tick_seq >= 1 and updates >= 1, sym
        assert 0 < ts_ns <= recv_ns, sym

    # What the book holds is what the gateway sent: match records to frames by tick seq.
    w = Wire(quiet.cfg.gateway.host, quiet.cfg.gateway.price_port)
    try:
        hello = w.recv()
        sent: dict[int, tuple[str, float]] = {}
        matched: set[str] = set()
        deadline = time.monotonic() + 30
        while matched != set(syms) and time.monotonic() < deadline:
            m = w.recv()
            if m["type"] == "price":
                sent[m["seq"]] = (m["symbol"], m["price"])
            if m["type"] != "price" or m.get("snapshot") or m["seq"] < hello["next_seq"] + len(syms):
                continue
            for sym, rec in read_book(quiet.segment)["records"].items():
                assert rec is not None
                if rec[3] in sent:
                    assert sent[rec[3]] == (sym, rec[0]), (sym, rec)
                    matched.add(sym)
        assert matched == set(syms)
    finally:
        w.close()


def test_outside_program_subscribes_to_the_price_stream(quiet: Stack) -> None:
    g = quiet.cfg.gateway
    quiet.wait_for(lambda: all(read_book(quiet.segment)["records"].values()), timeout=30)
    w = Wire(g.host, g.price_port)
    try:
        hello = w.recv()
        assert hello["type"] == "hello" and hello["proto"] == 1 and hello["stream"] == "price"
        assert isinstance(hello["session"], str) and hello["session"]
        assert hello["symbols"] == list(quiet.cfg.symbols) and hello["heartbeat_ms"] > 0
        nxt = hello["next_seq"]
        assert nxt > 1
        snapshot: list[dict[str, Any]] = []
        live_seqs: list[int] = []
        beats: list[dict[str, Any]] = []
        while len(live_seqs) < 4 or len(beats) < 2:
            m = w.recv()
            if m["type"] == "price" and m.get("snapshot"):
                assert not live_seqs, "a snapshot frame after live frames"
                snapshot.append(m)
            elif m["type"] == "price":
                assert m["seq"] == nxt + len(live_seqs), (m, nxt, live_seqs)
                assert m["symbol"] in hello["symbols"] and m["price"] > 0 and m["ts_ns"] > 0
                live_seqs.append(m["seq"])
            else:
                assert m["type"] == "heartbeat", m
                assert m["seq"] == (live_seqs[-1] if live_seqs else nxt - 1), (m, live_seqs)
                assert m["ts_ns"] > 0
                beats.append(m)
        assert sorted(s["symbol"] for s in snapshot) == sorted(hello["symbols"])
        for s in snapshot:
            assert s["snapshot"] is True and 1 <= s["seq"] < nxt and s["price"] > 0
    finally:
        w.close()


def test_outside_program_subscribes_to_the_news_stream(quiet: Stack) -> None:
    g = quiet.cfg.gateway
    w = Wire(g.host, g.news_port)
    try:
        hello = w.recv()
        assert hello["type"] == "hello" and hello["proto"] == 1 and hello["stream"] == "news"
        assert hello["symbols"] == list(quiet.cfg.symbols) and hello["heartbeat_ms"] > 0
        nxt = hello["next_seq"]
        live_seqs: list[int] = []
        beats = 0
        while len(live_seqs) < 3 or beats < 2:
            m = w.recv()
            if m["type"] == "news":
                assert m["seq"] == nxt + len(live_seqs), (m, nxt, live_seqs)
                assert m["symbol"] in hello["symbols"] and m["ts_ns"] > 0
                assert isinstance(m["sentiment"], int) and 0 <= m["sentiment"] <= 100
                live_seqs.append(m["seq"])
            else:
                assert m["type"] == "heartbeat", m
                assert m["seq"] == (live_seqs[-1] if live_seqs else nxt - 1), (m, live_seqs)
                beats += 1
    finally:
        w.close()


def test_outside_program_enters_orders(quiet: Stack) -> None:
    om = quiet.cfg.ordermanager
    token = quiet.cfg.resolve(om.token_file).read_text().strip()
    w = Wire(om.host, om.port)
    try:
        w.send({"type": "logon", "proto": 1, "client_id": "outsider", "token": token})
        ack = w.recv()
        assert ack["type"] == "logon_ack", ack
        assert ack["positions"] == {} and ack["last_order_id"] is None
        assert isinstance(ack["session"], str) and ack["heartbeat_ms"] > 0
        now = time.time_ns()
        order = {"type": "order", "order_id": "o-1", "symbol": "GOOGL", "side": "BUY", "qty": 4, "price": 140.25,
                 "ts_ns": now, "tick_ts_ns": now}
        w.send(order)
        m = w.recv()
        while m["type"] == "heartbeat":
            m = w.recv()
        assert m == {"type": "ack", "order_id": "o-1", "order_no": m["order_no"], "duplicate": False}
        assert isinstance(m["order_no"], int) and m["order_no"] >= 1
        w.send({"type": "heartbeat", "ts_ns": time.time_ns()})
    finally:
        w.close()
    entry = [e for e in quiet.journal() if e["client_id"] == "outsider"]
    assert len(entry) == 1
    e = entry[0]
    assert (e["order_no"], e["order_id"], e["symbol"], e["side"], e["qty"], e["price"], e["ts_ns"],
            e["tick_ts_ns"]) == (m["order_no"], "o-1", "GOOGL", "BUY", 4, 140.25, now, now)
    assert e["recv_ns"] >= now
