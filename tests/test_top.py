"""stack-top as a person uses it: driven headless with Textual's pilot against a
private stack (keys, dialogs, a fault, a halt), against no stack at all, a
snapshot of its main screen, and once in a real terminal (tmux) while a
program is killed and comes back."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from shared import config
from shared.ops.harness import Stack
from shared.ops.top.app import Top

QUIET = {"gateway": {"seed": 42, "news_rate": 5}, "strategy": {"bullish": 100, "bearish": 0}}  # never trades
TRADING = {"gateway": {"seed": 42, "news_rate": 20}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One trading private stack for the pilot tests of this module."""
    s = Stack(tmp_path_factory.mktemp("top"), TRADING)
    try:
        s.start()
        s.wait_for(lambda: s.journal(), timeout=30)
        yield s
    finally:
        s.stop()


def text(app: Top, wid: str) -> str:
    """What a panel shows, as plain text."""
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(app.query_one(f"#{wid}", Static).content)
    return console.export_text()


async def until(pilot: Any, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Let the app run until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.1)


def history(app: Top) -> str:
    """Every event line the view holds (the panel shows the latest that fit)."""
    from shared.ops.top.view import Fmt, events

    assert app.view is not None
    return events(app.view.activity, 1000, Fmt()).plain


def row(panel: str, name: str) -> str:
    return next((ln for ln in panel.splitlines() if ln.startswith(name + " ")), "")


def test_panels_show_the_running_stack(live: Stack) -> None:
    asyncio.run(_test_panels_show_the_running_stack(live))


async def _test_panels_show_the_running_stack(live: Stack) -> None:
    app = Top(live.cfg, live.serverurl, refresh_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: all(" RUNNING " in row(text(app, "programs"), p) for p in live.status()))
        await until(pilot, lambda: "fresh" in text(app, "book"))
        book = text(app, "book")
        for sym in live.cfg.symbols:
            assert re.search(rf"^{sym}\s+\d+\.\d\d\s+[+-]\d+\.\d\d\s+\d+\s+\d+", book, re.M), book
        await until(pilot, lambda: "p50" in text(app, "flow"))
        assert row(text(app, "strategies"), live.cfg.strategy.client_id)
        await until(pilot, lambda: "Received Order" in text(app, "events"))


def test_fault_key_kills_the_gateway_and_the_view_shows_it_heal(live: Stack) -> None:
    asyncio.run(_test_fault_key_kills_the_gateway_and_the_view_shows_it_heal(live))


async def _test_fault_key_kills_the_gateway_and_the_view_shows_it_heal(live: Stack) -> None:
    app = Top(live.cfg, live.serverurl, refresh_s=0.1)
    old = live.pids()["gateway"]
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: " RUNNING " in row(text(app, "programs"), "gateway"))
        await pilot.press("f")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Choose")
        from textual.widgets import OptionList

        menu = app.screen.query_one(OptionList)
        menu.highlighted = [menu.get_option_at_index(i).id for i in range(menu.option_count)].index("kill9_gateway")
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        await pilot.press("y")
        await until(pilot, lambda: live.pids()["gateway"] not in (old, 0), timeout=30)
        await until(pilot, lambda: "gateway EXITED unexpectedly, RUNNING again after" in history(app), 30)
        new = live.pids()["gateway"]
        gw = await until(pilot, lambda: (r := row(text(app, "programs"), "gateway")) and " RUNNING " in r and r)
        assert str(new) in gw and "EXITED unexpectedly" in gw, gw
        assert "FAULT kill program=gateway" in history(app)
    faults_log = [ln for ln in (live.logs / "faults.log").read_text().splitlines() if '"kill"' in ln]
    assert faults_log and f'"target_pid":{old}' in faults_log[-1]


def test_halt_key_halts_and_resumes_a_client(live: Stack) -> None:
    asyncio.run(_test_halt_key_halts_and_resumes_a_client(live))


async def _test_halt_key_halts_and_resumes_a_client(live: Stack) -> None:
    cid = live.cfg.strategy.client_id
    app = Top(live.cfg, live.serverurl, refresh_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        for verb, shows in (("Halt", "HALTED"), ("Resume", " no ")):
            await until(pilot, lambda: row(text(app, "strategies"), cid))
            await pilot.press("h")
            await until(pilot, lambda: app.screen.__class__.__name__ == "Choose")
            await pilot.press("enter")
            await until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
            assert verb in str(getattr(app.screen, "question", ""))
            await pilot.press("y")
            await until(pilot, lambda s=shows: s in row(text(app, "strategies"), cid), timeout=30)  # type: ignore[misc]
        assert "client strategy-1 HALTED" in history(app)
    assert live.events("ordermanager", "client_halted") and live.events("ordermanager", "client_resumed")


def test_help_and_cancel_change_nothing(live: Stack) -> None:
    asyncio.run(_test_help_and_cancel_change_nothing(live))


async def _test_help_and_cancel_change_nothing(live: Stack) -> None:
    app = Top(live.cfg, live.serverurl, refresh_s=0.1)
    pids = live.pids()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Help")
        await pilot.press("escape")
        await pilot.press("r")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Choose")
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        await pilot.press("n")
        await until(pilot, lambda: "cancelled" in text(app, "status"))
        await pilot.press("q")
    assert live.pids() == pids


def test_no_stack_at_all_is_a_state_not_a_traceback(tmp_path: Path) -> None:
    asyncio.run(_test_no_stack_at_all_is_a_state_not_a_traceback(tmp_path))


async def _test_no_stack_at_all_is_a_state_not_a_traceback(tmp_path: Path) -> None:
    cfg = config.replace(config.load(), book={"segment": f"ts_none_{uuid.uuid4().hex[:8]}"},
                         ordermanager={"journal": str(tmp_path / "orders.jsonl")},
                         auditor={"log": str(tmp_path / "audit.log")})
    app = Top(cfg, f"unix://{tmp_path}/no.sock", refresh_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "no supervisor" in text(app, "programs"))
        assert "no segment" in text(app, "book")
        assert "no events yet" in text(app, "events")
        await pilot.press("r")
        await until(pilot, lambda: "nothing to restart" in text(app, "status"))
        await pilot.press("f")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Choose")
        await pilot.press("enter", "y")
        await until(pilot, lambda: "not done" in text(app, "status"))


def test_snapshot_of_the_main_screen(snap_compare: Any, tmp_path: Path) -> None:
    """The main screen of a quiet stack (seeded, not trading), every moving figure masked."""
    with Stack(tmp_path / "snap", QUIET) as s:
        time.sleep(1.0)
        app = Top(s.cfg, s.serverurl, mask=True, backlog=0, refresh_s=0.2)

        async def settle(pilot: Any) -> None:
            def cpu_shown() -> bool:  # the CPU column needs two samples a second apart
                rows = [row(text(app, "programs"), p) for p in s.programs]
                return all(len(r.split()) > 6 and r.split()[6] == "###" for r in rows)

            await until(pilot, lambda: "fresh" in text(app, "book") and cpu_shown())
            await pilot.pause(0.5)

        assert snap_compare(app, terminal_size=(100, 30), run_before=settle)


# --- a real terminal ----------------------------------------------------------


def _pane(sock: str) -> str:
    return subprocess.run(["tmux", "-L", sock, "capture-pane", "-p"], capture_output=True, text=True).stdout


def _wait_pane(sock: str, cond: Callable[[str], Any], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = _pane(sock)
        if cond(screen):
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen never showed it:\n{screen}")
        time.sleep(0.1)


def _line(screen: str, name: str) -> str:
    return next((ln for ln in screen.splitlines() if ln.startswith(name + " ")), "")


# A person's terminal: not pytest's environment (its COLUMNS, its plugins' variables).
TERMINAL_ENV = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "USER", "TMPDIR")}


def test_stack_top_in_tmux_shows_a_killed_program_leave_and_come_back(tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux is missing: deploy/install installs it"
    sock = f"tstop{uuid.uuid4().hex[:8]}"
    stack_top = Path(sys.executable).with_name("stack-top")
    with Stack(tmp_path / "tmux", TRADING) as s:
        old = s.pids()["orderbook"]
        cmd = f"STACK_CONFIG={s.config_path} {stack_top} --serverurl {s.serverurl} --refresh 0.2"
        try:
            subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-x", "100", "-y", "30", cmd], check=True,
                           env=TERMINAL_ENV)
            _wait_pane(sock, lambda sc: f"RUNNING {old}" in " ".join(_line(sc, "orderbook").split()))
            subprocess.run(["tmux", "-L", sock, "send-keys", "f"], check=True)
            _wait_pane(sock, lambda sc: "Inject which fault?" in sc)
            # The menu lists kill9_<program> first, in harness order; Down to kill9_orderbook.
            from shared.ops.chaos.faults import MENU

            keys = ["Down"] * list(MENU).index("kill9_orderbook") + ["Enter"]
            subprocess.run(["tmux", "-L", sock, "send-keys", *keys], check=True)
            _wait_pane(sock, lambda sc: "Inject fault kill9_orderbook?" in sc)
            subprocess.run(["tmux", "-L", sock, "send-keys", "y"], check=True)
            gone = _wait_pane(sock, lambda sc: _line(sc, "orderbook") and " RUNNING " not in _line(sc, "orderbook"))
            assert re.search(r"orderbook\s+(STARTING|EXITED|BACKOFF)", gone), gone
            back = _wait_pane(sock, lambda sc: "orderbook EXITED unexpectedly, RUNNING again after" in sc
                              and " RUNNING " in _line(sc, "orderbook"))
            new = s.pids()["orderbook"]
            assert new != old and str(new) in _line(back, "orderbook"), back
            subprocess.run(["tmux", "-L", sock, "send-keys", "q"], check=True)
            _wait_pane(sock, lambda sc: "tradestack" not in sc, timeout=10)
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
