"""The audit command (shared/ops/audit.py): its figures on synthetic log lines, following files
across rotation, and the command itself on a private stack."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.execstate import decode_line
from shared.ops import audit
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.protocol import Ack
from shared.tail import Tail


def ps(t: float, process: str, from_state: str, to_state: str, expected: bool | None = None) -> dict[str, Any]:
    """A process_state record at ``t`` seconds past 12:00:00 UTC."""
    whole, frac = divmod(t, 1)
    ts = f"2026-01-02T12:{int(whole) // 60:02d}:{int(whole) % 60:02d}.{round(frac * 1e6):06d}Z"
    return {"ts": ts, "event": "process_state", "process": process, "from_state": from_state, "to_state": to_state,
            "expected": expected, "pid": 100}


START = [ps(0, "gw", "STOPPED", "STARTING"), ps(1, "gw", "STARTING", "RUNNING")]

# name, audit records, expected figures for process "gw"
PROCESS_CASES = [
    ("first_start_is_not_downtime", START,
     {"starts": 1, "recoveries": 0, "downtime_s": 0.0, "mttr_s": None, "unexpected_exits": 0, "down_since": None}),
    ("kill9_and_restart", [*START, ps(10, "gw", "RUNNING", "EXITED", False), ps(10.25, "gw", "EXITED", "STARTING"),
                           ps(11.5, "gw", "STARTING", "RUNNING")],
     {"starts": 2, "recoveries": 1, "downtime_s": 1.5, "mttr_s": 1.5, "unexpected_exits": 1}),
    ("two_outages_average", [*START, ps(10, "gw", "RUNNING", "EXITED", False), ps(11, "gw", "STARTING", "RUNNING"),
                             ps(20, "gw", "RUNNING", "EXITED", False), ps(23, "gw", "STARTING", "RUNNING")],
     {"starts": 3, "recoveries": 2, "downtime_s": 4.0, "mttr_s": 2.0, "unexpected_exits": 2}),
    ("crash_loop_to_fatal_then_started_by_hand",
     [*START, ps(10, "gw", "RUNNING", "EXITED", False), ps(10, "gw", "EXITED", "STARTING"),
      ps(10.5, "gw", "STARTING", "BACKOFF"), ps(11, "gw", "BACKOFF", "STARTING"), ps(11.5, "gw", "STARTING", "BACKOFF"),
      ps(12, "gw", "BACKOFF", "FATAL"), ps(70, "gw", "FATAL", "STARTING"), ps(71, "gw", "STARTING", "RUNNING")],
     {"starts": 2, "recoveries": 1, "downtime_s": 61.0, "backoffs": 2, "fatals": 1, "unexpected_exits": 1}),
    ("stop_then_start_is_downtime_but_expected",
     [*START, ps(10, "gw", "RUNNING", "STOPPING"), ps(10.5, "gw", "STOPPING", "STOPPED"),
      ps(20, "gw", "STOPPED", "STARTING"), ps(21, "gw", "STARTING", "RUNNING")],
     {"starts": 2, "recoveries": 1, "downtime_s": 11.0, "unexpected_exits": 0}),
    ("expected_exit_is_not_unexpected", [*START, ps(5, "gw", "RUNNING", "EXITED", True)],
     {"unexpected_exits": 0, "recoveries": 0, "downtime_s": 0.0, "state": "EXITED",
      "down_since": "2026-01-02T12:00:05Z"}),
    ("still_down_at_the_end_is_not_counted", [*START, ps(5, "gw", "RUNNING", "EXITED", False),
                                              ps(5, "gw", "EXITED", "BACKOFF")],
     {"recoveries": 0, "downtime_s": 0.0, "mttr_s": None, "state": "BACKOFF", "down_since": "2026-01-02T12:00:05Z"}),
    ("other_processes_do_not_mix",
     [*START, ps(2, "sx", "STOPPED", "RUNNING"), ps(10, "gw", "RUNNING", "EXITED", False),
      ps(11, "sx", "RUNNING", "EXITED", False), ps(12, "gw", "STARTING", "RUNNING"),
      ps(40, "sx", "STARTING", "RUNNING")],
     {"recoveries": 1, "downtime_s": 2.0}),
    ("other_events_ignored", [*START, {"ts": "2026-01-02T12:00:03Z", "event": "started", "process": "gw"}],
     {"starts": 1}),
]


@pytest.mark.parametrize("records,want", [c[1:] for c in PROCESS_CASES], ids=[c[0] for c in PROCESS_CASES])
def test_process_stats(records: list[dict[str, Any]], want: dict[str, Any]) -> None:
    """Starts, exits, FATALs, downtime (leaving RUNNING to the next RUNNING) and MTTR per process."""
    got = audit.process_stats(records)["gw"]
    assert {k: got[k] for k in want} == want


def test_parse_ts_takes_z_and_offsets() -> None:
    assert audit.parse_ts("2026-01-02T12:00:01.5Z") == audit.parse_ts("2026-01-02T13:00:01.500000+01:00")
    assert audit.parse_ts("2026-01-02T12:00:01Z") - audit.parse_ts("2026-01-02T12:00:00.25Z") == 0.75


@pytest.mark.parametrize("values,want", [
    ([5.0], {"count": 1, "p50": 5.0, "p99": 5.0, "p99.9": 5.0, "max": 5.0}),
    ([2.0, 1.0], {"count": 2, "p50": 1.0, "p99": 2.0, "p99.9": 2.0, "max": 2.0}),
    ([float(i) for i in range(100, 0, -1)], {"count": 100, "p50": 50.0, "p99": 99.0, "p99.9": 100.0, "max": 100.0}),
    ([float(i) for i in range(1, 2001)], {"count": 2000, "p50": 1000.0, "p99": 1980.0, "p99.9": 1998.0, "max": 2000.0}),
    ([], None),
])
def test_spread_nearest_rank(values: list[float], want: dict[str, float] | None) -> None:
    """Percentiles by nearest rank, on unsorted input."""
    assert audit.spread(values) == want


def rec(event: str, **fields: Any) -> dict[str, Any]:
    return {"ts": "2026-01-02T12:00:00Z", "level": "info", "event": event, **fields}


def test_reconnect_stats_per_program_and_peer() -> None:
    logs = {
        "strategy": [rec("reconnected", peer="h:1", stream="news", attempts=1, down_ms=100.0),
                     rec("reconnected", peer="h:1", stream="news", attempts=3, down_ms=300.0),
                     rec("reconnected", peer="h:2", stream="orders", attempts=1, down_ms=7.5),
                     rec("disconnected", peer="h:1", stream="news", reason="eof")],
        "orderbook": [rec("reconnected", peer="h:0", stream="price", attempts=2, down_ms=42.0)],
        "gateway": [rec("connected", peer="h:9", stream="price")],
    }
    got = audit.reconnect_stats(logs)
    assert set(got) == {"strategy", "orderbook"}
    news = got["strategy"]["h:1"]
    assert (news["stream"], news["count"], news["total_ms"]) == ("news", 2, 400.0)
    assert (news["down_ms"]["p50"], news["down_ms"]["max"]) == (100.0, 300.0)
    assert got["strategy"]["h:2"]["count"] == 1 and got["orderbook"]["h:0"]["total_ms"] == 42.0


@pytest.mark.parametrize("reason,kind", [
    ("frame length 70000 outside 1..65536", "frame length N outside N..N"),
    ("frame length 0 outside 1..65536", "frame length N outside N..N"),
    ("Expected `int`, got `str` - at `$.qty`", "Expected `int`, got `str`"),
    ("not JSON: JSON is malformed: invalid character (byte 3)", "not JSON"),
    ("Object missing required field `order_id`", "Object missing required field `order_id`"),
])
def test_bad_frame_kind(reason: str, kind: str) -> None:
    assert audit.bad_frame_kind(reason) == kind


def test_frame_stats_counts_bad_frames_and_rejects_by_reason() -> None:
    logs = {"ordermanager": [rec("bad_frame", reason="frame length 0 outside 1..65536"),
                             rec("bad_frame", reason="frame length 99999 outside 1..65536"),
                             rec("bad_frame", reason="not JSON: truncated"),
                             rec("order_rejected", reason="bad_message"), rec("order_rejected", reason="bad_message"),
                             rec("order_rejected", reason="risk"), rec("order_received")],
            "strategy": [rec("bad_frame", reason="not JSON: x")], "gateway": []}
    bad, rejects = audit.frame_stats(logs)
    assert bad == {"ordermanager": {"frame length N outside N..N": 2, "not JSON": 1}, "strategy": {"not JSON": 1}}
    assert rejects == {"ordermanager": {"bad_message": 2, "risk": 1}}


def entry(no: int, oid: str, t2t_us: int, client: str = "c") -> dict[str, Any]:
    return {"order_no": no, "order_id": oid, "client_id": client, "symbol": "AAPL", "side": "BUY", "qty": 1,
            "price": 1.0, "ts_ns": 10, "tick_ts_ns": 1_000_000, "recv_ns": 1_000_000 + t2t_us * 1000}


def test_order_stats() -> None:
    journal = [entry(1, "a", 100), entry(2, "b", 300), entry(3, "a", 200), entry(4, "a", 50, client="other")]
    logs = {"ordermanager": [rec("order_received")] * 4 + [rec("order_duplicate")] * 2, "strategy": []}
    got = audit.order_stats(journal, logs)
    assert (got["journal"], got["received"], got["duplicate_acks"], got["journal_duplicates"]) == (4, 4, 2, 1)
    assert got["tick_to_trade_us"] == {"count": 4, "p50": 100.0, "p99": 300.0, "p99.9": 300.0, "max": 300.0}
    assert audit.order_stats([], {})["tick_to_trade_us"] is None


def test_summarize_and_render_name_every_program() -> None:
    logs = {"gateway": [rec("started"), {**rec("bind_failed"), "level": "error"}], "strategy": []}
    s = audit.summarize(logs, START, [entry(1, "a", 100)])
    assert set(s["programs"]) == {"gateway", "strategy", "gw"}
    assert s["programs"]["gateway"]["errors"] == 1 and s["programs"]["gw"]["starts"] == 1
    text = audit.render(s)
    assert re.search(r"^gw +1 +0 +0 +0 +0 +0 +- +RUNNING", text, re.M), text
    assert "tick-to-trade us  p50 100" in text
    json.dumps(s)  # a plain JSON document


def test_summarize_json_keeps_its_keys_and_adds_open_orders_and_fills() -> None:
    """Contract §8's keys stay; §9 adds ``clients[<cid>].open_orders`` and per symbol ``open_buy`` and
    ``open_sell``; ``orders`` counts execs and fills; ``open_orders`` and ``fills`` list them."""
    journal = [entry(1, "a", 100), entry(2, "b", 100), entry(3, "z", 100, client="other")]
    lines = [decode_line(orjson.dumps({"type": "exec", "order_id": oid, "exec_id": i, "status": st, "last_qty": q,
                                       "last_px": px, "cum_qty": q, "leaves_qty": left, "avg_px": px, "ts_ns": 5,
                                       "symbol": "AAPL", "side": "BUY", "client_id": "c", "order_no": no}))
             for i, (oid, no, st, q, px, left) in enumerate([("a", 1, "new", 0, None, 1), ("a", 1, "filled", 1, 1.5, 0),
                                                             ("b", 2, "new", 0, None, 1)], 1)]
    s = audit.summarize({}, [], journal, {"AAPL": 2.0}, execs=lines)
    assert {"programs", "reconnects", "bad_frames", "rejects", "orders", "clients", "halts"} <= set(s)
    c = s["clients"]["c"]
    assert {"realized", "unrealized", "total", "symbols", "open_orders"} <= set(c) and c["open_orders"] == 1
    assert c["symbols"]["AAPL"] == {"position": 1, "avg_price": 1.5, "realized": 0.0, "unrealized": 0.5,
                                    "total": 0.5, "mark": 2.0, "open_buy": 1, "open_sell": 0}
    assert s["clients"]["other"]["open_orders"] == 1  # accepted, no exec yet: open, to be routed
    assert (s["orders"]["execs"], s["orders"]["fills"], s["orders"]["exec_duplicates"]) == (3, 1, 0)
    assert [o["order_id"] for o in s["open_orders"]] == ["b", "z"] and s["fills"][0]["bought"] == 1
    json.dumps(s)


@pytest.mark.parametrize("source,record,want", [
    ("ordermanager", rec("order_filled", order_id="s-1", client_id="s", exec_id=3, last_qty=4, last_px=99.5,
                         cum_qty=4, status="partially_filled"),
     "12:00:00.000 ordermanager: partially_filled s s-1: 4 @ 99.5 (cum 4)"),
    ("ordermanager", rec("order_received", msg="Received Order 12: BUY 10 AAPL @ 173.20", order_no=12),
     "12:00:00.000 ordermanager: Received Order 12: BUY 10 AAPL @ 173.20"),
    ("strategy", rec("reconnected", peer="h:1", stream="news", attempts=2, down_ms=12.5),
     "12:00:00.000 strategy: reconnected to h:1 (news) after 12.5 ms, 2 attempt(s)"),
    ("orderbook", {**rec("disconnected", peer="h:0", stream="price", reason="heartbeat_timeout"), "level": "warning"},
     "12:00:00.000 orderbook: disconnected h:0 (price): heartbeat_timeout"),
    ("audit", ps(0, "gateway", "RUNNING", "EXITED", False),
     "12:00:00.000 gateway: RUNNING -> EXITED (not expected) pid 100"),
    ("gateway", {**rec("bind_failed", port=1, daemon="gateway", pid=3), "level": "error"},
     "12:00:00.000 gateway ERROR bind_failed port=1"),
    ("gateway", rec("listening", port=1), None),
])
def test_human_view(source: str, record: dict[str, Any], want: str | None) -> None:
    assert audit.human(source, record) == want


def test_human_view_passes_plain_text_through() -> None:
    assert audit.human("gateway stderr", None, "Traceback (most recent call last):\n") == \
        "gateway stderr: Traceback (most recent call last):"
    assert audit.human("gateway stderr", None, "  \n") is None


def test_parse_line_skips_what_is_not_an_object() -> None:
    assert audit.parse_line(b'{"a": 1}\n') == {"a": 1}
    for line in (b"", b"[1]", b'{"a":', b"2026-01-01 INFO supervisord started", b"\xff"):
        assert audit.parse_line(line) is None


def test_reads_rotated_files_oldest_first(tmp_path: Path) -> None:
    for name, n in (("gateway.log.2", 1), ("gateway.log.1", 2), ("gateway.log", 3), ("gateway.log.bak", 9)):
        (tmp_path / name).write_text(json.dumps(rec("x", n=n)) + "\nnot json\n")
    (tmp_path / "strategy.log.1").write_text(json.dumps(rec("x", n=4)) + "\n")
    (tmp_path / "supervisord.log").write_text("2026 INFO x\n")
    (tmp_path / "audit.log").write_text(json.dumps(START[0]) + "\n")
    (tmp_path / "orders.jsonl").write_text(json.dumps(entry(1, "a", 5)) + "\n")
    logs, records, journal = audit.load(tmp_path)
    assert {k: [r["n"] for r in v] for k, v in logs.items()} == {"gateway": [1, 2, 3], "strategy": [4]}
    assert records == [START[0]] and len(journal) == 1


def test_tail_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    """New whole lines only; after a rename-and-recreate rotation, the rest of the old file and
    then the new one; after truncation, from the start."""
    p = tmp_path / "x.log"
    p.write_bytes(b"old\n")
    t = Tail(p, "end")
    try:
        assert t.read() == []
        with open(p, "ab") as f:
            f.write(b"a\nb")
        assert t.read() == [b"a"]
        with open(p, "ab") as f:
            f.write(b"c\nd\n")
        assert t.read() == [b"bc", b"d"]
        with open(p, "ab") as f:
            f.write(b"last of old\n")
        os.rename(p, tmp_path / "x.log.1")
        assert t.read() == [b"last of old"]  # the new file is not there yet
        p.write_bytes(b"first of new\n")
        assert t.read() == [b"first of new"]
        p.write_bytes(b"z\n")  # truncated in place, shorter than before
        assert t.read() == [b"z"]
    finally:
        t.close()


def test_follow_writes_the_human_view_of_every_log(tmp_path: Path) -> None:
    """Lines already there are skipped; new lines in any log, and files that appear later, are shown."""
    (tmp_path / "ordermanager.log").write_text(json.dumps(rec("order_received", msg="Received Order 1: old")) + "\n")
    out: list[str] = []
    turns = 0

    def stop() -> bool:
        nonlocal turns
        turns += 1
        if turns == 2:  # after the first look at the files
            with open(tmp_path / "ordermanager.log", "a") as f:
                f.write(json.dumps(rec("order_received", msg="Received Order 2: BUY 1 AAPL @ 1.00")) + "\n")
            (tmp_path / "audit.log").write_text(json.dumps(ps(0, "gateway", "STARTING", "RUNNING")) + "\n")
        return len(out) >= 2 or turns > 200

    audit.follow(tmp_path, out.append, stop, interval=0.01)
    assert sorted(out) == ["12:00:00.000 gateway: STARTING -> RUNNING pid 100",
                           "12:00:00.000 ordermanager: Received Order 2: BUY 1 AAPL @ 1.00"]


# --- the command on a private stack ---------------------------------------------


def run_audit(*args: str) -> str:
    """The audit command's output, run as a person runs it."""
    return subprocess.run([sys.executable, "-m", "shared.ops.audit", *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout


class Follower:
    """``stack-audit --follow`` in a subprocess, its lines collected by a thread."""

    def __init__(self, logs: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "shared.ops.audit", "--logs", str(logs), "--follow"],
                                     stdout=subprocess.PIPE, text=True)
        self.queue: queue.Queue[str] = queue.Queue()
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self.queue.put(line.rstrip("\n"))

    def take(self, wait: float) -> list[str]:
        """Every line printed so far, waiting up to ``wait`` s for one more."""
        try:
            while True:
                self.lines.append(self.queue.get(timeout=wait))
        except queue.Empty:
            return self.lines

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_audit_command_on_a_stack_after_a_restart(make_stack: Callable[..., Stack]) -> None:
    """After ``supervisorctl restart gateway``, ``--json`` and the report show the gateway started
    twice with one recovery, and the orderbook and strategy reconnected to it; ``--follow``, running
    all along, showed the state changes, the reconnects, and "Received Order N: BUY 10 AAPL @ 173.20"
    for an order sent afterwards."""
    stack = make_stack({"gateway": {"price_rate": 20.0}, "strategy": {"bullish": 100, "bearish": 0}})
    price = f"127.0.0.1:{stack.cfg.gateway.price_port}"
    news = f"127.0.0.1:{stack.cfg.gateway.news_port}"
    stack.wait_for(lambda: stack.events("orderbook", "connected") and stack.events("strategy", "connected")
                   and stack.events("ordermanager", "listening"), timeout=30)
    follower = Follower(stack.logs)
    try:
        # It starts at the end of each file: see it show a fresh line before going on.
        deadline = time.monotonic() + 30
        while not any(" ordermanager: disconnected " in s for s in follower.take(0.5)):
            assert time.monotonic() < deadline, follower.lines
            socket.create_connection(("127.0.0.1", stack.cfg.ordermanager.port), timeout=10).close()
        stack.ctl("restart", "gateway", check=True)
        stack.wait_for(lambda: [r for r in stack.events("orderbook", "reconnected") if r["peer"] == price]
                       and [r for r in stack.events("strategy", "reconnected") if r["peer"] == news], timeout=30)
        stack.wait_for(lambda: sum(r["process"] == "gateway" and r["to_state"] == "RUNNING"
                                   for r in stack.audit()) >= 2)

        doc = json.loads(run_audit("--logs", str(stack.logs), "--json"))
        gw = doc["programs"]["gateway"]
        assert gw["starts"] == 2 and gw["recoveries"] == 1 and gw["unexpected_exits"] == 0
        assert gw["downtime_s"] > 0 and gw["mttr_s"] == gw["downtime_s"]
        assert doc["programs"]["ordermanager"]["starts"] == 1
        assert doc["reconnects"]["orderbook"][price]["count"] >= 1
        assert doc["reconnects"]["orderbook"][price]["down_ms"]["max"] > 0
        assert doc["reconnects"]["strategy"][news]["stream"] == "news"

        text = run_audit("--logs", str(stack.logs))
        assert re.search(r"^gateway +2 +0 +0 +0 ", text, re.M), text
        assert re.search(rf"^orderbook +{re.escape(price)} +price +\d+ ", text, re.M), text

        with OrderClient("127.0.0.1", stack.cfg.ordermanager.port) as c:
            c.logon("follower", stack.token)
            c.order("f-1", "AAPL", "BUY", 10, 173.2)
            assert isinstance(c.recv_type(Ack, timeout=10), Ack)
        deadline = time.monotonic() + 15
        while not any("Received Order" in s for s in follower.take(0.5)) and time.monotonic() < deadline:
            pass
        lines = follower.lines
        assert [s for s in lines if re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ordermanager: Received Order 1: "
                                                 r"BUY 10 AAPL @ 173\.20", s)], lines
        assert [s for s in lines if re.search(r" gateway: STOPPING -> STOPPED", s)], lines
        assert [s for s in lines if re.search(rf" orderbook: reconnected to {re.escape(price)} \(price\)", s)], lines
    finally:
        follower.close()
    assert [e["order_id"] for e in stack.journal()] == ["f-1"]
