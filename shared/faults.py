"""The fault tool (``deploy/fault``): break the stack on purpose, the way
users do, and log every fault as one JSON line (daemon ``faults``).

- ``kill`` a program with any signal, ``freeze`` it (SIGSTOP) for a while;
- a fault ``proxy`` placed on a link with ``[links]``, with toxics like
  Toxiproxy's, changed at run time over a small control socket;
- remove or corrupt the book segment, tear a journal's last line, hide a
  file a daemon needs at start, hold a port before a daemon binds it;
- ``MENU``: the faults a chaos soak may draw at random.

Programs are found through supervisord's XML-RPC (``getProcessInfo``); a
target is a ``harness.Stack`` or a supervisord server URL.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime as dt
import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from shared import book, config, logs

DAEMON = "faults"
FREEZE_SIGNALS = (signal.SIGSTOP, signal.SIGCONT)


class FaultError(Exception):
    """A fault could not be injected (no such program, not running, …)."""


# --- logging ------------------------------------------------------------------

_log: Any = None


def _logger() -> Any:
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
    log = _logger()
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
    from shared import ctl

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


def kill(target: Any, program: str, sig: int | str = signal.SIGKILL) -> int:
    """Send ``sig`` to a supervised program; returns the pid it hit."""
    s = _signum(sig)
    pid = pid_of(target, program)
    os.kill(pid, s)
    emit("fault_injected", target, fault="kill", program=program, pid=pid, signal=s.name)
    return pid


@contextlib.contextmanager
def frozen(target: Any, program: str) -> Iterator[int]:
    """SIGSTOP a program for the ``with`` block, SIGCONT after it, whatever happens."""
    pid = pid_of(target, program)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    emit("fault_injected", target, fault="freeze", program=program, pid=pid, signal="SIGSTOP")
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        emit("fault_cleared", target, fault="freeze", program=program, pid=pid, signal="SIGCONT",
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


# --- toxics -------------------------------------------------------------------

# name -> parameters and defaults; every toxic also takes ``stream``:
# "both" (default), "upstream" (client to server) or "downstream".
TOXICS: dict[str, dict[str, float]] = {
    "latency": {"ms": 100, "jitter": 0},  # each chunk delayed ms ± jitter, order kept
    "bandwidth": {"rate": 1000},  # bytes per second
    "reset_peer": {"timeout": 0},  # ms after connect (or after the toxic is set): RST both ends
    "blackhole": {},  # hold the connection and its bytes, pass nothing until removed
    "slicer": {"average_size": 2, "size_variation": 1, "delay_us": 0},  # tiny writes
    "limit_data": {"bytes": 1000},  # close after this many bytes, wherever a frame stands
    "garbage": {"probability": 0.1, "size": 8},  # random bytes into a chunk
}
STREAMS = ("both", "upstream", "downstream")


def toxic(kind: str, **params: Any) -> dict[str, Any]:
    """A validated toxic: ``toxic("latency", ms=200, jitter=50, stream="downstream")``."""
    if kind not in TOXICS:
        raise FaultError(f"unknown toxic {kind!r}: expected one of {', '.join(TOXICS)}")
    stream = params.pop("stream", "both")
    if stream not in STREAMS:
        raise FaultError(f"toxic {kind}: stream {stream!r}, expected one of {', '.join(STREAMS)}")
    out: dict[str, Any] = {"type": kind, "stream": stream}
    for k, default in TOXICS[kind].items():
        v = params.pop(k, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise FaultError(f"toxic {kind}: {k} must be a number >= 0, got {v!r}")
        out[k] = v
    if params:
        raise FaultError(f"toxic {kind}: unknown parameter(s) {', '.join(params)}")
    if kind == "bandwidth" and out["rate"] <= 0:
        raise FaultError("toxic bandwidth: rate must be > 0")
    return out


def parse_toxic(spec: str) -> dict[str, Any]:
    """``"latency:ms=200,jitter=50,stream=downstream"`` -> a toxic."""
    kind, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise FaultError(f"toxic {spec!r}: expected key=value, got {item!r}")
        params[k.strip()] = v.strip() if k.strip() == "stream" else float(v)
    return toxic(kind.strip(), **params)


MAX_PENDING = 8 << 20  # bytes a direction may queue before the proxy stops reading it


class _Pipe:
    """One direction of a proxied connection: queued chunks with due times."""

    __slots__ = ("src", "dst", "direction", "queue", "out", "last_due", "passed", "pending", "eof", "cut")

    def __init__(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        self.src, self.dst, self.direction = src, dst, direction
        self.queue: deque[tuple[float, bytes]] = deque()
        self.out = b""  # the unsent rest of the chunk being written
        self.last_due = 0.0
        self.passed = 0  # bytes let into the queue (limit_data)
        self.pending = 0  # bytes queued or unsent
        self.eof = False  # the source is done: close once drained
        self.cut = False  # limit_data reached: close once drained

    def drained(self) -> bool:
        return not self.out and not self.queue


class _Link:
    """A client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket, peer: str, now: float) -> None:
        self.client, self.upstream, self.peer, self.since = client, upstream, peer, now
        self.up = _Pipe(client, upstream, "upstream")
        self.down = _Pipe(upstream, client, "downstream")
        self.closed = False
        self.events: dict[socket.socket, int] = {}  # registered interest per socket


class ProxyServer:
    """A TCP forwarder with toxics, one selector loop, one process.

    The control socket takes one JSON object per line and answers one:
    ``{"op": "set", "toxics": [...]}``, ``add``, ``clear``, ``stats``,
    ``drop`` (close every connection), ``ping``.
    """

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], control: tuple[str, int] | None = None,
                 name: str = "", toxics: list[dict[str, Any]] | None = None, log: Any = None,
                 seed: int | None = None) -> None:
        self.listen_addr, self.upstream_addr, self.name = listen, upstream, name or f"{upstream[0]}:{upstream[1]}"
        self.log = (log or _logger()).bind(proxy=self.name)
        self.sel = selectors.DefaultSelector()
        self.rng = random.Random(seed)
        self.toxics: list[dict[str, Any]] = []
        self.toxics_since = time.monotonic()
        self.links: list[_Link] = []
        self.stats = {"accepted": 0, "closed": 0, "bytes_upstream": 0, "bytes_downstream": 0, "writes": 0,
                      "held": 0, "garbage": 0, "resets": 0, "cuts": 0, "upstream_refused": 0}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, self._accept)
        self.ctl: socket.socket | None = None
        self.ctl_bufs: dict[socket.socket, bytearray] = {}
        if control is not None:
            self.ctl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.ctl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.ctl.bind(control)
            self.ctl.listen(16)
            self.ctl.setblocking(False)
            self.sel.register(self.ctl, selectors.EVENT_READ, self._ctl_accept)
        self.stop = False
        self.log.info("proxy_listening", listen=f"{listen[0]}:{self.sock.getsockname()[1]}",
                      upstream=f"{upstream[0]}:{upstream[1]}", control=control and f"{control[0]}:{control[1]}")
        self.set_toxics(toxics or [])

    # --- toxics ---

    def set_toxics(self, toxics: list[dict[str, Any]]) -> None:
        """Replace the active toxics (each validated); logged as a fault."""
        checked = [toxic(t["type"], **{k: v for k, v in t.items() if k != "type"}) for t in toxics]
        old = self.toxics
        self.toxics = checked
        now = self.toxics_since = time.monotonic()
        for link in self.links:  # what the old toxics held or slowed goes out now, as in Toxiproxy
            for pipe in (link.up, link.down):
                pipe.queue = deque((min(due, now), chunk) for due, chunk in pipe.queue)
                pipe.last_due = min(pipe.last_due, now)
        for t in checked:
            self.log.warning("fault_injected", fault="toxic", link=self.name,
                             upstream=f"{self.upstream_addr[0]}:{self.upstream_addr[1]}", **t)
        if old and not checked:
            self.log.warning("fault_cleared", fault="toxic", link=self.name, toxics=[t["type"] for t in old])

    def _active(self, direction: str) -> dict[str, dict[str, Any]]:
        return {t["type"]: t for t in self.toxics if t["stream"] in ("both", direction)}

    # --- connections ---

    def _accept(self, _mask: int) -> None:
        for _ in range(64):
            try:
                client, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            peer = f"{addr[0]}:{addr[1]}"
            try:
                upstream = socket.create_connection(self.upstream_addr, timeout=1.0)
            except OSError as e:
                self.stats["upstream_refused"] += 1
                self.log.info("upstream_unreachable", peer=peer, error=e.strerror or str(e))
                _reset(client)
                continue
            for s in (client, upstream):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream, peer, time.monotonic())
            self.links.append(link)
            self.stats["accepted"] += 1
            self._interest(link)
            self.log.info("link_open", peer=peer)

    def _close(self, link: _Link, reason: str, reset: bool = False) -> None:
        if link.closed:
            return
        link.closed = True
        for s in (link.client, link.upstream):
            if link.events.get(s):
                self.sel.unregister(s)
            if reset:
                _reset(s)
            else:
                s.close()
        self.links.remove(link)
        self.stats["closed"] += 1
        self.log.info("link_closed", peer=link.peer, reason=reason)

    def _interest(self, link: _Link) -> None:
        if link.closed:
            return
        for s, src_pipe, dst_pipe in ((link.client, link.up, link.down), (link.upstream, link.down, link.up)):
            ev = 0
            if not (src_pipe.eof or src_pipe.cut) and src_pipe.pending < MAX_PENDING:
                ev |= selectors.EVENT_READ
            if dst_pipe.out:
                ev |= selectors.EVENT_WRITE
            cur = link.events.get(s, 0)
            if ev == cur:
                continue
            if not ev:
                self.sel.unregister(s)
            elif not cur:
                self.sel.register(s, ev, lambda mask, link=link, s=s: self._event(link, s, mask))
            else:
                self.sel.modify(s, ev, lambda mask, link=link, s=s: self._event(link, s, mask))
            link.events[s] = ev

    def _event(self, link: _Link, s: socket.socket, mask: int) -> None:
        src_pipe, dst_pipe = (link.up, link.down) if s is link.client else (link.down, link.up)
        now = time.monotonic()
        if mask & selectors.EVENT_WRITE:
            self._pump(link, dst_pipe, now)
        if mask & selectors.EVENT_READ and not link.closed:
            try:
                data = s.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                self._close(link, f"{src_pipe.direction} error: {e.strerror or e}")
                return
            if data == b"":
                src_pipe.eof = True
            elif data:
                self._ingest(src_pipe, data, now)
            self._pump(link, src_pipe, now)
        if not link.closed:
            self._interest(link)

    def _ingest(self, pipe: _Pipe, data: bytes, now: float) -> None:
        """Run one received chunk through the toxics into the pipe's queue."""
        tx = self._active(pipe.direction)
        if "blackhole" in tx:  # held, not dropped: released in order when the toxic goes
            self.stats["held"] += len(data)
            pipe.queue.append((float("inf"), data))
            pipe.last_due = float("inf")
            pipe.pending += len(data)
            return
        g = tx.get("garbage")
        if g and self.rng.random() < g["probability"]:
            pos = self.rng.randrange(len(data) + 1)
            junk = bytes(self.rng.randrange(256) for _ in range(max(1, int(g["size"]))))
            data = data[:pos] + junk + data[pos:]
            self.stats["garbage"] += 1
        lim = tx.get("limit_data")
        if lim:
            left = max(0, int(lim["bytes"]) - pipe.passed)
            if len(data) >= left:
                data = data[:left]
                pipe.cut = True
                self.stats["cuts"] += 1
        pipe.passed += len(data)
        if not data:
            return
        pieces = [data]
        sl = tx.get("slicer")
        step = 0.0
        if sl:
            pieces = []
            avg, var = max(1, int(sl["average_size"])), int(sl["size_variation"])
            i = 0
            while i < len(data):
                n = max(1, avg + self.rng.randint(-var, var))
                pieces.append(data[i : i + n])
                i += n
            step = sl["delay_us"] / 1e6
        bw = tx.get("bandwidth")
        if bw:
            quantum = max(1, int(bw["rate"] / 20))  # 50 ms worth: a trickle, not a stall
            pieces = [p[i : i + quantum] for p in pieces for i in range(0, len(p), quantum)]
        due = now
        lat = tx.get("latency")
        if lat:
            due += max(0.0, lat["ms"] + self.rng.uniform(-lat["jitter"], lat["jitter"])) / 1000
        for k, p in enumerate(pieces):
            due = max(due, pipe.last_due)
            if k and step:
                due += step
            if bw:
                due += len(p) / bw["rate"]
            pipe.queue.append((due, p))
            pipe.last_due = due
            pipe.pending += len(p)

    def _pump(self, link: _Link, pipe: _Pipe, now: float) -> None:
        """Write what is due, one chunk per write, so slices stay separate writes."""
        while not link.closed:
            if not pipe.out:
                if not pipe.queue or pipe.queue[0][0] > now:
                    break
                pipe.out = pipe.queue.popleft()[1]
            try:
                n = pipe.dst.send(pipe.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._close(link, f"{pipe.direction} error: {e.strerror or e}")
                return
            self.stats["writes"] += 1
            self.stats["bytes_" + pipe.direction] += n
            pipe.pending -= n
            pipe.out = pipe.out[n:]
            if pipe.out:
                break
        if not link.closed and pipe.drained() and (pipe.eof or pipe.cut):
            self._close(link, "limit_data" if pipe.cut else "client eof" if pipe is link.up else "server eof")

    def _timers(self, now: float) -> float:
        """Pump due chunks, reset links whose time is up; seconds until the next timer."""
        wait = 0.05
        rp = next((t for t in self.toxics if t["type"] == "reset_peer"), None)
        for link in list(self.links):
            if rp is not None:
                at = max(link.since, self.toxics_since) + rp["timeout"] / 1000
                if now >= at:
                    self.stats["resets"] += 1
                    self._close(link, "reset_peer", reset=True)
                    continue
                wait = min(wait, at - now)
            for pipe in (link.up, link.down):
                self._pump(link, pipe, now)
                if pipe.queue and not pipe.out:
                    wait = min(wait, pipe.queue[0][0] - now)
            self._interest(link)
        return max(wait, 0.0)

    # --- control ---

    def _ctl_accept(self, _mask: int) -> None:
        assert self.ctl is not None
        try:
            c, _ = self.ctl.accept()
        except (BlockingIOError, InterruptedError):
            return
        c.setblocking(False)
        self.ctl_bufs[c] = bytearray()
        self.sel.register(c, selectors.EVENT_READ, lambda mask, c=c: self._ctl_read(c))

    def _ctl_read(self, c: socket.socket) -> None:
        try:
            data = c.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(c)
            del self.ctl_bufs[c]
            c.close()
            return
        buf = self.ctl_bufs[c]
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            reply = self.command(line)
            c.setblocking(True)
            c.settimeout(1.0)
            with contextlib.suppress(OSError):
                c.sendall(json.dumps(reply).encode() + b"\n")
            c.setblocking(False)

    def command(self, line: bytes) -> dict[str, Any]:
        """Run one control command (a JSON object) and return the answer."""
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "set":
                self.set_toxics(list(req.get("toxics", [])))
            elif op == "add":
                self.set_toxics([*self.toxics, req["toxic"]])
            elif op == "clear":
                self.set_toxics([])
            elif op == "drop":
                for link in list(self.links):
                    self._close(link, "dropped", reset=True)
                self.log.warning("fault_injected", fault="drop", link=self.name)
            elif op not in ("stats", "ping"):
                return {"ok": False, "error": f"unknown op {op!r}"}
        except (ValueError, KeyError, TypeError, AttributeError, FaultError) as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "links": len(self.links), "toxics": self.toxics, **self.stats}

    # --- the loop ---

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        def on_signal(signum: int, _frame: Any) -> None:
            self.stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not self.stop:
            self.run_once()
        self.close()

    def run_once(self) -> None:
        wait = self._timers(time.monotonic())
        for key, mask in self.sel.select(wait):
            key.data(mask)
        logs.flush()

    def close(self) -> None:
        for link in list(self.links):
            self._close(link, "shutdown")
        for c in list(self.ctl_bufs):
            c.close()
        self.sock.close()
        if self.ctl is not None:
            self.ctl.close()
        self.log.info("proxy_stopped", **self.stats)
        logs.flush()


def _reset(s: socket.socket) -> None:
    """Close with an RST (linger 0), as a crashed peer's kernel would."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _addr(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or default_host, int(port)


def control(port: int, request: dict[str, Any], host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to a proxy's control socket; its answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise FaultError("proxy closed the control connection")
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    if not reply.get("ok"):
        raise FaultError(f"proxy: {reply.get('error')}")
    return reply


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A fault proxy in a subprocess, for tests: ``with Proxy(upstream) as p: p.set(toxic(...))``.

    ``listen`` is chosen now (``p.port``), so a stack's ``[links]`` can point at
    it before the proxy or the stack starts.
    """

    def __init__(self, upstream: tuple[str, int] | str, listen: int | None = None, name: str = "",
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.upstream = _addr(upstream) if isinstance(upstream, str) else upstream
        self.port = listen or free_port()
        self.control_port = free_port()
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` to put in ``[links]``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Proxy:
        """Start the proxy process and wait until its control socket answers."""
        cmd = [sys.executable, "-m", "shared.faults", "proxy", "--listen", str(self.port),
               "--upstream", f"{self.upstream[0]}:{self.upstream[1]}", "--control", str(self.control_port)]
        if self.name:
            cmd += ["--name", self.name]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=config.ROOT)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FaultError(f"proxy {self.name} exited with {self.proc.returncode} at start")
            try:
                self.call({"op": "ping"}, timeout=1.0)
                return self
            except (OSError, FaultError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise FaultError(f"proxy {self.name} did not answer in {timeout} s") from None
                time.sleep(0.05)

    def call(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return control(self.control_port, request, timeout=timeout)

    def set(self, *toxics: dict[str, Any]) -> dict[str, Any]:
        """Replace the active toxics."""
        return self.call({"op": "set", "toxics": list(toxics)})

    def clear(self) -> dict[str, Any]:
        return self.call({"op": "clear"})

    def stats(self) -> dict[str, Any]:
        return self.call({"op": "stats"})

    def drop(self) -> dict[str, Any]:
        """Reset every proxied connection now."""
        return self.call({"op": "drop"})

    @contextlib.contextmanager
    def toxics(self, *toxics: dict[str, Any]) -> Iterator[Proxy]:
        """The toxics for the ``with`` block, cleared after it."""
        self.set(*toxics)
        try:
            yield self
        finally:
            self.clear()

    def stop(self) -> None:
        """Terminate the proxy process (kill it if it lingers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- the menu -----------------------------------------------------------------

Fault = Callable[[Any], dict[str, Any]]


def _hold_s(stack: Any) -> float:
    """A freeze long enough to trip every heartbeat timeout and the staleness."""
    c = stack.cfg
    return max(3 * c.gateway.heartbeat_ms, 3 * c.ordermanager.heartbeat_ms, c.book.stale_ms) / 1000 * 2 + 0.5


def _kill_fault(program: str, sig: signal.Signals) -> Fault:
    def run(stack: Any) -> dict[str, Any]:
        pid = kill(stack, program, sig)
        return {"fault": f"{sig.name.lower()}_{program}", "restarted": {program: pid}}
    return run


def _freeze_fault(program: str) -> Fault:
    def run(stack: Any) -> dict[str, Any]:
        pid = freeze(stack, program, _hold_s(stack))
        return {"fault": f"freeze_{program}", "restarted": {}, "pid": pid}
    return run


def _segment_remove(stack: Any) -> dict[str, Any]:
    remove_segment(stack)
    return {"fault": "segment_remove", "restarted": {}}


def _segment_torn(stack: Any) -> dict[str, Any]:
    corrupt_segment(stack, "torn")
    return {"fault": "segment_torn", "restarted": {}}


PROGRAMS = ("auditor", "bootstrap", "gateway", "orderbook", "ordermanager", "strategy")

# name -> fault(stack) -> {"fault", "restarted": {program: old pid}, …}; each
# one the stack heals from by itself. Blocking ones (freeze) return after
# the thaw.
MENU: dict[str, Fault] = {
    **{f"kill9_{p}": _kill_fault(p, signal.SIGKILL) for p in PROGRAMS},
    **{f"sigterm_{p}": _kill_fault(p, signal.SIGTERM) for p in PROGRAMS if p != "auditor"},
    **{f"freeze_{p}": _freeze_fault(p) for p in ("gateway", "orderbook", "ordermanager", "strategy")},
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


# --- the command --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/fault", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--conf", default=str(config.ROOT / "deploy" / "supervisord.conf"),
                    help="supervisord.conf of the stack (for its control socket)")
    ap.add_argument("--serverurl", help="supervisord's server URL (overrides --conf)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("kill", help="send a signal (default KILL) to a program")
    p.add_argument("program")
    p.add_argument("-s", "--signal", default="KILL", help="name or number: KILL, TERM, 9, …")
    p = sub.add_parser("freeze", help="SIGSTOP a program for SECONDS, then SIGCONT")
    p.add_argument("program")
    p.add_argument("seconds", type=float)
    p = sub.add_parser("proxy", help="run a fault proxy in the foreground")
    p.add_argument("--listen", required=True, help="[HOST:]PORT to listen on")
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    p.add_argument("--control", help="[HOST:]PORT of the control socket (for `fault toxic`)")
    p.add_argument("--name", default="", help="the link's name in the log (price, news, orders)")
    p.add_argument("--toxic", action="append", default=[], help="e.g. latency:ms=200,jitter=50 (repeatable)")
    p.add_argument("--seed", type=int)
    p = sub.add_parser("toxic", help="change a running proxy's toxics")
    p.add_argument("--control", required=True, help="[HOST:]PORT of the proxy's control socket")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--set", nargs="+", metavar="SPEC", help="replace the toxics")
    g.add_argument("--add", metavar="SPEC", help="add one toxic")
    g.add_argument("--clear", action="store_true")
    g.add_argument("--stats", action="store_true")
    g.add_argument("--drop", action="store_true", help="reset every proxied connection")
    p = sub.add_parser("segment", help="remove or corrupt the book segment")
    p.add_argument("action", choices=("remove", "corrupt"))
    p.add_argument("--mode", choices=CORRUPT_MODES, default="torn")
    p.add_argument("--segment", help="segment name (default: book.segment of the config in force)")
    p = sub.add_parser("tear", help="append half of a file's last line (a journal torn by a crash)")
    p.add_argument("path")
    p = sub.add_parser("hold-port", help="hold a TCP port (bound, listening) until SECONDS pass or Ctrl-C")
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seconds", type=float, default=0.0, help="0: until interrupted")
    sub.add_parser("menu", help="list the faults a chaos soak draws from")
    a = ap.parse_args(argv)

    log = _logger()
    target = a.serverurl or serverurl_of(a.conf)
    try:
        if a.cmd == "kill":
            kill(target, a.program, a.signal)
        elif a.cmd == "freeze":
            freeze(target, a.program, a.seconds)
        elif a.cmd == "proxy":
            ctl_addr = _addr(a.control) if a.control else None
            ProxyServer(_addr(a.listen), _addr(a.upstream), ctl_addr, a.name,
                        [parse_toxic(s) for s in a.toxic], log, a.seed).run()
        elif a.cmd == "toxic":
            host, port = _addr(a.control)
            if a.set:
                req: dict[str, Any] = {"op": "set", "toxics": [parse_toxic(s) for s in a.set]}
            elif a.add:
                req = {"op": "add", "toxic": parse_toxic(a.add)}
            else:
                req = {"op": "clear" if a.clear else "drop" if a.drop else "stats"}
            print(json.dumps(control(port, req, host)))
        elif a.cmd == "segment":
            name = a.segment or config.load().book.segment
            if a.action == "remove":
                if not remove_segment(name):
                    print(f"segment {name} did not exist", file=sys.stderr)
                    return 1
            else:
                corrupt_segment(name, a.mode)
        elif a.cmd == "tear":
            tear_last_line(a.path)
        elif a.cmd == "hold-port":
            with hold_port(a.port, a.host):
                try:
                    if a.seconds:
                        time.sleep(a.seconds)
                    else:
                        signal.pause()
                except KeyboardInterrupt:
                    pass
        elif a.cmd == "menu":
            for name in [*MENU, *toxic_menu(dict.fromkeys(("price", "news", "orders")))]:  # type: ignore[arg-type]
                print(name)
    except (FaultError, OSError, xmlrpc.client.Fault, config.ConfigError, ValueError, KeyError) as e:
        log.error("fault_failed", command=a.cmd, error=str(e))
        logs.flush()
        print(f"fault {a.cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
