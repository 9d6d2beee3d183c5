"""structlog, configured once per daemon: JSON lines with ts, level, event,
daemon and pid (contract §6).

Lines are buffered and written out by ``flush()``, which every daemon's loop
calls once per turn (and before it acks anything), so a burst of records
costs one write, not one per record.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

import orjson
import structlog


class LineSink:
    """A structlog logger that buffers rendered lines until ``flush()``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buf = bytearray()

    def msg(self, message: bytes) -> None:
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
            except (BrokenPipeError, ValueError):
                pass
            self._buf.clear()


_sink: LineSink | None = None


def _render(_: Any, __: str, event_dict: dict[str, Any]) -> bytes:
    return orjson.dumps(event_dict, option=orjson.OPT_NON_STR_KEYS, default=str)


def configure(daemon: str, stream: IO[bytes] | None = None) -> structlog.typing.FilteringBoundLogger:
    """Configure structlog for this process and return its bound logger."""
    global _sink
    _sink = LineSink(stream or sys.stdout.buffer)
    sink = _sink
    structlog.configure(
        processors=[
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=lambda *a: sink,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(daemon=daemon, pid=os.getpid())


def flush() -> None:
    """Write out the buffered log lines."""
    if _sink is not None:
        _sink.flush()
