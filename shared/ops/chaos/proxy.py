"""The fault proxy: a TCP forwarder with toxics like Toxiproxy's, changed at run time.

``deploy/fault proxy`` runs one in the foreground; ``faults.Proxy`` runs one
in a subprocess for tests and the soak; ``deploy/fault toxic`` changes a
running one's toxics over its control socket.
"""

from __future__ import annotations

import contextlib
import json
import random
import selectors
import signal
import socket
import struct
import time
from collections import deque
from typing import Any

from shared import logs

DAEMON = "faults"


class ToxicError(ValueError):
    """A toxic that cannot be: unknown kind, stream or parameter, or a bad value."""


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
        raise ToxicError(f"unknown toxic {kind!r}: expected one of {', '.join(TOXICS)}")
    stream = params.pop("stream", "both")
    if stream not in STREAMS:
        raise ToxicError(f"toxic {kind}: stream {stream!r}, expected one of {', '.join(STREAMS)}")
    out: dict[str, Any] = {"type": kind, "stream": stream}
    for k, default in TOXICS[kind].items():
        v = params.pop(k, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ToxicError(f"toxic {kind}: {k} must be a number >= 0, got {v!r}")
        out[k] = v
    if params:
        raise ToxicError(f"toxic {kind}: unknown parameter(s) {', '.join(params)}")
    if kind == "bandwidth" and out["rate"] <= 0:
        raise ToxicError("toxic bandwidth: rate must be > 0")
    return out


def parse_toxic(spec: str) -> dict[str, Any]:
    """``"latency:ms=200,jitter=50,stream=downstream"`` -> a toxic."""
    kind, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise ToxicError(f"toxic {spec!r}: expected key=value, got {item!r}")
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
        self.log = (log or logs.configure(DAEMON)).bind(proxy=self.name)
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
        except (ValueError, KeyError, TypeError, AttributeError, ToxicError) as e:
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


def addr(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or default_host, int(port)
