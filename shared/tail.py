"""Following a file that grows, by name, across rotation and truncation.

Logs (supervisord renames ``x.log`` to ``x.log.1`` and opens a new one) and
the order journal (a closed segment is the open one renamed) are read this
way: each ``read()`` gives the whole lines added since the last, from the
byte offset reached, and nothing is read twice.
"""

from __future__ import annotations

import os

CHUNK = 1 << 22  # the most one read() takes from a file; the rest waits for the next


class Tail:
    """One file followed by name; ``read()`` returns the new complete lines.

    ``start``: ``"end"`` (only what comes next), ``"start"`` (the whole file),
    or a number of bytes before the end (the last lines, the first partial one
    dropped).
    """

    def __init__(self, path: str | os.PathLike[str], start: str | int = "end") -> None:
        self.path = os.fspath(path)
        self.fd = -1
        self.ino = -1
        self.offset = 0
        self.buf = b""
        self._open(start)

    def _open(self, start: str | int) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self.fd = -1
            return
        st = os.fstat(self.fd)
        self.ino, self.buf = st.st_ino, b""
        if start == "end":
            self.offset = st.st_size
        elif start == "start":
            self.offset = 0
        else:
            self.offset = max(0, st.st_size - int(start))
            if self.offset:  # land on a line boundary
                head = os.pread(self.fd, int(start), self.offset)
                cut = head.find(b"\n")
                self.offset = st.st_size if cut < 0 else self.offset + cut + 1

    def _drain(self) -> list[bytes]:
        data = os.pread(self.fd, CHUNK, self.offset)
        self.offset += len(data)
        *lines, self.buf = (self.buf + data).split(b"\n")
        return lines

    def read(self) -> list[bytes]:
        """New complete lines: the rest of a rotated file first, then the new one from its start."""
        if self.fd < 0:
            self._open("start")
            if self.fd < 0:
                return []
        lines = self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines  # renamed away; its successor is not there yet
        if st.st_ino != self.ino:
            if os.fstat(self.fd).st_size > self.offset:
                return lines  # the old file still has more: finish it first
            os.close(self.fd)
            self._open("start")
            if self.fd >= 0:
                lines += self._drain()
        elif st.st_size < self.offset:  # truncated in place
            self.offset, self.buf = 0, b""
            lines += self._drain()
        return lines

    def close(self) -> None:
        """Close the file (a Tail is not used after)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
