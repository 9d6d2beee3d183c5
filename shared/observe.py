"""The stack seen from outside, as ``stack-top`` and the metrics program see it.

Only what exists is read: supervisord over XML-RPC (programs), ``/proc``
(their memory and CPU), the segment (the book) and, through
``shared.activity``, the logs and the journal. Nothing here raises because a
part is down: a missing part is a state (``no supervisor``, ``no segment``).
``Watcher.poll()`` is cheap enough to call a few times a second.
"""

from __future__ import annotations

import os
import socket
import time
import xmlrpc.client
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

from shared import book, config
from shared.activity import Activity

DEFAULT_SERVERURL = "unix:///tmp/tradestack/supervisor.sock"
RPC_TIMEOUT_S = 1.0
_TICK_S = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Conn(UnixStreamHTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socketfile)  # type: ignore[attr-defined]


class Supervisor:
    """supervisord's XML-RPC over its unix socket, with a timeout and one kept connection."""

    def __init__(self, serverurl: str = DEFAULT_SERVERURL, timeout: float = RPC_TIMEOUT_S) -> None:
        self.serverurl = serverurl
        self.transport = SupervisorTransport(None, None, serverurl)
        if serverurl.startswith("unix://"):
            def connection() -> _Conn:
                conn = _Conn("localhost", timeout=timeout)
                conn.socketfile = serverurl[7:]  # type: ignore[attr-defined]
                return conn
            self.transport._get_connection = connection
        self.proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self.transport)

    def call(self, method: str, *args: Any) -> Any:
        """``supervisor.<method>(*args)``; OSError or xmlrpc Fault when it cannot."""
        try:
            return getattr(self.proxy.supervisor, method)(*args)
        except Exception:
            self.transport.close()  # a half-read reply must not poison the next call
            raise

    def infos(self) -> list[dict[str, Any]] | str:
        """getAllProcessInfo, or why there is none (a short human reason)."""
        try:
            return list(self.call("getAllProcessInfo"))
        except (OSError, xmlrpc.client.Error, ValueError) as e:
            return f"no supervisor ({getattr(e, 'strerror', None) or getattr(e, 'faultString', None) or e})"

    def pid(self) -> int | None:
        try:
            return int(self.call("getPID"))
        except (OSError, xmlrpc.client.Error, ValueError):
            return None


def proc_usage(pid: int) -> tuple[int, float, float] | None:
    """(RSS bytes, CPU seconds used, start time as epoch seconds) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) "
    cpu = (int(fields[11]) + int(fields[12])) / _TICK_S
    return rss_pages * _PAGE, cpu, _boot_time() + int(fields[19]) / _TICK_S


_btime: float | None = None


def _boot_time() -> float:
    global _btime
    if _btime is None:
        with open("/proc/stat") as f:
            _btime = float(next(line.split()[1] for line in f if line.startswith("btime")))
    return _btime


class CpuWindow:
    """A process's CPU % of a core over the last ``window_s`` of samples: /proc counts CPU in
    ticks of 10 ms, coarser than what a quiet program uses between two polls a third of a
    second apart, so a rate between two polls reads 0 or 3 %; over seconds it reads true.
    A sample is kept at most every ``every_s``, so the figure (and the table showing it)
    changes at most that often."""

    WINDOW_S = 4.0
    EVERY_S = 1.0

    def __init__(self, window_s: float = WINDOW_S, every_s: float = EVERY_S) -> None:
        self.window_s, self.every_s = window_s, every_s
        self.samples: deque[tuple[float, float]] = deque()  # (monotonic, CPU seconds)
        self.pct: float | None = None

    def add(self, now: float, cpu_s: float) -> float | None:
        """Offer a sample; the % between the newest sample kept and the oldest (at most
        ``window_s`` before it, but for the one just older), or None before a second one."""
        s = self.samples
        if s and now - s[-1][0] < self.every_s:
            return self.pct
        s.append((now, cpu_s))
        while len(s) > 2 and now - s[1][0] >= self.window_s:
            s.popleft()
        t0, c0 = s[0]
        self.pct = max(0.0, (cpu_s - c0) / (now - t0) * 100) if now > t0 else None
        return self.pct


@dataclass
class Program:
    """One supervised program as the view shows it."""

    name: str
    state: str
    pid: int
    uptime_s: float | None
    restarts: int
    rss_bytes: int | None
    cpu_s: float | None  # CPU seconds used by the current process
    cpu_pct: float | None  # over the last few seconds (CpuWindow)
    last_exit: str  # "" when it never exited under this supervisord


@dataclass
class Quote:
    """One symbol of the book."""

    symbol: str
    price: float | None
    change: float | None  # since the view first saw a price for it
    ticks_per_s: float
    age_ms: float | None  # since the gateway made the tick
    updates: int


@dataclass
class BookState:
    """The segment's header and quotes, or why there are none."""

    status: str  # "fresh", "stale", "no segment", "no writer", or an error
    writer_pid: int = 0
    generation: int = 0
    heartbeat_age_ms: float | None = None
    quotes: list[Quote] = field(default_factory=list)


class BookWatch:
    """Keeps the segment attached (again after it is re-created) and reads it."""

    RATE_WINDOW_S = 2.0

    def __init__(self, name: str, stale_ms: int) -> None:
        self.name, self.stale_ms = name, stale_ms
        self.seg: book.Segment | None = None
        self.first: dict[str, float] = {}
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def _segment(self) -> book.Segment | str:
        if self.seg is not None and self.seg.replaced():
            self.seg.close()
            self.seg = None
            self.samples.clear()
        if self.seg is None:
            try:
                self.seg = book.Segment.attach(self.name)
            except book.SegmentMissing:
                return "no segment"
            except book.BookError as e:
                return f"bad segment: {e}"
        return self.seg

    def poll(self, now: float | None = None) -> BookState:
        """The book now."""
        seg = self._segment()
        if isinstance(seg, str):
            return BookState(seg)
        now = time.monotonic() if now is None else now
        now_ns = time.time_ns()
        age = seg.age_ms(now_ns)
        status = "no writer" if seg.writer_pid == 0 else "stale" if age > self.stale_ms else "fresh"
        quotes = []
        for i, sym in enumerate(seg.symbols):
            rec = seg.read(i)
            if rec is None or rec.seq == 0:
                quotes.append(Quote(sym, None, None, 0.0, None, 0 if rec is None else rec.updates))
                continue
            first = self.first.setdefault(sym, rec.price)
            s = self.samples.setdefault(sym, deque())
            s.append((now, rec.updates))
            while len(s) > 2 and now - s[1][0] >= self.RATE_WINDOW_S:
                s.popleft()
            dt = now - s[0][0]
            rate = (rec.updates - s[0][1]) / dt if dt > 0 and rec.updates >= s[0][1] else 0.0
            quotes.append(Quote(sym, rec.price, rec.price - first, rate, max(0.0, (now_ns - rec.ts_ns) / 1e6),
                                rec.updates))
        return BookState(status, seg.writer_pid, seg.generation, None if age == float("inf") else age, quotes)

    def close(self) -> None:
        if self.seg is not None:
            self.seg.close()
            self.seg = None


@dataclass
class View:
    """Everything one poll saw."""

    at: float  # time.time()
    programs: list[Program] | str  # or why there are none ("no supervisor (...)")
    book: BookState
    activity: Activity


class Watcher:
    """Polls supervisord, /proc, the segment, the logs and the journal of one stack."""

    def __init__(self, cfg: config.Config, serverurl: str = DEFAULT_SERVERURL, backlog: int = 0) -> None:
        self.cfg = cfg
        self.supervisor = Supervisor(serverurl)
        self.book = BookWatch(cfg.book.segment, cfg.book.stale_ms)
        self.logs_dir = cfg.resolve(cfg.auditor.log).parent
        self.activity = Activity(cfg, backlog)
        self.cpu: dict[int, CpuWindow] = {}  # pid -> its recent CPU samples
        self.sup_pid: int | None = None
        self.sup_start = 0.0
        self.sup_checked = 0.0

    def log_files(self, infos: list[dict[str, Any]]) -> dict[str, Path]:
        """Program -> its JSON log (stdout, or stderr for the event listener)."""
        out = {}
        for i in infos:
            path = i.get("stdout_logfile") or ""
            if not path or path == "NONE" or i["name"] == "auditor":
                path = i.get("stderr_logfile") or ""
            if path and path != "NONE":
                out[i["name"]] = Path(path)
        return out

    def _programs(self, infos: list[dict[str, Any]], now: float) -> list[Program]:
        pid: int | None
        if now - self.sup_checked < 5.0 and self.sup_pid:
            pid = self.sup_pid  # supervisord's pid and start change only when it restarts: looked up every 5 s
        else:
            pid, self.sup_checked = self.supervisor.pid(), now
        if pid != self.sup_pid:
            self.sup_pid = pid
            usage = proc_usage(pid) if pid else None
            self.sup_start = usage[2] if usage else 0.0
        out = []
        seen = set()
        for i in sorted(infos, key=lambda i: i["name"]):
            p = int(i["pid"] or 0)
            usage = proc_usage(p) if p else None
            rss = cpu = pct = None
            if usage is not None:
                seen.add(p)
                rss, cpu, _ = usage
                pct = self.cpu.setdefault(p, CpuWindow()).add(now, cpu)
            up = float(i["now"] - i["start"]) if i["statename"] == "RUNNING" and i["start"] else None
            exit_s = ""
            gone = self.activity.last_exit(i["name"], self.sup_start)
            if gone is not None:
                how = " unexpectedly" if gone[2] is False else ""
                exit_s = f"{time.strftime('%H:%M:%S', time.localtime(gone[0]))} {gone[1]}{how}"
            restarts = self.activity.restarts(i["name"], self.sup_start)
            out.append(Program(i["name"], i["statename"], p, up, restarts, rss, cpu, pct, exit_s))
        self.cpu = {k: v for k, v in self.cpu.items() if k in seen}
        return out

    def poll(self) -> View:
        """One look at everything."""
        now = time.monotonic()
        infos = self.supervisor.infos()
        if not isinstance(infos, str):
            self.activity.follow(self.log_files(infos), self.logs_dir)
        elif not self.activity.tails:
            self.activity.follow({p.stem: p for p in self.logs_dir.glob("*.log")
                                  if p.name not in ("audit.log", "supervisord.log", "faults.log")}, self.logs_dir)
        quotes = self.book.poll(now)
        self.activity.poll(now, {q.symbol: q.price for q in quotes.quotes if q.price is not None})
        programs = infos if isinstance(infos, str) else self._programs(infos, now)
        return View(time.time(), programs, quotes, self.activity)

    def close(self) -> None:
        self.book.close()
        self.activity.close()
