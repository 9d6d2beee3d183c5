"""What stack-top and the metrics program take from the journal and the exec journal
(contract §9): positions, P&L, fills, open orders, fill ratio and order-to-fill latency
from fills, with no stack: the files are written here."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shared import config
from shared.activity import Activity
from shared.metrics import StackCollector
from shared.observe import BookState, View
from shared.ops.top import view

NOW = time.time_ns()
MS = 1_000_000


def order(no: int, cid: str, oid: str, side: str, qty: int, price: float, at: int) -> dict[str, Any]:
    return {"order_no": no, "order_id": oid, "client_id": cid, "symbol": "AAPL", "side": side, "qty": qty,
            "price": price, "ts_ns": at, "tick_ts_ns": at - MS, "recv_ns": at, "ord_type": "limit", "tif": "day"}


def execution(eid: int, cid: str, oid: str, side: str, status: str, last_qty: int, last_px: float | None,
              cum: int, leaves: int, at: int) -> dict[str, Any]:
    return {"type": "exec", "order_id": oid, "exec_id": eid, "status": status, "last_qty": last_qty,
            "last_px": last_px, "cum_qty": cum, "leaves_qty": leaves, "avg_px": last_px, "ts_ns": at,
            "symbol": "AAPL", "side": side, "client_id": cid, "recv_ns": at}


# The README's order's life for strategy-1 (a resting buy, a partial fill, a cancel), a market sell of
# another client that fills at once, and a buy of strategy-1 still resting.
ORDERS = [
    order(1, "strategy-1", "strategy-1-1", "BUY", 10, 173.20, NOW - 900 * MS),
    order(2, "momentum", "momentum-1", "SELL", 5, 171.00, NOW - 800 * MS),
    order(3, "strategy-1", "strategy-1-2", "BUY", 10, 173.00, NOW - 700 * MS),
]
EXECS = [
    execution(1, "strategy-1", "strategy-1-1", "BUY", "new", 0, None, 0, 10, NOW - 899 * MS),
    execution(2, "momentum", "momentum-1", "SELL", "new", 0, None, 0, 5, NOW - 800 * MS + 300_000),
    execution(3, "momentum", "momentum-1", "SELL", "filled", 5, 173.22, 5, 0, NOW - 800 * MS + 400_000),
    execution(4, "strategy-1", "strategy-1-1", "BUY", "partially_filled", 4, 173.20, 4, 6, NOW - 500 * MS),
    execution(5, "strategy-1", "strategy-1-1", "BUY", "canceled", 0, None, 4, 0, NOW - 400 * MS),
    execution(6, "strategy-1", "strategy-1-2", "BUY", "new", 0, None, 0, 10, NOW - 699 * MS),
]


def write(path: Path, rows: list[dict[str, Any]], mode: str = "w") -> None:
    with open(path, mode) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.replace(config.load(), ordermanager={"journal": str(tmp_path / "orders.jsonl")},
                          auditor={"log": str(tmp_path / "audit.log")})


def test_positions_fills_and_open_orders_come_from_the_exec_journal(cfg: config.Config, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW / 1e9)  # the rows' times are NOW's, however late this runs
    write(tmp_path / "orders.jsonl", ORDERS)
    write(tmp_path / "orders.jsonl.execs", EXECS[:3])
    a = Activity(cfg)
    a.poll(time.monotonic(), {"AAPL": 173.50})
    s1, mo = a.clients["strategy-1"], a.clients["momentum"]
    assert s1.orders == 2 and s1.positions == {} and list(s1.open) == ["strategy-1-1"] and s1.fills == 0
    assert mo.positions["AAPL"].qty == -5 and mo.fills == 1 and mo.fill_ratio() == 1.0 and mo.open == {}
    assert a.new_fill_lat == []  # what was there at start is history: the histogram counts what comes after
    write(tmp_path / "orders.jsonl.execs", EXECS[3:], "a")
    a.poll(time.monotonic(), {"AAPL": 173.50})
    assert s1.positions["AAPL"].qty == 4 and s1.positions["AAPL"].avg_price == 173.20
    assert s1.pnl({"AAPL": 173.50}) == (0.0, pytest.approx(4 * 0.30))  # accepted, unfilled: counts for nothing
    assert (s1.fills, s1.filled_qty, list(s1.open)) == (1, 4, ["strategy-1-2"])
    assert s1.open_qty("AAPL", "BUY") == 10 and s1.open_qty("AAPL", "SELL") == 0
    assert s1.fill_ratio() == 0.4  # strategy-1-1 ended with 4 of 10 filled; strategy-1-2 is still open
    assert a.new_fill_lat == [pytest.approx(400_000.0)]  # µs: the fill's recv_ns − the order's recv_ns
    p50, p99 = a.fill_latency()
    assert sorted(us for _, us in a.fill_lat) == [pytest.approx(400.0), pytest.approx(400_000.0)]  # market: 400 µs
    assert (p50, p99) == (pytest.approx(400_000.0), pytest.approx(400_000.0))  # of two, the upper
    assert a.fills_per_s() == pytest.approx(0.2)
    a.close()


def test_a_torn_or_repeated_exec_line_is_skipped(cfg: config.Config, tmp_path: Path) -> None:
    write(tmp_path / "orders.jsonl", ORDERS)
    write(tmp_path / "orders.jsonl.execs", EXECS[:3] + [EXECS[2]])
    with open(tmp_path / "orders.jsonl.execs", "a") as f:
        f.write('{"type":"exec","order_id":"momentum-1","exec_id":7,"sta')  # a torn last line
    a = Activity(cfg)
    a.poll(time.monotonic(), {})
    assert a.clients["momentum"].fills == 1 and a.exec_id == 3
    a.close()


def test_every_exec_segment_is_read_and_a_roll_followed(cfg: config.Config, tmp_path: Path) -> None:
    """The exec journal rolls like the journal: its closed segments at start, then the open one,
    and an open one closed while it is followed is finished before the new one is read."""
    write(tmp_path / "orders.jsonl", ORDERS)
    write(tmp_path / "orders.jsonl.execs.1", EXECS[:2])
    write(tmp_path / "orders.jsonl.execs", EXECS[2:4])
    a = Activity(cfg)
    a.poll(time.monotonic(), {})
    assert a.exec_id == 4 and a.clients["momentum"].fills == 1 and a.clients["strategy-1"].fills == 1
    write(tmp_path / "orders.jsonl.execs", EXECS[4:5], "a")
    os.rename(tmp_path / "orders.jsonl.execs", tmp_path / "orders.jsonl.execs.2")
    write(tmp_path / "orders.jsonl.execs", EXECS[5:])
    a.poll(time.monotonic(), {})
    a.poll(time.monotonic(), {})
    assert a.exec_id == 6 and list(a.clients["strategy-1"].open) == ["strategy-1-2"]
    a.close()


def plain(renderable: Any) -> str:
    console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_the_view_shows_fills_and_open_orders_per_strategy(cfg: config.Config, tmp_path: Path) -> None:
    write(tmp_path / "orders.jsonl", ORDERS)
    write(tmp_path / "orders.jsonl.execs", EXECS)
    a = Activity(cfg)
    a.poll(time.monotonic(), {"AAPL": 173.50})
    panel = plain(view.strategies(a, view.Fmt()))
    assert panel.splitlines()[0].split() == ["client", "position", "realized", "unreal.", "fills", "open", "pend",
                                             "halted", "last", "fill"]
    row = next(ln for ln in panel.splitlines() if ln.startswith("strategy-1 "))
    assert row.split()[1:8] == ["AAPL", "+4", "0.00", "1.20", "1", "1", "0"] and row.rstrip().endswith("+4 AAPL")
    row = next(ln for ln in panel.splitlines() if ln.startswith("momentum "))
    assert row.split()[1:8] == ["AAPL", "-5", "0.00", "-1.40", "1", "0", "0"] and row.rstrip().endswith("-5 AAPL")
    flow = plain(view.flow(a, view.Fmt()))
    assert "fills 2   open 1   filled 60 %" in flow and "order-to-fill 1 min  p50" in flow
    assert "###" in plain(view.flow(a, view.Fmt(mask=True))).split("fills/s")[1]
    a.close()


class OneView:
    """Stands in for the Watcher: the same activity at each poll."""

    def __init__(self, a: Activity) -> None:
        self.a = a

    def poll(self) -> View:
        self.a.poll(time.monotonic(), {"AAPL": 173.50})
        return View(time.time(), "no supervisor", BookState("no segment"), self.a)


def test_metrics_export_fills_open_orders_fill_ratio_and_order_to_fill(cfg: config.Config, tmp_path: Path) -> None:
    write(tmp_path / "orders.jsonl", ORDERS)
    write(tmp_path / "orders.jsonl.execs", EXECS[:2])
    a = Activity(cfg)
    collector = StackCollector(OneView(a))  # type: ignore[arg-type]
    list(collector.collect())
    write(tmp_path / "orders.jsonl.execs", EXECS[2:], "a")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples}
    m = {"momentum": (("client_id", "momentum"),), "s1": (("client_id", "strategy-1"),)}
    assert samples["tradestack_fills_total", m["s1"]] == 1 and samples["tradestack_fills_total", m["momentum"]] == 1
    assert samples["tradestack_filled_shares_total", m["s1"]] == 4
    assert samples["tradestack_client_open_orders", m["s1"]] == 1
    assert samples["tradestack_client_open_orders", m["momentum"]] == 0
    assert samples["tradestack_client_fill_ratio", m["s1"]] == 0.4
    assert samples["tradestack_client_position", (("client_id", "strategy-1"), ("symbol", "AAPL"))] == 4
    assert samples["tradestack_order_to_fill_seconds_count", ()] == 2  # the two fills after the first scrape
    assert samples["tradestack_order_to_fill_seconds_bucket", (("le", "0.0005"),)] == 1
    assert samples["tradestack_order_to_fill_seconds_bucket", (("le", "1.0"),)] == 2
    assert samples["tradestack_order_to_fill_seconds_sum", ()] == pytest.approx(0.4004)
    a.close()
