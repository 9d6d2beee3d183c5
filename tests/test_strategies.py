"""Several strategies (contract §8): three programs with three different rules
(one of them a user's, from outside the repository) trading at once under the
real supervisord, through a kill -9 and a restart of each, with the fault
suite's invariants held per client; a rule that raises; config errors."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import structlog

from shared import book, config, logs
from shared.book import Segment, Writer
from shared.config import ROOT
from shared.ops import faults
from shared.ops.ctl import strategy_programs
from shared.ops.harness import PROGRAMS, Stack
from shared.ops.invariants import healed
from shared.protocol import News, decode
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
        "revert": {"rule": "shared.rule:MeanReversion", "symbols": ["AAPL", "MSFT"], "window": 10,
                   "entry_z": 0.8, "exit_z": 0.3, "qty": 7},
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
    assert [(o.side, o.qty, o.price) for o in wire.orders] == [("BUY", 10, 110.0)]
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
