"""A real Prometheus beside a private stack ([prometheus] enabled, 1 s scrapes and
evaluations): a program killed and kept from starting fires TradestackProgramDown
at Prometheus's HTTP API after its 10 s, and the restart resolves it."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared import config, promconf
from shared.ops import ctl
from shared.ops.chaos import faults
from shared.ops.chaos.invariants import healed
from shared.ops.harness import Stack, free_port

VICTIM = "strategy"  # nothing else depends on it


def api(stack: Stack, path: str) -> Any:
    """The ``data`` of one answer of the stack's Prometheus HTTP API, or None while it cannot answer."""
    p = stack.cfg.prometheus
    try:
        with urllib.request.urlopen(f"http://{p.host}:{p.port}{path}", timeout=5) as r:
            return json.load(r)["data"]
    except (OSError, ValueError, KeyError):
        return None


def alerts(stack: Stack, name: str, **labels: str) -> list[dict[str, Any]]:
    """Active (pending or firing) alerts called ``name`` with these labels."""
    data = api(stack, "/api/v1/alerts") or {"alerts": []}
    return [a for a in data["alerts"] if a["labels"].get("alertname") == name
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def scraped(stack: Stack) -> bool:
    """The metrics program is a healthy target and the shipped rules are loaded."""
    targets, rules = api(stack, "/api/v1/targets"), api(stack, "/api/v1/rules")
    return bool(targets and rules) and any(t["health"] == "up" for t in targets["activeTargets"]) and any(
        r["name"] == "TradestackProgramDown" for g in rules["groups"] for r in g["rules"])


def until(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    """Poll ``predicate`` every 0.2 s until truthy, within a deadline; its value."""
    deadline = time.monotonic() + timeout
    while not (v := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.2)
    return v


def test_program_down_fires_and_resolves(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    try:
        promconf.check(config.parse({"prometheus": {"enabled": True}}))
    except config.ConfigError as e:
        pytest.fail(str(e))  # the binary is missing: say so, in one line
    # A start that fails never counts as RUNNING (a daemon checks its config before its imports,
    # well within startsecs), so the 10 s of TradestackProgramDown run from the kill.
    s = make_stack({"prometheus": {
        "enabled": True, "port": free_port(), "data_dir": str(tmp_path / "prometheus"),
        "scrape_interval": "1s", "evaluation_interval": "1s"}})
    s.wait_running(("prometheus",))
    until("Prometheus scraping the metrics program with the rules", lambda: scraped(s), 60)
    until(f"{VICTIM} seen RUNNING by Prometheus", lambda: not alerts(s, "TradestackProgramDown", program=VICTIM), 30)

    # Kill it while its config is away: each restart exits within its startsecs (bad config), so
    # supervisord never has it RUNNING again (BACKOFF, then FATAL) until the config is back.
    with faults.hidden(s.config_path, s):
        old = faults.kill(s, VICTIM, signal.SIGKILL)
        t_kill = time.monotonic()
        until(f"{VICTIM} pending", lambda: alerts(s, "TradestackProgramDown", program=VICTIM), 15)
        fired = until("TradestackProgramDown firing", lambda: [
            a for a in alerts(s, "TradestackProgramDown", program=VICTIM) if a["state"] == "firing"], 45)[0]
        t_fired = time.monotonic()
    assert t_fired - t_kill >= 10, "fired before its 10 s"
    assert fired["labels"]["severity"] == "critical" and fired["labels"]["job"] == promconf.JOB
    assert fired["annotations"]["summary"].startswith(f"{VICTIM} on ")
    assert "TradestackProgramDown" in fired["annotations"]["runbook"]
    assert not alerts(s, "TradestackProgramDown", program="gateway")

    # The config is back: supervisord's next try starts it, or (FATAL) the operator does.
    state = until(f"{VICTIM} RUNNING or FATAL", lambda: (st := s.status()[VICTIM]) in ("RUNNING", "FATAL") and st, 30)
    if state == "FATAL":
        s.ctl("start", VICTIM, check=True)
    until("TradestackProgramDown resolved", lambda: not alerts(s, "TradestackProgramDown", program=VICTIM), 30)
    print(f"TradestackProgramDown fired {t_fired - t_kill:.1f} s after the kill, resolved "
          f"{time.monotonic() - t_fired:.1f} s after that ({VICTIM} {state} on the way)")
    healed(s, restarted={VICTIM: old})

    pid = s.pids()["prometheus"]
    s.stop()  # supervisord stops Prometheus with the rest: no process is left behind
    st = ctl.proc_stat(pid)
    assert st is None or st[0] in "ZX", f"Prometheus (pid {pid}) outlived its supervisord"
