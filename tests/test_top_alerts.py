"""stack-top's alerts panel ([prometheus] enabled): Prometheus's /api/v1/alerts parsed, asked in
the background at most every few seconds, and a Prometheus that answers, is slow or is down, each
shown while the rest of the view keeps refreshing."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from shared import config
from shared.ops.harness import free_port
from shared.ops.top import alerts as al
from shared.ops.top.app import Top
from shared.ops.top.view import Fmt
from shared.ops.top.view import alerts as draw

ANSWER = {"status": "success", "data": {"alerts": [
    {"labels": {"alertname": "TradestackBookStale", "instance": "h1:9108", "severity": "critical"},
     "annotations": {"summary": "the book on h1:9108 is stale or missing"}, "state": "pending"},
    {"labels": {"alertname": "TradestackProgramDown", "program": "strategy", "instance": "h1:9108",
                "severity": "critical"},
     "annotations": {"summary": "strategy on h1:9108 is not RUNNING"}, "state": "firing"},
]}}


def test_parse_puts_firing_first_and_names_what_each_is_about() -> None:
    got = al.parse(ANSWER)
    assert [(a.name, a.state, a.about) for a in got] == [
        ("TradestackProgramDown", "firing", "strategy"), ("TradestackBookStale", "pending", "h1:9108")]
    assert al.parse({"status": "success", "data": {"alerts": []}}) == ()
    bad: Any
    for bad in ({}, {"data": None}, {"data": {"alerts": [{"labels": {}}]}}, []):
        with pytest.raises(ValueError):
            al.parse(bad)


def test_view_lines() -> None:
    f = Fmt()
    shown = draw(al.Alerts("", al.parse(ANSWER)), f).plain.splitlines()
    assert shown[0].split()[:3] == ["FIRING", "TradestackProgramDown", "strategy"]
    assert shown[1].split()[:2] == ["PENDING", "TradestackBookStale"]
    assert draw(al.Alerts(""), f).plain == "none firing"
    assert draw(al.Alerts("no answer from Prometheus at x (refused)"), f).plain.startswith("no answer")


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def settle(w: al.AlertWatch) -> None:
    """Wait for the background question to end."""
    deadline = time.monotonic() + 5
    while w._busy.locked():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_asks_at_most_every_few_seconds_and_never_twice_at_once() -> None:
    asked: list[float] = []
    clock = Clock()
    def ask(url: str, timeout: float) -> tuple[al.Alert, ...]:
        asked.append(clock.t)
        return al.parse(ANSWER)

    w = al.AlertWatch("http://p", every_s=3.0, ask=ask, clock=clock)
    assert w.state.status.startswith("asking")  # before the first answer
    w.poll()
    settle(w)
    for dt in (0.3, 0.3, 1.0, 1.0):  # 2.6 s: not yet
        clock.t += dt
        assert w.poll().firing[0].name == "TradestackProgramDown"
    settle(w)
    assert asked == [100.0]
    clock.t += 0.4
    w.poll()
    settle(w)
    assert asked == [100.0, 103.0]


def test_slow_and_down_are_said_and_poll_never_waits() -> None:
    clock, release = Clock(), threading.Event()

    def slow(url: str, timeout: float) -> tuple[al.Alert, ...]:
        release.wait(10)
        raise TimeoutError("timed out")

    w = al.AlertWatch("http://p", timeout_s=1.0, ask=slow, clock=clock)
    t0 = time.monotonic()
    w.poll()
    clock.t += 5.0
    assert w.poll().status == "Prometheus at http://p is slow: no answer in 5 s"
    assert time.monotonic() - t0 < 0.5
    release.set()
    settle(w)
    assert w.poll().status == "no answer from Prometheus at http://p (timed out)"


class FakePrometheus(BaseHTTPRequestHandler):
    """/api/v1/alerts answering ``ANSWER`` after ``delay`` seconds."""

    delay = 0.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(self.delay)
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    """Quiet when stack-top has stopped waiting for a slow answer (a broken pipe)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[ThreadingHTTPServer]:
    srv = Server(("127.0.0.1", 0), FakePrometheus)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def text(app: Top, wid: str) -> str:
    """What a panel shows, as plain text."""
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(app.query_one(f"#{wid}", Static).content)
    return console.export_text()


async def until(pilot: Any, cond: Any, timeout: float = 20.0) -> Any:
    """Let the app run until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.1)
    return v


def _cfg(tmp_path: Path, port: int) -> config.Config:
    """No stack at all (no supervisord, no segment), a Prometheus configured at ``port``."""
    return config.replace(config.load(), book={"segment": f"ts_none_{uuid.uuid4().hex[:8]}"},
                          ordermanager={"journal": str(tmp_path / "orders.jsonl")},
                          auditor={"log": str(tmp_path / "audit.log")},
                          prometheus={"enabled": True, "port": port})


def test_top_shows_the_alerts_then_says_prometheus_is_slow_and_keeps_refreshing(
        tmp_path: Path, prometheus: ThreadingHTTPServer) -> None:
    async def run() -> None:
        app = Top(_cfg(tmp_path, prometheus.server_address[1]), f"unix://{tmp_path}/no.sock", refresh_s=0.1)
        assert app.alerts is not None
        app.alerts.every_s = 0.5
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: "FIRING  TradestackProgramDown" in text(app, "alerts"))
            assert "PENDING TradestackBookStale" in text(app, "alerts")
            FakePrometheus.delay = 4.0  # slower than its 1 s timeout
            try:
                await until(pilot, lambda: "no answer from Prometheus" in text(app, "alerts"), timeout=10)
                at = app.view.at if app.view else 0
                await until(pilot, lambda: app.view is not None and app.view.at > at + 0.5)  # still refreshing
                assert "no supervisor" in text(app, "programs")
            finally:
                FakePrometheus.delay = 0.0

    asyncio.run(run())


def test_top_with_prometheus_down_says_so(tmp_path: Path) -> None:
    async def run() -> None:
        app = Top(_cfg(tmp_path, free_port()), f"unix://{tmp_path}/no.sock", refresh_s=0.1)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: "no answer from Prometheus at http://127.0.0.1:" in text(app, "alerts"))
            assert "refused" in text(app, "alerts")
            assert "no segment" in text(app, "book")

    asyncio.run(run())


def test_no_alerts_panel_without_prometheus(tmp_path: Path) -> None:
    cfg = config.replace(_cfg(tmp_path, free_port()), prometheus={"enabled": False})
    assert Top(cfg, f"unix://{tmp_path}/no.sock").alerts is None
