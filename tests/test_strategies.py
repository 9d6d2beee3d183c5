"""Several strategies (contract §8): three programs with three different rules
(one of them a user's, from outside the repository) trading at once under the
real supervisord, through a kill -9 and a restart of each, with the fault
suite's invariants held per client; a rule that raises; config errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
import structlog

from shared import book, config, logs
from shared.book import Segment, Writer
from shared.config import ROOT
from shared.ops.chaos import faults
from shared.ops.chaos.invariants import healed
from shared.ops.ctl import strategy_programs
from shared.ops.harness import PROGRAMS, Stack
from shared.protocol import (
    Ack,
    Cancel,
    DecisionContext,
    Exec,
    Logon,
    LogonAck,
    News,
    OpenOrder,
    Order,
    Reject,
    SeenOrder,
    decode,
)
from shared.strategy import Trader

USER_RULES = '''
"""A rule of a user's own: follow the news; raise on round sentiments (to be survived)."""
from dataclasses import dataclass

from shared.rule import Rule, to_target


@dataclass(frozen=True)
class Params:
    qty: int = 5


class FollowTheNews(Rule):
    Params = Params
    history = 1

    def decide(self, ticks, news, position):
        if news.sentiment % 10 == 0:
            raise ValueError(f"round sentiment {news.sentiment}")
        return to_target(self.params.qty if news.sentiment > 50 else -self.params.qty, position)
'''

HB_MS = 100
THREE: dict[str, Any] = {
    "gateway": {"news_rate": 20, "heartbeat_ms": HB_MS, "price_rate": 300},
    "ordermanager": {"heartbeat_ms": HB_MS},
    "strategy": {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 4},
    "strategies": {
        # Its limit orders rest 30 bps inside the price, and are cancelled after two news ticks.
        "revert": {"rule": "shared.rule:MeanReversion", "symbols": ["AAPL", "MSFT"], "window": 10,
                   "entry_z": 0.8, "exit_z": 0.3, "qty": 7, "offset_bps": 30.0, "max_age": 2},
        "news": {"rule": "userrules:FollowTheNews", "client_id": "news-follower"},
    },
}
STRATEGIES = ("strategy", "strategy-revert", "strategy-news")


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack running three strategies; the user's rule module on PYTHONPATH only."""
    d = tmp_path_factory.mktemp("three")
    (d / "rules").mkdir()
    (d / "rules" / "userrules.py").write_text(USER_RULES)
    s = Stack(d / "stack", THREE)
    s.env["PYTHONPATH"] = str(d / "rules")
    sys.path.insert(0, str(d / "rules"))  # so the invariants know its qty
    try:
        s.start()
        yield s
    finally:
        s.stop()
        sys.path.remove(str(d / "rules"))


def test_three_strategies_run_as_their_own_programs(three: Stack) -> None:
    assert three.programs == (*PROGRAMS, "strategy-revert", "strategy-news")
    assert three.status() == dict.fromkeys(three.programs, "RUNNING")
    healed(three)  # every strategy trades, and every invariant holds per client
    journal = three.journal()
    clients = {e["client_id"] for e in journal}
    assert {"strategy-1", "revert", "news-follower"} <= clients
    assert {e["symbol"] for e in journal if e["client_id"] == "revert"} <= {"AAPL", "MSFT"}
    assert {e["qty"] for e in journal if e["client_id"] == "news-follower"} <= {5, 10}
    for program in STRATEGIES:  # supervisorctl knows each by name
        assert "RUNNING" in three.ctl("status", program)
        assert '"event"' in three.ctl("tail", program)
    rules = {p: three.events(p, "rule")[0]["rule"] for p in STRATEGIES}
    assert rules == {"strategy": "shared.rule:MovingAverageSentiment", "strategy-revert": "shared.rule:MeanReversion",
                     "strategy-news": "userrules:FollowTheNews"}


def test_windows_come_whole_from_the_ring(three: Stack) -> None:
    for program, n in (("strategy", 4), ("strategy-revert", 10)):
        sent = three.wait_for(lambda p=program: three.events(p, "order_sent"))
        assert all(r["ticks"] == n for r in sent), sent[:3]
        assert all(r["last_tick_seq"] > r["first_tick_seq"] for r in sent)


def exec_journal(stack: Stack, client_id: str) -> list[dict[str, Any]]:
    """The ordermanager's exec journal lines of one client."""
    return [x for x in stack.execs() if x.get("client_id") == client_id]


def test_market_orders_fill_and_limit_orders_rest_and_are_canceled(three: Stack) -> None:
    """Contract §9 end to end: the §7 strategy's market orders fill at once within their protection
    price; the mean-reversion rule's limit orders rest and its stale ones are cancelled; each exec
    reaches its strategy once, and the strategy's position is the sum of its fills."""
    filled = three.wait_for(lambda: [x for x in exec_journal(three, "strategy-1") if x["status"] == "filled"], 30)
    orders = {e["order_id"]: e for e in three.journal()}
    for x in filled:
        o = orders[x["order_id"]]
        assert (o.get("ord_type"), o.get("tif"), x["cum_qty"]) == ("market", "ioc", o["qty"]), (o, x)
        assert x["last_px"] <= o["price"] if o["side"] == "BUY" else x["last_px"] >= o["price"]
    canceled = three.wait_for(lambda: [x for x in exec_journal(three, "revert") if x["status"] == "canceled"], 30)
    # The strategy's log reaches its file through supervisord's pipe: it may come after the cancel is answered.
    ids = {x["order_id"] for x in canceled}
    asked = three.wait_for(lambda: ids <= (a := {r["order_id"] for r in three.events("strategy-revert", "cancel_sent")})
                           and a, 10)
    for x in canceled:
        o = orders[x["order_id"]]
        assert (o.get("ord_type", "limit"), o.get("tif", "day")) == ("limit", "day")  # the defaults are left out
        assert x["order_id"] in asked
        assert x["cum_qty"] < o["qty"] and x["leaves_qty"] == 0
    for program, cid in (("strategy", "strategy-1"), ("strategy-revert", "revert")):
        got = [r["exec_id"] for r in three.events(program, "exec_received")]
        journaled = [x["exec_id"] for x in exec_journal(three, cid)]
        assert got and got == [i for i in journaled if i <= got[-1]], program  # each once, in order
    old = three.pids()["strategy-revert"]
    three.ctl("restart", "strategy-revert", check=True)  # a process start takes its position from logon_ack
    on = three.wait_for(lambda: [r for r in three.events("strategy-revert", "logged_on") if r["pid"] != old])[-1]
    fills: dict[str, int] = {}
    for x in exec_journal(three, "revert"):
        if x["exec_id"] <= on["last_exec_id"]:
            fills[x["symbol"]] = fills.get(x["symbol"], 0) + (x["last_qty"] if x["side"] == "BUY" else -x["last_qty"])
    assert on["positions"] == {s: q for s, q in fills.items() if q}


def test_a_rule_that_raises_is_logged_and_the_strategy_keeps_trading(three: Stack) -> None:
    pid = three.pids()["strategy-news"]
    failed = three.wait_for(lambda: three.events("strategy-news", "rule_failed"), timeout=30)
    f = failed[0]
    assert f["rule"] == "userrules:FollowTheNews" and f["level"] == "error"
    assert f["error"].startswith("ValueError: round sentiment") and f["sentiment"] % 10 == 0
    assert {"symbol", "news_seq", "news_ts_ns", "price", "tick_seq", "traceback"} <= set(f)
    after = f["ts"]
    three.wait_for(lambda: [r for r in three.events("strategy-news", "order_sent") if r["ts"] > after], timeout=30)
    assert three.pids()["strategy-news"] == pid


@pytest.mark.parametrize("program", STRATEGIES)
def test_kill9_each_strategy_touches_no_other(three: Stack, program: str) -> None:
    others = {p: pid for p, pid in three.pids().items() if p != program}
    old = faults.kill(three, program, signal.SIGKILL)
    healed(three, restarted={program: old})
    assert {p: pid for p, pid in three.pids().items() if p != program} == others


@pytest.mark.parametrize("program", STRATEGIES)
def test_restart_each_strategy_by_name(three: Stack, program: str) -> None:
    old = three.pids()[program]
    three.ctl("restart", program, check=True)
    healed(three, restarted={program: old})
    on = three.events(program, "logged_on")[-1]
    assert on["pid"] == three.pids()[program]


# --- config errors ------------------------------------------------------------


def run_with(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STACK_CONFIG": str(config)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


BAD_RULE = '[strategies.revert]\nrule = "shared.nope:MeanReversion"\n'
DUPLICATE = '[strategies.a]\n[strategies.b]\nclient_id = "a"\n'


def test_a_rule_that_cannot_be_imported_stops_its_strategy_with_a_clear_line(tmp_path: Path) -> None:
    (tmp_path / "stack.toml").write_text(BAD_RULE)
    r = run_with(tmp_path / "stack.toml", "daemons/strategy.py", "revert")
    assert r.returncode == 2
    assert r.stderr.strip() == ("strategy-revert: bad config: strategies.revert.rule: cannot import "
                                "'shared.nope:MeanReversion': ModuleNotFoundError: No module named 'shared.nope'")
    assert '"event":"bad_config"' in r.stdout.replace(" ", "")
    r = run_with(tmp_path / "stack.toml", "-m", "shared.ops.ctl", "prepare")  # deploy/up refuses before starting
    assert r.returncode == 2 and "strategies.revert.rule: cannot import" in r.stderr


def test_an_unknown_strategy_name_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "stack.toml").write_text("")
    r = run_with(tmp_path / "stack.toml", "daemons/strategy.py", "ghost")
    assert r.returncode == 2 and "strategies.ghost: no such table" in r.stderr


def test_a_repeated_client_id_stops_every_daemon_and_deploy_up(tmp_path: Path) -> None:
    (tmp_path / "stack.toml").write_text(DUPLICATE)
    for args in (("daemons/strategy.py", "a"), ("daemons/gateway.py",), ("-m", "shared.ops.ctl", "prepare")):
        r = run_with(tmp_path / "stack.toml", *args)
        assert r.returncode == 2, args
        assert "strategies.b.client_id: 'a' is also the client_id of strategies.a" in r.stderr, r.stderr


def test_generated_programs_copy_the_strategy_program(tmp_path: Path) -> None:
    (tmp_path / "stack.toml").write_text('[strategies.a]\n[strategies.b-2]\nrule = "shared.rule:MeanReversion"\n')
    cfg = config.load(tmp_path / "stack.toml")
    conf = (ROOT / "deploy" / "supervisord.conf").read_text()
    text = strategy_programs(conf, cfg)
    assert text.count("[program:") == 2
    assert "[program:strategy-a]\ncommand=%(here)s/../.venv/bin/python -u %(here)s/../daemons/strategy.py a\n" in text
    assert "daemons/strategy.py b-2\n" in text
    assert "[include]\nfiles = strategies.conf" in conf
    assert strategy_programs(conf, config.load(ROOT / "deploy" / "stack.toml")).count("[program:") == 0


# --- the strategy in-process: the ring at news time ---------------------------


class Wire:
    """Stands in for the order link: keeps what the strategy writes."""

    def __init__(self) -> None:
        self.orders: list[Any] = []

    def write(self, data: bytes) -> None:
        self.orders.append(decode(data[4:]))


@pytest.fixture
def trader() -> Iterator[tuple[Trader, Writer, Wire, list[dict[str, Any]]]]:
    name = f"ts_test_{uuid4().hex[:8]}"
    cfg = config.parse({"book": {"segment": name, "ring_len": 8},
                        "strategy": {"short_window": 2, "long_window": 4, "bullish": 50, "bearish": 50}})
    seg = Segment.create(name, cfg.symbols, 8)
    logs.configure("strategy", io.BytesIO())  # for logs.hot (order_sent); the rest is captured
    try:
        with structlog.testing.capture_logs() as records:
            t = Trader(cfg, structlog.get_logger())
            t._attach(time.monotonic())
            wire = Wire()
            t.om.conn, t.logged_on = wire, True  # type: ignore[assignment]
            yield t, Writer(seg), wire, records
    finally:
        seg.close()
        book.unlink(name)


def news(symbol: str, sentiment: int) -> News:
    return News(seq=1, ts_ns=time.time_ns(), symbol=symbol, sentiment=sentiment)


def test_the_window_is_the_rings_last_ticks(trader: tuple[Trader, Writer, Wire, list[dict[str, Any]]]) -> None:
    t, w, wire, records = trader
    for k, px in enumerate([100.0, 100.0, 100.0, 100.0, 101.0, 102.0, 103.0, 110.0], 1):  # 8 ticks of AAPL
        w.write(0, px, k, 10 * k)
    t._on_tick(news("AAPL", 90))
    # A market order (contract §9's default), its protection price 1 % above the window's last tick.
    assert [(o.side, o.qty, o.price) for o in wire.orders] == [("BUY", 10, 111.1)]
    sent = [r for r in records if r["event"] == "rule"]
    assert sent[0]["history"] == 4


def test_no_order_on_a_never_priced_symbol_or_a_stale_book(
        trader: tuple[Trader, Writer, Wire, list[dict[str, Any]]]) -> None:
    t, w, wire, records = trader
    t._on_tick(news("MSFT", 90))  # never priced
    for k in range(1, 6):
        w.write(1, 100.0 + k, k, k)
    w.heartbeat(time.time_ns() - 10**9)  # a second old: stale
    t._on_tick(news("MSFT", 90))
    assert wire.orders == [] and [r["event"] for r in records].count("book_stale") == 1
    w.heartbeat()
    t._on_tick(news("MSFT", 90))
    assert len(wire.orders) == 1 and "book_fresh" in [r["event"] for r in records]


def test_a_segment_without_a_ring_is_waited_out(tmp_path: Path) -> None:
    name = f"ts_test_{uuid4().hex[:8]}"
    seg = Segment.create(name, ("AAPL", "MSFT", "GOOGL"))  # a v1 book
    try:
        with structlog.testing.capture_logs() as records:
            t = Trader(config.parse({"book": {"segment": name}}), structlog.get_logger())
            t._attach(time.monotonic())
        assert t.seg is None
        waits = [r for r in records if r["event"] == "segment_wait"]
        assert "keeps 0 ticks per symbol, the rule wants 20" in waits[0]["error"]
    finally:
        seg.close()
        book.unlink(name)


# --- the strategy in-process: trading on fills (contract §9) ------------------


@pytest.fixture
def make_trader(tmp_path: Path) -> Iterator[Any]:
    """Builds a Trader on a private segment with this [strategy] table, its order link a Wire;
    with it ``log(event)``, the records of that event it logged (hot ones included)."""
    made: list[tuple[Segment, str]] = []
    (tmp_path / "token").write_text("tok\n")
    sink = io.BytesIO()

    def log(event: str) -> list[dict[str, Any]]:
        logs.flush()
        hot = [json.loads(line) for line in sink.getvalue().splitlines()]
        return [r for r in [*records, *hot] if r["event"] == event]

    def make(strategy: dict[str, Any]) -> tuple[Trader, Writer, Wire, Any]:
        name = f"ts_test_{uuid4().hex[:8]}"
        cfg = config.parse({"book": {"segment": name, "ring_len": 8}, "strategy": strategy,
                            "ordermanager": {"token_file": str(tmp_path / "token")}})
        seg = Segment.create(name, cfg.symbols, 8)
        made.append((seg, name))
        t = Trader(cfg, structlog.get_logger())
        t._attach(time.monotonic())
        wire = Wire()
        t.om.conn = wire  # type: ignore[assignment]
        t._om_connected(wire)  # type: ignore[arg-type]
        t._on_om(wire, LogonAck(session="s", heartbeat_ms=250, positions={}, last_order_id=None,  # type: ignore[arg-type]
                                open_orders=[]))
        return t, Writer(seg), wire, log

    logs.configure("strategy", sink)  # for logs.hot (order_sent, exec_received, cancel_sent); the rest is captured
    try:
        with structlog.testing.capture_logs() as records:
            yield make
    finally:
        for seg, name in made:
            seg.close()
            book.unlink(name)


def execution(order_id: str, exec_id: int, status: str, last_qty: int = 0, last_px: float | None = None,
              cum: int = 0, leaves: int = 0, symbol: str = "AAPL", side: str = "BUY") -> Exec:
    return Exec(order_id=order_id, exec_id=exec_id, status=status, last_qty=last_qty, last_px=last_px,  # type: ignore[arg-type]
                cum_qty=cum, leaves_qty=leaves, avg_px=last_px, ts_ns=exec_id, symbol=symbol, side=side)  # type: ignore[arg-type]


def feed(t: Trader, *msgs: Any) -> None:
    for m in msgs:
        t._on_om(t.om.conn, m)  # type: ignore[arg-type]


MA = {"short_window": 2, "long_window": 4, "bullish": 50, "bearish": 50}  # §7 rule, trades on any tilt
RISING = [100.0, 100.0, 100.0, 100.0, 101.0, 102.0, 103.0, 110.0]


def test_the_seven_rule_sends_market_orders_with_a_protection_price(make_trader: Any) -> None:
    t, w, wire, _ = make_trader(MA)
    assert type(wire.orders[0]) is Logon and wire.orders[0].last_exec_id is None  # a process start
    for k, px in enumerate(RISING, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 90))
    o = wire.orders[-1]
    assert (type(o), o.side, o.qty, o.ord_type, o.tif, o.price) == (Order, "BUY", 10, "market", "ioc", 111.1)


def test_position_is_what_filled_and_open_orders_keep_cum_and_leaves(make_trader: Any) -> None:
    t, w, wire, log = make_trader({**MA, "ord_type": "limit"})
    for k, px in enumerate(RISING, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 90))
    o = wire.orders[-1]
    assert (o.ord_type, o.tif, o.price) == ("limit", "day", 110.0)
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=False))
    assert t.position("AAPL") == 0  # acked is not filled
    feed(t, execution(o.order_id, 1, "new", leaves=10))
    assert t.position("AAPL") == 0 and [(x.cum_qty, x.leaves_qty) for x in t.open_orders("AAPL")] == [(0, 10)]
    t._on_tick(news("AAPL", 90))  # the resting order counts as done for the §7 rule: no second order
    assert wire.orders[-1] is o
    feed(t, execution(o.order_id, 2, "partially_filled", 4, 110.0, cum=4, leaves=6))
    assert t.position("AAPL") == 4
    assert [(x.order_id, x.cum_qty, x.leaves_qty) for x in t.open_orders("AAPL")] == [(o.order_id, 4, 6)]
    feed(t, execution(o.order_id, 3, "filled", 6, 109.5, cum=10, leaves=0))
    assert t.position("AAPL") == 10 and t.open_orders("AAPL") == [] and t.last_exec_id == 3
    feed(t, execution(o.order_id, 3, "filled", 6, 109.5, cum=10, leaves=0))  # a repeat changes nothing
    assert t.position("AAPL") == 10
    got = [(r["exec_id"], r["status"], r["last_qty"], r["last_px"]) for r in log("exec_received")]
    assert got == [(1, "new", 0, None), (2, "partially_filled", 4, 110.0), (3, "filled", 6, 109.5)]
    assert len(log("exec_duplicate")) == 1


def test_an_expired_market_order_moves_nothing_and_the_signal_trades_again(make_trader: Any) -> None:
    t, w, wire, _ = make_trader(MA)
    for k, px in enumerate(RISING, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 90))
    first = wire.orders[-1]
    feed(t, Ack(order_id=first.order_id, order_no=1, duplicate=False), execution(first.order_id, 1, "new", leaves=10),
         execution(first.order_id, 2, "expired"))
    assert t.position("AAPL") == 0 and t.open_orders("AAPL") == []
    t._on_tick(news("AAPL", 90))
    assert wire.orders[-1].order_id != first.order_id and wire.orders[-1].qty == 10


MR_TABLE = {"rule": "shared.rule:MeanReversion", "window": 5, "entry_z": 1.5, "exit_z": 0.5, "qty": 10,
            "max_age": 2, "max_away_bps": 500.0}
DIP = [100.0, 100.0, 100.0, 100.0, 90.0]  # z = -2: buy


def test_mean_reversion_rests_a_limit_order_and_cancels_it_when_stale(make_trader: Any) -> None:
    t, w, wire, log = make_trader(MR_TABLE)
    for k, px in enumerate(DIP, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 50))
    o = wire.orders[-1]
    assert (o.side, o.qty, o.price, o.ord_type, o.tif) == ("BUY", 10, 90.0, "limit", "day")
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=False), execution(o.order_id, 1, "new", leaves=10))
    t._on_tick(news("AAPL", 50))  # age 1: it waits
    assert wire.orders[-1] is o
    feed(t, execution(o.order_id, 2, "partially_filled", 3, 90.0, cum=3, leaves=7))
    t._on_tick(news("MSFT", 50))  # another symbol's news does not age it
    t._on_tick(news("AAPL", 50))  # age 2: stale, cancelled
    c = wire.orders[-1]
    assert type(c) is Cancel and c.order_id == o.order_id and c.client_id is None
    t._on_tick(news("AAPL", 50))  # the cancel is on its way: not sent twice, no new order meanwhile
    assert wire.orders[-1] is c
    feed(t, execution(o.order_id, 3, "canceled", cum=3, leaves=0))
    assert t.position("AAPL") == 3 and t.open_orders("AAPL") == []
    t._on_tick(news("AAPL", 50))  # decides afresh: to +10 from the 3 that filled
    n = wire.orders[-1]
    assert (type(n), n.side, n.qty, n.ord_type) == (Order, "BUY", 7, "limit")
    assert [(r["order_id"], r["leaves_qty"], r["age"]) for r in log("cancel_sent")] == [(o.order_id, 7, 2)]
    # What the rule saw goes with each order, for its journal line (stack-backtest --as-live)
    assert o.ctx == DecisionContext(news_seq=1, window=[(1, 5)], position=0)
    assert n.ctx == DecisionContext(news_seq=1, window=[(1, 5)], position=3)


def test_an_order_carries_the_open_orders_its_rule_saw_and_the_cancels_it_asked(make_trader: Any,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "cancelall.py").write_text(CANCEL_ALL)
    sys.path.insert(0, str(tmp_path))
    try:
        t, w, wire, _ = make_trader({"rule": "cancelall:CancelAndBuy"})
    finally:
        sys.path.remove(str(tmp_path))
    for k, px in enumerate(RISING, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 50))
    first = wire.orders[-1]
    feed(t, Ack(order_id=first.order_id, order_no=1, duplicate=False), execution(first.order_id, 1, "new", leaves=1))
    t._on_tick(news("AAPL", 50))
    cancel, second = wire.orders[-2:]
    assert type(cancel) is Cancel and type(second) is Order
    assert second.ctx == DecisionContext(news_seq=1, window=[(7, 8)], position=0, open_orders=[
        SeenOrder(first.order_id, "BUY", 1, 110.0, 0, 1, 1)], cancels=[first.order_id])
    assert msgspec.json.decode(msgspec.json.encode(second), type=Order) == second  # as the ordermanager reads it


CANCEL_ALL = """
from dataclasses import dataclass
from shared.rule import Decision, Rule


class CancelAndBuy(Rule):
    @dataclass(frozen=True)
    class Params:
        pass

    history = 2

    def cancels(self, ticks, news, open_orders):
        return [o.order_id for o in open_orders] + ["not-mine", 7]

    def decide(self, ticks, news, position, open_orders):
        return Decision("BUY", 1, ord_type="limit")
"""


def test_a_cancel_refused_as_unknown_order_keeps_the_fills(make_trader: Any) -> None:
    t, w, wire, log = make_trader(MR_TABLE)
    for k, px in enumerate(DIP, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 50))
    o = wire.orders[-1]
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=False), execution(o.order_id, 1, "new", leaves=10))
    t._on_tick(news("AAPL", 50))
    t._on_tick(news("AAPL", 50))
    assert type(wire.orders[-1]) is Cancel
    # It filled before the cancel reached the venue: the fill, then the refusal.
    feed(t, execution(o.order_id, 2, "filled", 10, 90.0, cum=10, leaves=0),
         Reject(order_id=o.order_id, reason="unknown_order", detail="ended"))
    assert t.position("AAPL") == 10 and t.open_orders("AAPL") == [] and t.pending == {}
    assert len(log("cancel_refused")) == 1 and log("order_refused") == []


def test_a_rule_of_three_arguments_sees_its_open_orders_in_its_position(make_trader: Any, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "oldrules.py").write_text(USER_RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    t, w, wire, _ = make_trader({"rule": "oldrules:FollowTheNews", "ord_type": "limit"})
    w.write(0, 100.0, 1, 1)
    t._on_tick(news("AAPL", 71))
    o = wire.orders[-1]
    assert (o.side, o.qty, o.price, o.ord_type) == ("BUY", 5, 100.0, "limit")
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=False), execution(o.order_id, 1, "new", leaves=5))
    t._on_tick(news("AAPL", 71))  # open counts as held: nothing more
    assert wire.orders[-1] is o
    t._on_tick(news("AAPL", 29))  # to -5 from +5 open
    assert (wire.orders[-1].side, wire.orders[-1].qty) == ("SELL", 10)


def test_logon_after_a_start_takes_positions_and_open_orders_from_logon_ack(make_trader: Any) -> None:
    t, w, wire, _ = make_trader(MR_TABLE)
    t._om_connected(wire)  # a new connection of the same process would say what it saw; here none yet
    assert wire.orders[-1].last_exec_id is None
    feed(t, LogonAck(session="s", heartbeat_ms=250, positions={"AAPL": 3}, last_order_id="strategy-1-41",
                     open_orders=[OpenOrder(order_id="strategy-1-41", symbol="AAPL", side="BUY", qty=10, price=90.0,
                                            cum_qty=3, leaves_qty=7)], last_exec_id=57))
    assert t.position("AAPL") == 3 and t.last_exec_id == 57 and t.n == 41
    [oo] = t.open_orders("AAPL")
    assert (oo.order_id, oo.cum_qty, oo.leaves_qty, oo.age) == ("strategy-1-41", 3, 7, 0)
    feed(t, execution("strategy-1-41", 58, "filled", 7, 90.0, cum=10, leaves=0))
    assert t.position("AAPL") == 10 and t.open_orders("AAPL") == []


def test_a_reconnect_logs_on_with_the_last_exec_id_and_counts_each_fill_once(make_trader: Any) -> None:
    t, w, wire, log = make_trader(MR_TABLE)
    for k, px in enumerate(DIP, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 50))
    o = wire.orders[-1]
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=False), execution(o.order_id, 4, "new", leaves=10),
         execution(o.order_id, 6, "partially_filled", 2, 90.0, cum=2, leaves=8))
    t._om_down("heartbeat_timeout")
    t._on_tick(news("AAPL", 50))  # link down: nothing goes out
    n = len(wire.orders)
    t._om_connected(wire)  # type: ignore[arg-type]
    assert wire.orders[-1].last_exec_id == 6
    # The ordermanager's figures include the fills it now replays (exec 9 and 11 of ours): counted once.
    feed(t, LogonAck(session="s", heartbeat_ms=250, positions={"AAPL": 7}, last_order_id=o.order_id,
                     open_orders=[OpenOrder(order_id=o.order_id, symbol="AAPL", side="BUY", qty=10, price=90.0,
                                            cum_qty=7, leaves_qty=3)], last_exec_id=11),
         execution(o.order_id, 9, "partially_filled", 4, 90.0, cum=6, leaves=4),
         execution(o.order_id, 11, "partially_filled", 1, 90.0, cum=7, leaves=3))
    assert t.position("AAPL") == 7 and [(x.cum_qty, x.leaves_qty) for x in t.open_orders("AAPL")] == [(7, 3)]
    assert t.open_orders("AAPL")[0].age == 1  # it kept its age across the reconnect
    feed(t, execution(o.order_id, 12, "filled", 3, 90.0, cum=10, leaves=0))
    assert t.position("AAPL") == 10 and t.last_exec_id == 12 and len(wire.orders) == n + 1
    assert [r["exec_id"] for r in log("exec_received")] == [4, 6, 9, 11, 12]
    assert [r["counted"] for r in log("exec_received")] == [False, False, True, True, False]


def test_a_reconnect_without_the_oms_last_exec_id_applies_the_replayed_execs(make_trader: Any) -> None:
    t, w, wire, _ = make_trader(MR_TABLE)
    for k, px in enumerate(DIP, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 50))
    o = wire.orders[-1]
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=False), execution(o.order_id, 1, "new", leaves=10))
    t._om_down("heartbeat_timeout")
    t._om_connected(wire)  # type: ignore[arg-type]
    assert wire.orders[-1].last_exec_id == 1
    feed(t, LogonAck(session="s", heartbeat_ms=250, positions={"AAPL": 6}, last_order_id=o.order_id,
                     open_orders=[OpenOrder(order_id=o.order_id, symbol="AAPL", side="BUY", qty=10, price=90.0,
                                            cum_qty=6, leaves_qty=4)]),
         execution(o.order_id, 2, "partially_filled", 6, 90.0, cum=6, leaves=4))
    assert t.position("AAPL") == 6 and [(x.cum_qty, x.leaves_qty) for x in t.open_orders("AAPL")] == [(6, 4)]


def test_an_order_pending_over_a_reconnect_that_ended_meanwhile_is_not_left_open(make_trader: Any) -> None:
    t, w, wire, _ = make_trader(MA)
    feed(t, execution("old-1", 1, "filled", 5, 50.0, cum=5, leaves=0, symbol="MSFT"))  # so last_exec_id = 1
    for k, px in enumerate(RISING, 1):
        w.write(0, px, k, k)
    t._on_tick(news("AAPL", 90))
    o = wire.orders[-1]  # sent; the link drops before its ack
    t._om_down("reset")
    t._om_connected(wire)  # type: ignore[arg-type]
    feed(t, LogonAck(session="s", heartbeat_ms=250, positions={"AAPL": 10, "MSFT": 5}, last_order_id=o.order_id,
                     open_orders=[], last_exec_id=3),
         execution(o.order_id, 2, "new", leaves=10), execution(o.order_id, 3, "filled", 10, 111.0, cum=10))
    assert wire.orders[-1] == o  # resent, same order_id
    feed(t, Ack(order_id=o.order_id, order_no=1, duplicate=True))
    assert t.position("AAPL") == 10 and t.open_orders("AAPL") == [] and t.pending == {} and not t.resending
