"""The ordermanager's exec journal: every exec the venue reported, once, before it is forwarded.

Files beside the order journal (contract §8: its path plus a suffix that is not a number):

- ``<journal>.execs``: one ``shared.execstate.ExecLine`` per line, in exec_id order, written (and,
  by the ``journal_sync`` policy, fsynced) by group commit before any of the turn's execs goes to
  a strategy; a torn last line is cut off at start;
- ``<journal>.execs.base``: the last order_no accepted before the venue existed (written once,
  when the exec journal is created beside a journal that already holds orders): those orders are
  history, never routed.

At start every line is read back into an ``ExecState`` and a per-client index (exec_id -> where
its line is), from which a strategy that logs on with ``last_exec_id`` is sent what it missed.
"""

from __future__ import annotations

import os
import time
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from shared.execstate import ExecLine, ExecState, decode_line
from shared.journal import Entry, segments
from shared.journalfiles import errno_name, write_atomically

SUFFIX, BASE_SUFFIX = ".execs", ".execs.base"
RECENT = 4096  # the last lines kept in memory: a live exec is forwarded without reading the file back
LOG_EVERY_S = 5.0
PROBE_S = 0.1  # while writes fail, the staged execs are tried again at most this often
HELD_MAX = 100_000  # staged execs kept through a write outage; past it they are dropped (the venue has them)


class ClientExecs:
    """One client's execs in the journal: their exec_ids and where their lines are."""

    __slots__ = ("ids", "lens", "offs")

    def __init__(self) -> None:
        self.ids, self.offs, self.lens = array("q"), array("q"), array("l")

    def __len__(self) -> int:
        return len(self.ids)

    def after(self, exec_id: int | None) -> int:
        """The position of the first exec above ``exec_id`` (None: past the last one)."""
        return len(self.ids) if exec_id is None else bisect_right(self.ids, exec_id)


def read_base(journal: str | os.PathLike[str]) -> int:
    """The last order_no accepted before the venue (0: none, or no file)."""
    try:
        doc = msgspec.json.decode(Path(str(journal) + BASE_SUFFIX).read_bytes())
    except FileNotFoundError:
        return 0
    except msgspec.DecodeError:
        return 0
    return int(doc.get("order_no", 0)) if isinstance(doc, dict) else 0


def read_lines(journal: str | os.PathLike[str]) -> Iterator[ExecLine]:
    """Every exec line of a journal's exec journal, oldest first; a line that is not one is skipped."""
    try:
        f = open(str(journal) + SUFFIX, "rb")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            try:
                yield decode_line(line)
            except msgspec.DecodeError:
                continue


def entries_after(journal: str | os.PathLike[str], order_no: int) -> Iterator[Entry]:
    """The order journal's entries above ``order_no``, oldest first, reading only the segments that
    hold them (newest back to the one that starts at or below ``order_no + 1``)."""
    dec = msgspec.json.Decoder(Entry)
    wanted: list[Path] = []
    for seg in reversed(segments(journal)):
        wanted.append(seg)
        with open(seg, "rb") as f:
            first = f.readline()
        try:
            if dec.decode(first).order_no <= order_no + 1:
                break
        except msgspec.DecodeError:
            continue
    for seg in reversed(wanted):
        with open(seg, "rb") as f:
            for line in f:
                try:
                    e = dec.decode(line)
                except msgspec.DecodeError:
                    continue
                if e.order_no > order_no:
                    yield e


class ExecJournal:
    """The exec journal, loaded into ``state`` at start; ``stage`` then ``commit`` per turn.

    A write that fails leaves the file at its last whole line and keeps the execs staged, tried
    again every PROBE_S (``error`` says why meanwhile; they are forwarded once written). Past
    HELD_MAX held execs, ``commit`` drops them and returns None: the caller drops its venue link,
    whose next logon asks for them again.
    """

    def __init__(self, journal: str, sync: str, log: Any, state: ExecState, last_order_no: int) -> None:
        self.path, self.sync, self.log, self.state = journal + SUFFIX, sync, log, state
        self.index: dict[str, ClientExecs] = {}
        self.recent: dict[int, bytes] = {}  # exec_id -> its line without the newline, the last RECENT
        self._recent_ids: deque[int] = deque()  # their exec_ids, oldest first (evicting by dict order is O(n))
        self.staged: list[ExecLine] = []
        self.staged_bytes = bytearray()
        self._encoder = msgspec.json.Encoder()
        self.error = ""  # why the last write failed ("" once one works)
        self.retry_at = 0.0
        self._failed_logged_at = -LOG_EVERY_S
        if not os.path.exists(self.path):
            if last_order_no:
                write_atomically(journal + BASE_SUFFIX, msgspec.json.encode({"order_no": last_order_no}))
                log.info("exec_journal_base", path=journal + BASE_SUFFIX, order_no=last_order_no)
            state.routed_upto = last_order_no
        else:
            state.routed_upto = max(state.routed_upto, read_base(journal))
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = 0
        self._load()
        self.highest = state.last_exec_id  # staged included: anything not above it is a duplicate

    def _load(self) -> None:
        t0 = time.monotonic()
        good = n = 0
        bad: tuple[int, int, str] | None = None  # (offset, line, error) of a bad line not yet judged
        with open(self.path, "rb") as f:
            for i, line in enumerate(f, 1):
                err = "no newline at the end"
                if line.endswith(b"\n"):
                    try:
                        x = decode_line(line)
                    except msgspec.DecodeError as e:
                        err = str(e)
                    else:
                        if bad is not None:  # a good line after it: a corrupt middle line, skipped
                            self.log.error("exec_journal_corrupt_line", path=self.path, line=bad[1], error=bad[2])
                            bad = None
                        if self.state.apply(x):
                            self._add(x, good, len(line) - 1)
                            n += 1
                        good += len(line)
                        continue
                if bad is None:
                    bad = (good, i, err)
                good += len(line)
        if bad is not None:
            self.log.warning("exec_journal_repaired", path=self.path, dropped_bytes=good - bad[0], error=bad[2])
            os.truncate(self.path, bad[0])
            good = bad[0]
        self.size = good
        st = self.state
        self.log.info("exec_journal_loaded", path=self.path, execs=n, last_exec_id=st.last_exec_id or None,
                      open_orders=len(st.by_no), routed_upto=st.routed_upto,
                      ms=round((time.monotonic() - t0) * 1000, 1))

    @property
    def held(self) -> bool:
        """Execs are waiting for a write that failed (``error`` says why)."""
        return bool(self.error and self.staged)

    def _add(self, x: ExecLine, offset: int, length: int) -> None:
        idx = self.index.get(x.client_id)
        if idx is None:
            idx = self.index[x.client_id] = ClientExecs()
        idx.ids.append(x.exec_id)
        idx.offs.append(offset)
        idx.lens.append(length)

    # --- the hot path ---------------------------------------------------------

    def stage(self, x: ExecLine) -> bool:
        """Take an exec for the next commit; False for one not above the highest (a duplicate)."""
        if x.exec_id <= self.highest:
            return False
        self.highest = x.exec_id
        self.staged.append(x)
        self._encoder.encode_into(x, self.staged_bytes, -1)
        self.staged_bytes += b"\n"
        return True

    def commit(self) -> list[ExecLine] | None:
        """Write the staged lines in one write (then fsync, by policy), fold them into the state and
        the index; the lines written ([]: none, or not now: a write failed less than PROBE_S ago), or
        None when they were dropped (see the class)."""
        if not self.staged or (self.error and time.monotonic() < self.retry_at):
            return []
        data = self.staged_bytes
        try:
            if self.error:  # a failed write may have left part of a line behind
                os.ftruncate(self.fd, self.size)
            n = os.write(self.fd, data)
            while n < len(data):
                n += os.write(self.fd, data[n:])
            if self.sync == "fsync":
                os.fsync(self.fd)
        except OSError as e:
            return self._failed(e)
        if self.error:
            self.log.info("exec_journal_writable", path=self.path)
            self.error = ""
        lines, self.staged = self.staged, []
        recent, ids = self.recent, self._recent_ids
        view = memoryview(data)
        start = 0
        apply, add, index, base = self.state.apply, self._add, data.index, self.size
        for x in lines:
            end = index(b"\n", start)
            apply(x)
            add(x, base + start, end - start)
            recent[x.exec_id] = bytes(view[start:end])
            ids.append(x.exec_id)
            start = end + 1
        view.release()
        self.size += len(data)
        data.clear()
        while len(ids) > RECENT:
            del recent[ids.popleft()]
        return lines

    def _failed(self, e: OSError) -> list[ExecLine] | None:
        try:
            os.ftruncate(self.fd, self.size)
        except OSError:
            pass  # tried again before the next write
        n = len(self.staged)
        self.error = e.strerror or str(e)
        now = time.monotonic()
        self.retry_at = now + PROBE_S
        if now - self._failed_logged_at >= LOG_EVERY_S:
            self._failed_logged_at = now
            self.log.error("exec_journal_write_failed", path=self.path, errno=errno_name(e), error=self.error,
                           execs=n)
        if n <= HELD_MAX:
            return []
        self.staged.clear()
        self.staged_bytes.clear()
        self.highest = self.state.last_exec_id
        self.log.error("exec_journal_dropped", path=self.path, execs=n, last_exec_id=self.highest)
        return None

    def line(self, idx: ClientExecs, i: int) -> bytes:
        """The line (no newline) of a client's ``i``-th exec: from memory when recent, else from the file."""
        got = self.recent.get(idx.ids[i])
        if got is not None:
            return got
        return os.pread(self.fd, idx.lens[i], idx.offs[i])

    def close(self) -> None:
        self.commit()
        os.close(self.fd)
