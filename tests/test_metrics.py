"""The metrics program: GET /metrics scraped and parsed with prometheus_client's own
parser, on a running private stack, and during a fault (kill -9 of the orderbook)."""

from __future__ import annotations

import signal
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shared.ops.chaos import faults
from shared.ops.chaos.invariants import healed, position_bounds
from shared.ops.harness import PROGRAMS, Stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    url = f"http://{stack.cfg.metrics.host}:{stack.cfg.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        body = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_of_a_running_stack(make_stack: Any) -> None:
    s = make_stack({"gateway": {"seed": 42, "news_rate": 20}})
    s.wait_for(lambda: len(s.journal()) >= 3, timeout=30)
    m = s.wait_for(lambda: (x := scrape(s)) and get(x, "tradestack_tick_to_trade_seconds_count")
                   and get(x, "tradestack_order_to_fill_seconds_count") and x, 30)
    assert get(m, "tradestack_supervisor_up") == 1
    for p in PROGRAMS:
        assert get(m, "tradestack_program_up", program=p) == 1, p
        assert get(m, "tradestack_program_state", program=p, state="RUNNING") == 1
        assert get(m, "tradestack_program_restarts_total", program=p) == 0
        assert (get(m, "tradestack_program_resident_memory_bytes", program=p) or 0) > 1e6
    assert get(m, "tradestack_book_fresh") == 1 and get(m, "tradestack_book_generation") == 1
    for sym in s.cfg.symbols:
        assert (get(m, "tradestack_book_price", symbol=sym) or 0) > 0
        assert (get(m, "tradestack_book_updates_total", symbol=sym) or 0) > 0
    cid = s.cfg.strategy.client_id
    assert (get(m, "tradestack_orders_total", client_id=cid) or 0) >= 3
    n = get(m, "tradestack_tick_to_trade_seconds_count") or 0
    assert get(m, "tradestack_tick_to_trade_seconds_bucket", le="+Inf") == n > 0
    assert get(m, "tradestack_client_halted", client_id=cid) == 0
    assert get(m, "tradestack_client_realized_pnl", client_id=cid) is not None
    # Contract §9: the §7 strategy's market orders fill at once, so fills follow orders.
    assert (get(m, "tradestack_fills_total", client_id=cid) or 0) >= 1
    assert (get(m, "tradestack_filled_shares_total", client_id=cid) or 0) >= 10
    assert get(m, "tradestack_client_open_orders", client_id=cid) is not None
    assert 0 < (get(m, "tradestack_client_fill_ratio", client_id=cid) or 0) <= 1
    n = get(m, "tradestack_order_to_fill_seconds_count") or 0
    assert get(m, "tradestack_order_to_fill_seconds_bucket", le="+Inf") == n > 0
    assert (get(m, "tradestack_order_to_fill_seconds_sum") or 0) / n < 1.0  # market orders: well below a second
    journal = s.journal()  # positions agree with the journal (read after the scrape: it only grows)
    pos = {sym: get(m, "tradestack_client_position", client_id=cid, symbol=sym) for sym in s.cfg.symbols}
    assert all(abs(v or 0) <= 2 * (position_bounds(s.cfg)[cid] or 0) for v in pos.values()), pos
    assert len(journal) >= (get(m, "tradestack_orders_total", client_id=cid) or 0)


def test_metrics_during_a_kill9_of_the_orderbook(make_stack: Any) -> None:
    s = make_stack({"gateway": {"seed": 42}})
    assert get(scrape(s), "tradestack_program_up", program="orderbook") == 1
    old = faults.kill(s, "orderbook", signal.SIGKILL)
    seen_down = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and seen_down is None:
        m = scrape(s)  # the metrics program answers while a program is down
        if get(m, "tradestack_program_up", program="orderbook") == 0:
            seen_down = m
        time.sleep(0.05)
    assert seen_down is not None, "no scrape saw the orderbook down"
    assert get(seen_down, "tradestack_supervisor_up") == 1
    healed(s, restarted={"orderbook": old}, trading=False)
    m = s.wait_for(lambda: (x := scrape(s)) and get(x, "tradestack_program_up", program="orderbook") == 1 and x)
    assert get(m, "tradestack_program_restarts_total", program="orderbook") == 1
    assert get(m, "tradestack_book_generation") == 2  # the new writer took the segment over
    assert get(m, "tradestack_faults_injected_total", fault="kill") == 1
    assert get(m, "tradestack_book_fresh") == 1


def test_metrics_port_held_is_retried_and_logged(make_stack: Any) -> None:
    s = make_stack(start=False)
    with faults.hold_port(s.cfg.metrics.port, target=s):
        s.start(wait=False)
        s.wait_for(lambda: s.events("metrics", "listen_failed"), timeout=30)
    s.wait_for(lambda: s.events("metrics", "listening"), timeout=30)
    assert get(scrape(s), "tradestack_supervisor_up") == 1
