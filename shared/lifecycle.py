"""Signals, the main loop and an orderly shutdown, as gunicorn does it.

A signal handler only records the signal; the loop notices, then shuts the
component down in order (stop intake, drain, flush, close) within a
deadline kept below supervisord's ``stopwaitsecs``. A second signal forces
the exit.

A daemon also ends, in the same order, when its supervisor is gone
(``stopping`` with reason ``supervisor_gone``): the kernel sends SIGTERM when
the parent dies (``PR_SET_PDEATHSIG``), and each turn of the loop checks the
parent too. supervisord forks and execs each program itself, so the parent
is supervisord.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from shared import config as config_mod
from shared import logs

DRAIN_S = 5.0  # supervisord.conf's stopwaitsecs is 10
PR_SET_PDEATHSIG = 1
SUPERVISOR_GONE = "supervisor_gone"
# Where supervisord wrote our stdout and stderr (deploy/supervisord.conf sets them): once it is
# gone its pipes have no reader, so the last records go straight to those files.
LOG_ENV = {1: "STACK_LOG_STDOUT", 2: "STACK_LOG_STDERR"}


class Component(Protocol):
    """What ``run`` drives: one turn of work, then an orderly stop."""

    def step(self) -> None: ...

    def shutdown(self, deadline: float) -> None: ...


class StopRequested(Exception):
    """Raised by a component's ``step`` to stop in order, with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_supervisord(pid: int) -> bool:
    """True if process ``pid`` runs supervisord: its program, or ``-m supervisor.supervisord``, is one
    word of its command line (a mere mention, as in ``pytest -k supervisord``, is not)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a) == b"supervisord" or a == b"supervisor.supervisord" for a in args[:3])


class Parent:
    """The process that started this one; the kernel signals us when it dies."""

    def __init__(self) -> None:
        self.pid = os.getppid()
        self.pdeathsig = False
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            self.pdeathsig = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        # Started by supervisord but already adopted by another (it died before the prctl above).
        self.orphaned_at_start = bool(os.environ.get("SUPERVISOR_ENABLED")) and not is_supervisord(self.pid)

    def gone(self) -> bool:
        """True once the parent is not the one we started with (we were re-parented)."""
        return self.orphaned_at_start or os.getppid() != self.pid


class Stop:
    """Records SIGTERM/SIGINT/SIGHUP; the second one exits at once, unless the
    supervisor is gone (the kernel's SIGTERM, then ``deploy/up``'s, must not
    cut the drain short)."""

    def __init__(self, parent: Parent | None = None) -> None:
        self.reason: str | None = None
        self.parent = parent
        # SIGHUP too: the kernel sends it (then SIGCONT) to a frozen daemon whose supervisord dies.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.parent is not None and self.parent.gone():
            self.reason = self.reason or SUPERVISOR_GONE
            return
        if self.reason is not None:
            os._exit(1)
        self.reason = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.reason is not None


def adopt_logs() -> None:
    """Point stdout and stderr at the files supervisord wrote them to (or /dev/null)."""
    for fd, var in LOG_ENV.items():
        try:
            new = os.open(os.environ.get(var) or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            continue
        os.dup2(new, fd)
        os.close(new)


def run(daemon: str, build: Callable[[config_mod.Config, Any], Component], log_stream: Any = None,
        cfg: config_mod.Config | None = None) -> None:
    """Entry point of every daemon: config (unless loaded already, by ``config.load_or_exit``),
    logging, build, loop, shutdown."""
    parent = Parent()
    cfg = cfg if cfg is not None else config_mod.load_or_exit(daemon)
    log = logs.configure(daemon, log_stream)
    stop = Stop(parent)
    log.info("started", config=cfg.path, parent=parent.pid, pdeathsig=parent.pdeathsig)
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
            if parent.gone():
                stop.reason = SUPERVISOR_GONE
            logs.flush(older_than=logs.LINGER_S)
    except StopRequested as e:
        stop.reason = e.reason
    except SystemExit as e:
        _orphan_logs(parent)
        log.error("stopped", reason="fatal", code=e.code)
        logs.flush()
        raise
    except Exception:
        _orphan_logs(parent)
        log.exception("crashed")
        logs.flush()
        raise SystemExit(1) from None
    if _orphan_logs(parent, stop.reason):
        log.warning("stopping", reason=stop.reason, parent=parent.pid, ppid=os.getppid())
    else:
        log.info("stopping", reason=stop.reason)
    logs.flush()
    comp.shutdown(time.monotonic() + DRAIN_S)
    log.info("stopped")
    logs.flush()


def _orphan_logs(parent: Parent, reason: str | None = None) -> bool:
    """If the supervisor is gone, write the rest of the log to its files; True then."""
    if reason != SUPERVISOR_GONE and not parent.gone():
        return False
    adopt_logs()
    return True
