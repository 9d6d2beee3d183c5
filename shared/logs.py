"""structlog, configured once per daemon: JSON lines with ts, level, event,
daemon and pid (contract §6).

Lines are buffered and written out by ``flush()``: every daemon's loop asks
for it once per turn, and it writes once the oldest line has waited
``LINGER_S``, so a burst of records costs one write, and the write (which
wakes supervisord) does not land on the order path. The ordermanager flushes
before it acks anything.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import MutableMapping
from typing import IO, Any

import orjson
import structlog

HELD_MAX = 1 << 20  # bytes of lines kept while the output pipe is broken


class LineSink:
    """A structlog logger that buffers rendered lines until ``flush()``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.since = 0.0  # when the oldest buffered line came

    def msg(self, message: bytes) -> None:
        if not self._buf:
            self.since = time.monotonic()
        self._buf += message
        self._buf += b"\n"
        if len(self._buf) > 1 << 16:
            self.flush()

    info = debug = warning = error = critical = exception = fatal = log = msg

    def flush(self) -> None:
        if self._buf:
            try:
                self._stream.write(self._buf)
                self._stream.flush()
            except BrokenPipeError:
                # The reader (supervisord) is gone: keep the lines for the file the
                # lifecycle points our output at next, within a bound.
                if len(self._buf) > HELD_MAX:
                    self._buf.clear()
                return
            except ValueError:
                pass
            self._buf.clear()


_sink: LineSink | None = None
_context: dict[str, Any] = {}
_head = b"{"  # _context rendered, without its closing brace: the start of every hot line


_second = -1
_prefix = ""


def _ts() -> str:
    """Now, ISO 8601 UTC to the microsecond; the seconds are formatted once a second."""
    global _second, _prefix
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    if sec != _second:
        _second = sec
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_prefix}.{ns // 1000:06d}Z"


def _stamp(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``ts`` (ISO 8601 UTC, formatted once a second but for the microseconds),
    ``level``, and the traceback of ``log.exception``: one processor, as this
    runs for every record."""
    event_dict["ts"] = _ts()
    event_dict["level"] = "warning" if method == "warn" else ("error" if method == "exception" else method)
    if method == "exception" or "exc_info" in event_dict:
        event_dict.pop("exc_info", None)
        event_dict["exception"] = traceback.format_exc()
    return event_dict


def _render(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> bytes:
    return orjson.dumps(event_dict, default=str)


def configure(daemon: str, stream: IO[bytes] | None = None) -> structlog.typing.FilteringBoundLogger:
    """Configure structlog for this process and return its bound logger."""
    global _sink, _context, _head
    _sink = LineSink(stream or sys.stdout.buffer)
    _context = {"daemon": daemon, "pid": os.getpid()}
    _head = orjson.dumps(_context)[:-1] + b","
    sink = _sink
    structlog.configure(
        processors=[
            _stamp,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=lambda *a: sink,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(**_context)


def hot(event: str, **fields: Any) -> None:
    """An info record on a hot path (one per order or fill): the bound logger's line, with the same
    keys in the same order, at a fifth of its cost (the context is rendered once, in ``_head``)."""
    assert _sink is not None, "logs.configure() first"
    fields["event"], fields["ts"], fields["level"] = event, _ts(), "info"
    _sink.msg(_head + orjson.dumps(fields, default=str)[1:])


LINGER_S = 0.005


def due_in(now: float) -> float | None:
    """Seconds until the buffered lines are due for ``flush(LINGER_S)`` (0 if they are); None when none
    are: a loop that sleeps longer wakes up by then, so its lines are written within LINGER_S."""
    if _sink is None or not _sink._buf:
        return None
    return max(0.0, _sink.since + LINGER_S - now)


def flush(older_than: float = 0.0) -> None:
    """Write out the buffered log lines (only if the oldest is ``older_than`` seconds)."""
    if _sink is not None and _sink._buf and time.monotonic() - _sink.since >= older_than:
        _sink.flush()
