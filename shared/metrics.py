"""The metrics program: the stack's figures as Prometheus text at ``[metrics]`` host:port ``/metrics``.

It reads what ``stack-top`` reads (``shared.observe``: supervisord, /proc, the
segment, the logs, the journal and the exec journal), and only when scraped: with no scraper it
sleeps in ``select``, and no other program does any work for it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared import config
from shared.net import Retry
from shared.observe import DEFAULT_SERVERURL, Watcher

# Tick-to-trade bucket bounds, seconds: 50 µs to 1 s.
BUCKETS = (5e-05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Order-to-fill: a market order fills within a millisecond, a resting one after seconds or minutes.
FILL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0)
# An order's reject reasons: each client's series of these exist (at 0) from the start, so that
# increase() sees the first one (Prometheus cannot count the first sample of a new series).
ORDER_REJECTS = ("risk", "unavailable")
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")


class Histogram:
    """Observations in fixed buckets, kept across scrapes (what a scrape adds, it adds once)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe_us(self, us: list[float]) -> None:
        """Add these observations, in µs (the buckets are in seconds)."""
        for x in us:
            s = x / 1e6
            self.sum += s
            self.counts[next((i for i, b in enumerate(self.bounds) if s <= b), len(self.bounds))] += 1

    def family(self, name: str, doc: str) -> Metric:
        cum, n = [], 0
        for i, b in enumerate([*map(str, self.bounds), "+Inf"]):
            n += self.counts[i]
            cum.append((b, n))
        return HistogramMetricFamily(name, doc, buckets=cum, sum_value=self.sum)


class StackCollector(Collector):
    """One poll of the stack per scrape, as metric families."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.t2t = Histogram(BUCKETS)
        self.fill = Histogram(FILL_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        v = self.watcher.poll()
        a = v.activity
        self.t2t.observe_us(a.new_t2t)
        self.fill.observe_us(a.new_fill_lat)
        up = GaugeMetricFamily("tradestack_supervisor_up", "1 when supervisord answers over XML-RPC")
        up.add_metric([], 0 if isinstance(v.programs, str) else 1)
        yield up
        if not isinstance(v.programs, str):
            yield from _programs(v.programs)
        yield from _book(v.book)
        yield from _orders(a)
        yield self.t2t.family("tradestack_tick_to_trade_seconds", "News tick (gateway ts_ns) to order journaled "
                              "(recv_ns), for orders journaled since the metrics program started")
        yield self.fill.family("tradestack_order_to_fill_seconds", "Order journaled (recv_ns) to each of its fills "
                               "at the ordermanager (exec journal recv_ns), for fills since the metrics program "
                               "started")
        yield from _clients(a)


def _family(kind: type, name: str, doc: str, labels: list[str], rows: Any) -> Metric:
    m = kind(name, doc, labels=labels)
    for labelvalues, value in rows:
        m.add_metric(list(labelvalues), value)
    return m


def _programs(programs: list[Any]) -> Iterator[Metric]:
    yield _family(GaugeMetricFamily, "tradestack_program_up", "1 when supervisord says RUNNING", ["program"],
                  [((p.name,), int(p.state == "RUNNING")) for p in programs])
    yield _family(GaugeMetricFamily, "tradestack_program_state", "supervisord's state of each program (1 = this one)",
                  ["program", "state"], [((p.name, s), int(p.state == s)) for p in programs for s in STATES])
    yield _family(CounterMetricFamily, "tradestack_program_restarts", "times it reached RUNNING again, under this "
                  "supervisord (from the audit log)", ["program"], [((p.name,), p.restarts) for p in programs])
    yield _family(GaugeMetricFamily, "tradestack_program_uptime_seconds", "seconds since it started, while RUNNING",
                  ["program"], [((p.name,), p.uptime_s) for p in programs if p.uptime_s is not None])
    yield _family(GaugeMetricFamily, "tradestack_program_resident_memory_bytes", "RSS of its process", ["program"],
                  [((p.name,), p.rss_bytes) for p in programs if p.rss_bytes is not None])
    yield _family(CounterMetricFamily, "tradestack_program_cpu_seconds", "CPU time of its current process",
                  ["program"], [((p.name,), p.cpu_s) for p in programs if p.cpu_s is not None])


def _book(b: Any) -> Iterator[Metric]:
    attached = b.status not in ("no segment",) and not b.status.startswith("bad segment")
    yield _family(GaugeMetricFamily, "tradestack_book_attached", "1 when the segment exists and is ours", [],
                  [((), int(attached))])
    yield _family(GaugeMetricFamily, "tradestack_book_fresh", "1 when the writer's heartbeat is within "
                  "book.stale_ms", [], [((), int(b.status == "fresh"))])
    if not attached:
        return
    yield _family(GaugeMetricFamily, "tradestack_book_generation", "writer takeovers of the segment", [],
                  [((), b.generation)])
    if b.heartbeat_age_ms is not None:
        yield _family(GaugeMetricFamily, "tradestack_book_writer_heartbeat_age_seconds",
                      "since the writer's last heartbeat", [], [((), b.heartbeat_age_ms / 1000)])
    priced = [q for q in b.quotes if q.price is not None]
    yield _family(GaugeMetricFamily, "tradestack_book_price", "latest price in the book", ["symbol"],
                  [((q.symbol,), q.price) for q in priced])
    yield _family(CounterMetricFamily, "tradestack_book_updates", "ticks written to the slot (the segment's "
                  "updates)", ["symbol"], [((q.symbol,), q.updates) for q in b.quotes])
    yield _family(GaugeMetricFamily, "tradestack_book_tick_age_seconds", "since the gateway made the latest tick",
                  ["symbol"], [((q.symbol,), q.age_ms / 1000) for q in priced if q.age_ms is not None])


def _orders(a: Any) -> Iterator[Metric]:
    yield _family(CounterMetricFamily, "tradestack_orders", "orders in the journal", ["client_id"],
                  [((c.client_id,), c.orders) for c in a.clients.values()])
    ids = [*(st.client_id for st in a.cfg.all_strategies()), *a.clients]
    rejects = {(cid, reason): 0 for cid in ids for reason in ORDER_REJECTS} | dict(a.rejects)
    yield _family(CounterMetricFamily, "tradestack_order_rejects", "order_rejected records seen since the metrics "
                  "program started", ["client_id", "reason"], sorted(rejects.items()))
    yield _family(CounterMetricFamily, "tradestack_reconnects", "reconnected records", ["program"],
                  sorted(((p,), n) for p, n in a.reconnects.items()))
    yield _family(CounterMetricFamily, "tradestack_gaps", "gap_detected records", ["program"],
                  sorted(((p,), n) for p, n in a.gaps.items()))
    yield _family(CounterMetricFamily, "tradestack_log_records", "warning and error records", ["program", "level"],
                  sorted((k, n) for k, n in a.levels.items()))
    yield _family(CounterMetricFamily, "tradestack_faults_injected", "fault_injected records of the fault tool",
                  ["fault"], sorted(((f,), n) for f, n in a.faults.items()))


def _clients(a: Any) -> Iterator[Metric]:
    ids = list(dict.fromkeys([*a.strategy_ids.values(), *a.clients]))
    pos, real, unreal, pending, halted, fills, filled, opened, ratio = [], [], [], [], [], [], [], [], []
    for cid in ids:
        c = a.clients.get(cid)
        halted.append(((cid,), int(cid in a.halted)))
        if c is None:
            continue
        r, u = c.pnl(a.marks)
        real.append(((cid,), r))
        if u is not None:
            unreal.append(((cid,), u))
        pending.append(((cid,), len(c.pending)))
        pos += [((cid, s), p.qty) for s, p in sorted(c.positions.items())]
        fills.append(((cid,), c.fills))
        filled.append(((cid,), c.filled_qty))
        opened.append(((cid,), len(c.open)))
        if c.fill_ratio() is not None:
            ratio.append(((cid,), c.fill_ratio()))
    yield _family(CounterMetricFamily, "tradestack_fills", "execs with a fill (the ordermanager's exec journal)",
                  ["client_id"], fills)
    yield _family(CounterMetricFamily, "tradestack_filled_shares", "shares filled", ["client_id"], filled)
    yield _family(GaugeMetricFamily, "tradestack_client_open_orders", "orders open at the venue (new or partly "
                  "filled, not yet ended)", ["client_id"], opened)
    yield _family(GaugeMetricFamily, "tradestack_client_fill_ratio", "shares filled over shares ordered, of the "
                  "client's ended orders", ["client_id"], ratio)
    yield _family(GaugeMetricFamily, "tradestack_client_position", "signed position (from fills)",
                  ["client_id", "symbol"], pos)
    yield _family(GaugeMetricFamily, "tradestack_client_realized_pnl", "realized P&L", ["client_id"], real)
    yield _family(GaugeMetricFamily, "tradestack_client_unrealized_pnl", "unrealized P&L at the book's prices",
                  ["client_id"], unreal)
    yield _family(GaugeMetricFamily, "tradestack_client_pending_orders", "orders sent, not yet acked",
                  ["client_id"], pending)
    yield _family(GaugeMetricFamily, "tradestack_client_halted", "1 while halted at the ordermanager",
                  ["client_id"], halted)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # no line per scrape
        pass


class _Server(WSGIServer):
    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.settimeout(2.0)  # a client that stalls mid-request does not hold the exporter
        return conn, addr


class Exporter:
    """The metrics program's component: one HTTP server, one request per turn."""

    def __init__(self, cfg: config.Config, log: Any) -> None:
        self.cfg, self.log = cfg, log
        serverurl = os.environ.get("SUPERVISOR_SERVER_URL", DEFAULT_SERVERURL)  # set by supervisord
        self.watcher = Watcher(cfg, serverurl)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StackCollector(self.watcher))
        ProcessCollector(registry=self.registry)
        self.app = make_wsgi_app(self.registry)
        self.server: WSGIServer | None = None
        self.retry = Retry(log, "listen_failed", port=cfg.metrics.port)
        self._listen()

    def _listen(self) -> None:
        host, port = self.cfg.metrics.host, self.cfg.metrics.port
        try:
            self.server = make_server(host, port, self.app, server_class=_Server, handler_class=_Quiet)
        except OSError as e:
            self.retry.failed(time.monotonic(), e.strerror or str(e))
            return
        self.server.timeout = 0.25
        self.retry.succeeded()
        self.log.info("listening", host=host, port=port, path="/metrics")

    def step(self) -> None:
        if self.server is None:
            time.sleep(0.05)
            if self.retry.due(time.monotonic()):
                self._listen()
            return
        self.server.handle_request()

    def shutdown(self, deadline: float) -> None:
        if self.server is not None:
            self.server.server_close()
        self.watcher.close()
