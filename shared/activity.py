"""What the stack did, from its logs, its journal and its exec journal, read incrementally.

Order flow (orders/s, rejects by reason, tick-to-trade over the last
minute), fills (fills/s, order-to-fill latency, fill ratio), per client
positions and P&L from fills (``shared.pnl``), open orders, pending and
halted clients, restarts from the audit log, and the notable records
(reconnects, gaps, faults, warnings, errors, orders received) for a human
view. Counters count what happened while watching; the backlog read at start
(``backlog`` bytes of each log) feeds the recent events and pending orders
only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared import config, halt, pnl
from shared.execjournal import SUFFIX as EXECS_SUFFIX
from shared.journal import closed_segments
from shared.protocol import TERMINAL
from shared.tail import Tail

WINDOW_S = 60.0  # tick-to-trade and rejects "over the last minute"
RATE_S = 10.0  # orders/s is the count over this many seconds
EVENTS = 300  # notable records kept
NOTABLE = {"order_received", "order_rejected", "reconnected", "disconnected", "gap_detected", "fault_injected",
           "fault_cleared", "client_halted", "client_resumed", "book_stale", "book_fresh", "segment_created",
           "segment_repaired", "process_state", "started", "crashed"}
AUDIT, FAULTS = "audit", "faults"


def parse(line: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, or None."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def epoch(ts: Any) -> float:
    """An ISO 8601 ``ts`` as epoch seconds (0 when it is not one)."""
    try:
        t = dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return 0.0
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


@dataclass
class Client:
    """One client_id: its orders from the journal, its positions, P&L and open orders from the
    exec journal (contract §9: from fills), pending orders from its strategy's log."""

    client_id: str
    positions: dict[str, pnl.Position] = field(default_factory=dict)
    orders: int = 0  # accepted (journaled)
    last: dict[str, Any] | None = None  # its last journal entry
    pending: set[str] = field(default_factory=set)  # order_ids sent and neither acked nor refused
    program: str = ""
    fills: int = 0  # execs with a fill
    filled_qty: int = 0
    open: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # order_id -> (symbol, side, leaves)
    qty: dict[str, int] = field(default_factory=dict)  # order_id -> its quantity, while open
    ended_qty: int = 0  # quantity of its ended orders
    ended_filled: int = 0  # of which filled
    last_fill: dict[str, Any] | None = None  # its last exec with a fill

    def accepted(self, e: dict[str, Any]) -> None:
        """An order of the journal."""
        self.orders += 1
        self.last = e
        self.pending.discard(e["order_id"])

    def execution(self, x: dict[str, Any]) -> None:
        """An exec of the exec journal: a fill moves the position; the order stays open until it ends."""
        oid, qty = x["order_id"], x["last_qty"]
        if qty:
            pos = self.positions.get(x["symbol"])
            if pos is None:
                pos = self.positions[x["symbol"]] = pnl.Position()
            pos.fill(qty if x["side"] == "BUY" else -qty, float(x["last_px"]))
            self.fills += 1
            self.filled_qty += qty
            self.last_fill = x
        size = self.qty.setdefault(oid, x["cum_qty"] + x["leaves_qty"])  # its first exec ("new") has it all
        if x["status"] in TERMINAL:
            self.open.pop(oid, None)
            self.qty.pop(oid, None)
            self.ended_qty += size
            self.ended_filled += x["cum_qty"]
        else:
            self.open[oid] = (x["symbol"], x["side"], x["leaves_qty"])

    def fill_ratio(self) -> float | None:
        """Shares filled over shares ordered, of its ended orders (None before one ends)."""
        return self.ended_filled / self.ended_qty if self.ended_qty else None

    def open_qty(self, symbol: str, side: str) -> int:
        """Leaves quantity of its open orders in ``symbol`` on ``side``."""
        return sum(q for s, d, q in self.open.values() if s == symbol and d == side)

    def pnl(self, marks: dict[str, float]) -> tuple[float, float | None]:
        """(realized, unrealized); unrealized is None when a held symbol has no mark."""
        realized = sum(p.realized for p in self.positions.values())
        unreal: float | None = 0.0
        for sym, p in self.positions.items():
            u = p.unrealized(marks.get(sym))
            unreal = None if u is None or unreal is None else unreal + u
        return realized, unreal


class Activity:
    """Follows every log and the journal; ``poll()`` takes in what is new."""

    def __init__(self, cfg: config.Config, backlog: int = 0) -> None:
        self.cfg, self.backlog = cfg, backlog
        self.journal = cfg.resolve(cfg.ordermanager.journal)
        self.tails: dict[str, Tail] = {}
        self.events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=EVENTS)
        self.clients: dict[str, Client] = {}
        self.strategy_ids = {"strategy": cfg.strategy.client_id}
        self.rejects: Counter[tuple[str, str]] = Counter()  # (client_id, reason)
        self.recent_rejects: deque[tuple[float, str]] = deque()
        self.reconnects: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()
        self.levels: Counter[tuple[str, str]] = Counter()  # (program, level) of warnings and errors
        self.faults: Counter[str] = Counter()
        self.t2t: deque[tuple[float, float]] = deque()  # (recv epoch s, tick-to-trade µs), last WINDOW_S
        self.new_t2t: list[float] = []  # µs, since the last poll
        self.running: dict[str, list[float]] = {}  # process -> epochs it reached RUNNING (audit log)
        self.left: dict[str, tuple[float, str, Any]] = {}  # process -> (when, state, expected) it left RUNNING
        self.exits: dict[str, tuple[float, str, Any]] = {}  # process -> (when, state, expected) of its last exit
        self.halted: frozenset[str] = frozenset()
        self.marks: dict[str, float] = {}
        self.accepted_ns: dict[tuple[str, str], int] = {}  # (client_id, order_id) -> journal recv_ns, till it ends
        self.fill_lat: deque[tuple[float, float]] = deque()  # (recv epoch s, order-to-fill µs), last WINDOW_S
        self.new_fill_lat: list[float] = []  # µs, since the last poll
        self.exec_id = 0  # the highest exec_id taken in
        self.first = True
        self._journal_tail = self._load_journal()
        self._execs_tail = self._load_execs()
        self.follow({}, cfg.resolve(cfg.auditor.log).parent)

    # --- sources ----------------------------------------------------------------

    def _load_journal(self) -> Tail:
        for _, p in closed_segments(self.journal):
            self._entries(Tail(p, "start"), history=True)
        tail = Tail(self.journal, "start")
        self._entries(tail, history=True)
        return tail

    def _load_execs(self) -> Tail:
        path = str(self.journal) + EXECS_SUFFIX
        for _, p in closed_segments(path):
            self._execs(Tail(p, "start"), history=True)
        tail = Tail(path, "start")
        self._execs(tail, history=True)
        return tail

    def follow(self, logs: dict[str, Path], logs_dir: Path) -> None:
        """Follow these program logs, the audit log and the fault log (new ones from their start)."""
        want = {**{n: Path(p) for n, p in logs.items()}, AUDIT: self.cfg.resolve(self.cfg.auditor.log),
                FAULTS: logs_dir / "faults.log"}
        for name, path in want.items():
            old = self.tails.get(name)
            if old is not None and old.path == str(path):
                continue
            if old is not None:
                old.close()
            start: str | int = "start" if name == AUDIT else (self.backlog or "end") if self.first else 1 << 16
            self.tails[name] = Tail(path, start)

    # --- taking records in ------------------------------------------------------

    def _entries(self, tail: Tail, history: bool = False) -> None:
        now = time.time()
        for line in tail.read():
            e = parse(line)
            if e is None or not _entry_ok(e):
                continue
            c = self._client(e["client_id"])
            c.accepted(e)
            self.accepted_ns[e["client_id"], e["order_id"]] = e["recv_ns"]
            recv = e["recv_ns"] / 1e9
            if now - recv < WINDOW_S:
                us = (e["recv_ns"] - e["tick_ts_ns"]) / 1000
                self.t2t.append((recv, us))
                if not history:
                    self.new_t2t.append(us)

    def _execs(self, tail: Tail, history: bool = False) -> None:
        now = time.time()
        for line in tail.read():
            x = parse(line)
            if x is None or not _exec_ok(x) or x["exec_id"] <= self.exec_id:
                continue
            self.exec_id = x["exec_id"]
            cid, oid = x["client_id"], x["order_id"]
            self._client(cid).execution(x)
            sent = self.accepted_ns.get((cid, oid))
            if x["last_qty"] and sent is not None:
                recv = x["recv_ns"] / 1e9
                us = (x["recv_ns"] - sent) / 1000
                if now - recv < WINDOW_S:
                    self.fill_lat.append((recv, us))
                if not history:
                    self.new_fill_lat.append(us)
            if x["status"] in TERMINAL:
                self.accepted_ns.pop((cid, oid), None)

    def _client(self, cid: str) -> Client:
        c = self.clients.get(cid)
        if c is None:
            c = self.clients[cid] = Client(cid)
            c.program = next((p for p, i in self.strategy_ids.items() if i == cid), "")
        return c

    def _record(self, source: str, r: dict[str, Any], history: bool) -> None:
        ev, level = r.get("event"), r.get("level")
        if source == AUDIT:
            self._state(r)
        elif ev == "order_sent" and source.startswith("strategy"):
            cid = self.strategy_ids.get(source) or str(r.get("order_id", "")).rpartition("-")[0]
            self._client(cid).pending.add(str(r.get("order_id")))
        elif ev in ("order_acked", "order_refused") and source.startswith("strategy"):
            for c in self.clients.values():
                c.pending.discard(str(r.get("order_id")))
        elif ev == "started" and source.startswith("strategy"):
            for c in self.clients.values():
                if c.program == source:
                    c.pending.clear()
        if (ev in NOTABLE or level in ("warning", "error", "critical")) and (self.backlog or not history):
            self.events.append((source, r))
        if history:
            return
        if ev == "order_rejected":
            reason = str(r.get("reason"))
            self.rejects[str(r.get("client_id") or ""), reason] += 1
            self.recent_rejects.append((time.time(), reason))
        elif ev == "reconnected":
            self.reconnects[source] += 1
        elif ev == "gap_detected":
            self.gaps[source] += 1
        elif ev == "fault_injected":
            self.faults[str(r.get("fault"))] += 1
        if level in ("warning", "error", "critical") and source not in (AUDIT, FAULTS):
            self.levels[source, "error" if level == "critical" else str(level)] += 1

    def _state(self, r: dict[str, Any]) -> None:
        name, to = r.get("process"), r.get("to_state")
        if r.get("event") != "process_state" or not isinstance(name, str):
            return
        t = epoch(r.get("ts"))
        if to == "RUNNING":
            self.running.setdefault(name, []).append(t)
            gone = self.left.pop(name, None)
            if gone is not None:
                r["_down_s"], r["_left"], r["_expected"] = t - gone[0], gone[1], gone[2]
        elif r.get("from_state") == "RUNNING" or (name not in self.left and to in ("EXITED", "BACKOFF", "FATAL")):
            self.left[name] = (t, str(to), r.get("expected"))
        if to in ("EXITED", "BACKOFF", "FATAL", "STOPPED"):
            self.exits[name] = (t, str(to), r.get("expected"))

    def restarts(self, process: str, since: float) -> int:
        """Times ``process`` reached RUNNING again after its first, since ``since`` (epoch s)."""
        return max(0, sum(t >= since - 1 for t in self.running.get(process, ())) - 1)

    def last_exit(self, process: str, since: float) -> tuple[float, str, Any] | None:
        """(when, state, expected) of the last time ``process`` exited, stopped or failed, since ``since``."""
        e = self.exits.get(process)
        return e if e is not None and e[0] >= since - 1 else None

    def poll(self, now: float, marks: dict[str, float]) -> None:
        """Take in every new line of every log and of the journal."""
        if marks:
            self.marks = marks
        self.new_t2t, self.new_fill_lat = [], []
        history = self.first
        for name, tail in self.tails.items():
            for line in tail.read():
                r = parse(line)
                if r is not None:
                    self._record(name, r, history)
        self._entries(self._journal_tail)
        self._execs(self._execs_tail)  # after the journal: an order is journaled before it can fill
        self.first = False
        cut = time.time() - WINDOW_S
        while self.t2t and self.t2t[0][0] < cut:
            self.t2t.popleft()
        while self.fill_lat and self.fill_lat[0][0] < cut:
            self.fill_lat.popleft()
        while self.recent_rejects and self.recent_rejects[0][0] < cut:
            self.recent_rejects.popleft()
        try:
            self.halted = halt.read(str(self.journal) + halt.APPLIED_SUFFIX).halted
        except (OSError, halt.HaltFileError):
            pass

    # --- figures ------------------------------------------------------------------

    def orders_per_s(self) -> float:
        """Orders journaled per second over the last RATE_S seconds."""
        cut = time.time() - RATE_S
        return sum(1 for t, _ in self.t2t if t >= cut) / RATE_S

    def fills_per_s(self) -> float:
        """Fills per second over the last RATE_S seconds (of orders accepted while watching or in the backlog)."""
        cut = time.time() - RATE_S
        return sum(1 for t, _ in self.fill_lat if t >= cut) / RATE_S

    def fill_latency(self) -> tuple[float | None, float | None]:
        """Order-to-fill p50 and p99 (µs: the exec's recv_ns − the order's) over the last minute."""
        values = sorted(us for _, us in self.fill_lat)
        return (_pct(values, 50), _pct(values, 99)) if values else (None, None)

    def latency(self) -> tuple[float | None, float | None, list[float]]:
        """Tick-to-trade p50 and p99 (µs) over the last minute, and one p50 per second for a sparkline."""
        values = sorted(us for _, us in self.t2t)
        if not values:
            return None, None, []
        now = time.time()
        buckets: list[list[float]] = [[] for _ in range(int(WINDOW_S))]
        for t, us in self.t2t:
            i = int(now - t)
            if 0 <= i < len(buckets):
                buckets[-1 - i].append(us)
        spark = [sorted(b)[len(b) // 2] if b else 0.0 for b in buckets]
        return _pct(values, 50), _pct(values, 99), spark

    def close(self) -> None:
        for t in self.tails.values():
            t.close()
        self._journal_tail.close()
        self._execs_tail.close()


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _entry_ok(e: dict[str, Any]) -> bool:
    return (isinstance(e.get("client_id"), str) and isinstance(e.get("symbol"), str)
            and e.get("side") in ("BUY", "SELL") and isinstance(e.get("qty"), int) and e["qty"] > 0
            and isinstance(e.get("price"), (int, float)) and isinstance(e.get("recv_ns"), int)
            and isinstance(e.get("tick_ts_ns"), int) and isinstance(e.get("order_id"), str))


def _exec_ok(x: dict[str, Any]) -> bool:
    return (isinstance(x.get("client_id"), str) and isinstance(x.get("order_id"), str)
            and isinstance(x.get("symbol"), str) and x.get("side") in ("BUY", "SELL")
            and isinstance(x.get("exec_id"), int) and isinstance(x.get("status"), str)
            and all(isinstance(x.get(k), int) and x[k] >= 0 for k in ("last_qty", "cum_qty", "leaves_qty"))
            and (x["last_qty"] == 0 or isinstance(x.get("last_px"), (int, float)))
            and isinstance(x.get("recv_ns"), int))
