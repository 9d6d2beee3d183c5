"""The fault tool (``deploy/fault``): break the stack on purpose, the way
users do, and log every fault as one JSON line (daemon ``faults``).

- ``kill`` a program (or supervisord itself) with any signal, ``freeze`` it (SIGSTOP) for a while;
- a fault ``proxy`` (``shared.ops.chaos.proxy``) placed on a link with ``[links]``,
  with toxics like Toxiproxy's, changed at run time over a small control socket;
- remove or corrupt the book segment, tear a journal's last line, hide a
  file a daemon needs at start, hold a port before a daemon binds it;
- ``MENU``: the faults a chaos soak may draw at random.

Programs are found through supervisord's XML-RPC (``getProcessInfo``); a
target is a ``harness.Stack`` or a supervisord server URL.
"""

from __future__ import annotations

import configparser
import contextlib
import datetime as dt
import os
import random
import signal
import socket
import struct
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from shared import book, logs
from shared.ops.chaos.proxy import toxic
from shared.ops.chaos.proxyproc import FaultError as FaultError  # defined below us, raised by both
from shared.ops.chaos.proxyproc import Proxy
from shared.ops.chaos.proxyproc import control as control  # re-exported: the fault tool's API
from shared.ops.chaos.proxyproc import free_port as free_port

DAEMON = "faults"
FREEZE_SIGNALS = (signal.SIGSTOP, signal.SIGCONT)


# --- logging ------------------------------------------------------------------

_log: Any = None


def logger() -> Any:
    global _log
    if _log is None:
        _log = logs.configure(DAEMON)
    return _log


def configure_log(stream: IO[bytes] | None = None) -> Any:
    """Send the fault records to ``stream`` (default stdout); returns the logger."""
    global _log
    _log = logs.configure(DAEMON, stream)
    return _log


def emit(event: str, target: Any = None, level: str = "warning", **fields: Any) -> None:
    """Log one fault record to stdout; for a Stack, also to its logs/faults.log."""
    log = logger()
    getattr(log, level)(event, **fields)
    logs.flush()
    logdir = getattr(target, "logs", None)
    if isinstance(logdir, Path):
        ts = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        rec = {"ts": ts, "level": level, "event": event, "daemon": DAEMON, "pid": os.getpid(), **fields}
        with open(logdir / "faults.log", "ab") as f:
            f.write(orjson.dumps(rec, default=str) + b"\n")


# --- programs -----------------------------------------------------------------


def serverurl_of(conf: str | os.PathLike[str]) -> str:
    """The supervisorctl serverurl of a supervisord.conf."""
    cp = configparser.RawConfigParser()
    cp.read(conf)
    return cp.get("supervisorctl", "serverurl", fallback="unix:///tmp/tradestack/supervisor.sock")


def _rpc(target: Any) -> Any:
    if hasattr(target, "rpc"):
        return target.rpc
    from shared.ops import ctl

    return ctl.rpc(str(target)).supervisor


def pid_of(target: Any, program: str) -> int:
    """The pid supervisord reports for a RUNNING (or STARTING) program."""
    try:
        info = _rpc(target).getProcessInfo(program)
    except xmlrpc.client.Fault as e:
        raise FaultError(f"{program}: {e.faultString}") from None
    except OSError as e:
        where = getattr(target, "serverurl", target)
        raise FaultError(f"supervisord at {where} is not reachable: {e.strerror or e}") from None
    if not info["pid"]:
        raise FaultError(f"{program} has no process ({info['statename']})")
    return int(info["pid"])


def _signum(sig: int | str) -> signal.Signals:
    if isinstance(sig, str):
        name = sig.upper()
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    return signal.Signals(sig)


SUPERVISORD = "supervisord"  # as a program name: supervisord itself


def supervisord_pid(target: Any) -> int:
    """supervisord's own pid (its XML-RPC ``getPID``)."""
    try:
        return int(_rpc(target).getPID())
    except OSError as e:
        where = getattr(target, "serverurl", target)
        raise FaultError(f"supervisord at {where} is not reachable: {e.strerror or e}") from None


def kill(target: Any, program: str, sig: int | str = signal.SIGKILL) -> int:
    """Send ``sig`` to a supervised program, or to supervisord itself
    (``program`` = ``supervisord``); returns the pid it hit."""
    s = _signum(sig)
    pid = supervisord_pid(target) if program == SUPERVISORD else pid_of(target, program)
    os.kill(pid, s)
    emit("fault_injected", target, fault="kill", program=program, target_pid=pid, signal=s.name)
    return pid


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    """Wait until a killed process is gone or a zombie (its sockets and pipes are closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.0005)
    raise FaultError(f"pid {pid} survived SIGKILL")


@contextlib.contextmanager
def frozen(target: Any, program: str) -> Iterator[int]:
    """SIGSTOP a program for the ``with`` block, SIGCONT after it, whatever happens."""
    pid = pid_of(target, program)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    emit("fault_injected", target, fault="freeze", program=program, target_pid=pid, signal="SIGSTOP")
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        emit("fault_cleared", target, fault="freeze", program=program, target_pid=pid, signal="SIGCONT",
             frozen_ms=round((time.monotonic() - t0) * 1000))


def freeze(target: Any, program: str, seconds: float) -> int:
    """Freeze a program for ``seconds`` (blocking); returns its pid."""
    with frozen(target, program) as pid:
        time.sleep(seconds)
    return pid


# --- the segment --------------------------------------------------------------


def _segment_name(target: Any) -> str:
    return str(getattr(target, "segment", None) or target)


def remove_segment(target: Any) -> bool:
    """Unlink the book segment under the running stack; True if it existed."""
    name = _segment_name(target)
    existed = book.unlink(name)
    emit("fault_injected", target, fault="segment_remove", segment=name, existed=existed)
    return existed


CORRUPT_MODES = ("torn", "records", "header")


def corrupt_segment(target: Any, mode: str = "torn", seed: int | None = None) -> list[str]:
    """Damage the segment in place; returns the symbols (or header) touched.

    ``torn``: every record's seq made odd, as a writer killed mid-write
    leaves it; ``records``: random bytes over every record; ``header``: the
    magic wrecked, so nothing attaches any more.
    """
    if mode not in CORRUPT_MODES:
        raise FaultError(f"corrupt mode {mode!r}: expected one of {', '.join(CORRUPT_MODES)}")
    name = _segment_name(target)
    rng = random.Random(seed)
    if mode == "header":
        try:
            fd = os.open(book.path_of(name), os.O_RDWR)
        except FileNotFoundError:
            raise FaultError(f"segment {name} does not exist") from None
        try:
            os.pwrite(fd, bytes(rng.randrange(256) for _ in range(8)), 0)
        finally:
            os.close(fd)
        touched = ["header"]
    else:
        try:
            seg = book.Segment.attach(name)
        except book.BookError as e:
            raise FaultError(str(e)) from None
        try:
            buf = seg.buf
            assert buf is not None
            for i in range(len(seg.symbols)):
                off = seg.offset(i)
                if mode == "torn":
                    seq = struct.unpack_from("<Q", buf, off)[0]
                    struct.pack_into("<Q", buf, off, seq | 1)
                else:
                    buf[off : off + book.RECORD_SIZE] = bytes(rng.randrange(256) for _ in range(book.RECORD_SIZE))
            touched = list(seg.symbols)
        finally:
            seg.close()
    emit("fault_injected", target, fault="segment_corrupt", segment=name, mode=mode, touched=touched)
    return touched


# --- files and ports ----------------------------------------------------------


def tear_last_line(path: str | os.PathLike[str], target: Any = None) -> int:
    """Append the first half of the file's last line, no newline: what a
    crash mid-write leaves. Returns the bytes appended."""
    p = Path(path)
    lines = p.read_bytes().splitlines()
    if not lines:
        raise FaultError(f"{p}: no line to tear")
    torn = lines[-1][: max(1, len(lines[-1]) // 2)]
    with open(p, "ab") as f:
        f.write(torn)
    emit("fault_injected", target, fault="torn_line", path=str(p), bytes=len(torn))
    return len(torn)


@contextlib.contextmanager
def hidden(path: str | os.PathLike[str], target: Any = None) -> Iterator[Path]:
    """Move a file away for the ``with`` block (a daemon that needs it at start fails)."""
    p = Path(path)
    aside = p.with_name(p.name + ".hidden-by-fault")
    os.rename(p, aside)
    emit("fault_injected", target, fault="file_hidden", path=str(p))
    try:
        yield p
    finally:
        os.rename(aside, p)
        emit("fault_cleared", target, fault="file_hidden", path=str(p))


@contextlib.contextmanager
def hold_port(port: int, host: str = "127.0.0.1", target: Any = None, listen: bool = True) -> Iterator[socket.socket]:
    """Hold a TCP port (bound and, by default, listening) for the ``with`` block."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        if listen:
            s.listen(16)
    except OSError:
        s.close()
        raise
    emit("fault_injected", target, fault="port_held", host=host, port=port)
    try:
        yield s
    finally:
        s.close()
        emit("fault_cleared", target, fault="port_held", host=host, port=port)


# --- the menu -----------------------------------------------------------------

Fault = Callable[[Any], dict[str, Any]]


def _hold_s(stack: Any) -> float:
    """A freeze long enough to trip every heartbeat timeout and the staleness."""
    c = stack.cfg
    return max(3 * c.gateway.heartbeat_ms, 3 * c.ordermanager.heartbeat_ms, 3 * c.exchange.heartbeat_ms,
               c.book.stale_ms) / 1000 * 2 + 0.5


def _kill_fault(program: str, sig: signal.Signals) -> Fault:
    def run(stack: Any) -> dict[str, Any]:
        pid = kill(stack, program, sig)
        return {"fault": f"{sig.name.lower()}_{program}", "restarted": {program: pid}}
    return run


def _freeze_fault(program: str) -> Fault:
    def run(stack: Any) -> dict[str, Any]:
        pid = freeze(stack, program, _hold_s(stack))
        return {"fault": f"freeze_{program}", "restarted": {}, "target_pid": pid}
    return run


def _kill9_supervisord(stack: Any) -> dict[str, Any]:
    # Nothing restarts supervisord: "up" asks the caller to do what deploy/up does
    # (Stack.up: stop the orphans in order, start afresh); its programs all get new pids.
    wait_dead(kill(stack, SUPERVISORD, signal.SIGKILL))
    return {"fault": "kill9_supervisord", "restarted": {}, "up": True}


def _segment_remove(stack: Any) -> dict[str, Any]:
    remove_segment(stack)
    return {"fault": "segment_remove", "restarted": {}}


def _segment_torn(stack: Any) -> dict[str, Any]:
    corrupt_segment(stack, "torn")
    return {"fault": "segment_torn", "restarted": {}}


PROGRAMS = ("auditor", "bootstrap", "exchange", "gateway", "metrics", "orderbook", "ordermanager", "strategy")


def program_menu(programs: tuple[str, ...]) -> dict[str, Fault]:
    """kill -9, SIGTERM and freeze of each program (a stack's ``strategy-<name>`` too)."""
    return {
        **{f"kill9_{p}": _kill_fault(p, signal.SIGKILL) for p in programs},
        **{f"sigterm_{p}": _kill_fault(p, signal.SIGTERM) for p in programs if p != "auditor"},
        **{f"freeze_{p}": _freeze_fault(p) for p in programs if p not in ("auditor", "bootstrap")},
    }


# name -> fault(stack) -> {"fault", "restarted": {program: old pid}, …}; each
# one the stack heals from by itself, but for those returning "up": True
# (supervisord killed), after which the caller runs ``Stack.up()`` as a person
# runs deploy/up. Blocking ones (freeze) return after the thaw.
MENU: dict[str, Fault] = {
    "kill9_supervisord": _kill9_supervisord,
    **program_menu(PROGRAMS),
    "segment_remove": _segment_remove,
    "segment_torn": _segment_torn,
}

# Toxics a soak may put on a link for a while (see ``toxic_menu``).
LINK_TOXICS: dict[str, dict[str, Any]] = {
    "latency": toxic("latency", ms=150, jitter=50),
    "bandwidth": toxic("bandwidth", rate=500),
    "reset_peer": toxic("reset_peer", timeout=200),
    "blackhole": toxic("blackhole"),
    "slicer": toxic("slicer", average_size=3, size_variation=2),
    "limit_data": toxic("limit_data", bytes=700),
    "garbage": toxic("garbage", probability=0.2, size=8),
}


def toxic_menu(proxies: dict[str, Proxy], seconds: float = 2.0) -> dict[str, Fault]:
    """Menu entries ``toxic_<kind>_<link>`` for the proxies on a stack's links:
    each turns one toxic on for ``seconds``, then off."""
    def entry(link: str, kind: str) -> Fault:
        def run(stack: Any) -> dict[str, Any]:
            with proxies[link].toxics(LINK_TOXICS[kind]):
                time.sleep(seconds)
            return {"fault": f"toxic_{kind}_{link}", "restarted": {}}
        return run
    return {f"toxic_{k}_{link}": entry(link, k) for link in proxies for k in LINK_TOXICS}
