"""Signals, the main loop and an orderly shutdown, as gunicorn does it.

A signal handler only records the signal; the loop notices, then shuts the
component down in order (stop intake, drain, flush, close) within a
deadline kept below supervisord's ``stopwaitsecs``. A second signal forces
the exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from shared import config as config_mod
from shared import logs

DRAIN_S = 5.0  # supervisord.conf's stopwaitsecs is 10


class Component(Protocol):
    """What ``run`` drives: one turn of work, then an orderly stop."""

    def step(self) -> None: ...

    def shutdown(self, deadline: float) -> None: ...


class Stop:
    """Records SIGTERM/SIGINT; the second one exits at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.reason is not None:
            os._exit(1)
        self.reason = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.reason is not None


def load_config_or_exit(daemon: str) -> config_mod.Config:
    """Load the config; a bad one is one clear line on stderr and exit 2."""
    try:
        return config_mod.load()
    except config_mod.ConfigError as e:
        print(f"{daemon}: bad config: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(daemon: str, build: Callable[[config_mod.Config, Any], Component], log_stream: Any = None) -> None:
    """Entry point of every daemon: config, logging, build, loop, shutdown."""
    cfg = load_config_or_exit(daemon)
    log = logs.configure(daemon, log_stream)
    stop = Stop()
    log.info("started", config=cfg.path)
    logs.flush()
    try:
        try:
            comp = build(cfg, log)
        except config_mod.ConfigError as e:  # found only once built (a strategy's rule)
            print(f"{daemon}: bad config: {e}", file=sys.stderr)
            log.error("bad_config", error=str(e))
            raise SystemExit(2) from None
        while not stop.requested:
            comp.step()
            logs.flush(older_than=logs.LINGER_S)
    except SystemExit as e:
        log.error("stopped", reason="fatal", code=e.code)
        logs.flush()
        raise
    except Exception:
        log.exception("crashed")
        logs.flush()
        raise SystemExit(1) from None
    log.info("stopping", reason=stop.reason)
    logs.flush()
    comp.shutdown(time.monotonic() + DRAIN_S)
    log.info("stopped")
    logs.flush()
