"""The ordermanager's exec journal: every exec the venue reported, once, before it is forwarded.

Files beside the order journal (contract §8: its path plus a suffix that is not a number):

- ``<journal>.execs``: the open segment, one ``shared.execstate.ExecLine`` per line, in exec_id
  order, written (and, by the ``journal_sync`` policy, fsynced) by group commit before any of the
  turn's execs goes to a strategy; a torn last line is cut off at start;
- ``<journal>.execs.<n>``: closed segments, n = 1, 2, … from the oldest, never changed; the open
  one is rolled by the order journal's settings (``journal_segment_bytes``, ``journal_roll_at``);
- ``<journal>.execs.checkpoint``: the ``ExecState`` at the end of the last closed segment, rewritten
  atomically at each roll;
- ``<journal>.execs.base``: the last order_no accepted before the venue existed (written once,
  when the exec journal is created beside a journal that already holds orders): those orders are
  history, never routed.

A start reads the checkpoint and the open segment only. The per-client index (exec_id -> where
its line is) covers the open segment; a strategy that logs on with an older ``last_exec_id`` has
its execs in the closed segments indexed on demand, reading only the segments that hold them.
``read_lines`` gives every exec of every segment, oldest first.
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

from shared.execstate import ExecLine, ExecState, Snapshot, decode_line, restore, snapshot
from shared.journal import closed_segments, roll_reason, segment_lines, segments
from shared.journalfiles import CHECKPOINT, NEXT, errno_name, roll_segment, write_atomically

SUFFIX, BASE_SUFFIX = ".execs", ".execs.base"
RECENT = 4096  # the last lines kept in memory: a live exec is forwarded without reading the file back
LOG_EVERY_S = 5.0
PROBE_S = 0.1  # while writes fail, the staged execs are tried again at most this often
HELD_MAX = 100_000  # staged execs kept through a write outage; past it they are dropped (the venue has them)
RETRY_S = 5.0  # a roll or a checkpoint that failed is tried again after this


class Checkpoint(msgspec.Struct):
    """The exec journal at the end of closed segments 1..``segments``."""

    segments: int
    lines: int  # exec lines in them
    state: Snapshot
    written_ns: int
    version: int = 1


class _Where(msgspec.Struct):
    """The two fields of an exec line that a search of older segments needs (the rest is skipped)."""

    exec_id: int
    client_id: str


_where = msgspec.json.Decoder(_Where)


class ClientExecs:
    """One client's indexed execs: their exec_ids and where their lines are (segment n, offset, length)."""

    __slots__ = ("ids", "lens", "offs", "segs")

    def __init__(self) -> None:
        self.ids, self.segs, self.offs, self.lens = array("q"), array("i"), array("q"), array("i")

    def __len__(self) -> int:
        return len(self.ids)

    def after(self, exec_id: int | None) -> int:
        """The position of the first exec above ``exec_id`` (None: past the last one)."""
        return len(self.ids) if exec_id is None else bisect_right(self.ids, exec_id)

    def add(self, exec_id: int, seg: int, offset: int, length: int) -> None:
        self.ids.append(exec_id)
        self.segs.append(seg)
        self.offs.append(offset)
        self.lens.append(length)

    def extend(self, other: ClientExecs) -> None:
        self.ids.extend(other.ids)
        self.segs.extend(other.segs)
        self.offs.extend(other.offs)
        self.lens.extend(other.lens)


def read_base(journal: str | os.PathLike[str]) -> int:
    """The last order_no accepted before the venue (0: none, or no file)."""
    try:
        doc = msgspec.json.decode(Path(str(journal) + BASE_SUFFIX).read_bytes())
    except FileNotFoundError:
        return 0
    except msgspec.DecodeError:
        return 0
    return int(doc.get("order_no", 0)) if isinstance(doc, dict) else 0


def read_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint beside an exec journal's open segment ``path``, or None; ValueError if unreadable."""
    try:
        data = Path(path + CHECKPOINT).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=Checkpoint)
    except msgspec.DecodeError as e:
        raise ValueError(str(e)) from None


def read_lines(journal: str | os.PathLike[str]) -> Iterator[ExecLine]:
    """Every exec line of a journal's exec journal, oldest first: the closed segments by n, then the
    open one; a line that is not one (torn, corrupt) is skipped."""
    for line in segment_lines(str(journal) + SUFFIX):
        try:
            yield decode_line(line)
        except msgspec.DecodeError:
            continue


def first_id(path: str | os.PathLike[str]) -> int | None:
    """The exec_id of a segment's first line (None: empty, or not an exec line)."""
    with open(path, "rb") as f:
        first = f.readline()
    try:
        return _where.decode(first).exec_id
    except msgspec.DecodeError:
        return None


class ExecJournal:
    """The exec journal, loaded into ``state`` at start; ``stage`` then ``commit`` per turn, ``tick``
    between turns (the roll).

    A write that fails leaves the file at its last whole line and keeps the execs staged, tried
    again every PROBE_S (``error`` says why meanwhile; they are forwarded once written). Past
    HELD_MAX held execs, ``commit`` drops them and returns None: the caller drops its venue link,
    whose next logon asks for them again.
    """

    def __init__(self, journal: str, sync: str, log: Any, state: ExecState, last_order_no: int,
                 segment_bytes: int = 1 << 24, roll_at: int | None = None) -> None:
        self.path, self.sync, self.log, self.state = journal + SUFFIX, sync, log, state
        self.segment_bytes, self.roll_at = segment_bytes, roll_at
        self.index: dict[str, ClientExecs] = {}  # the open segment's lines, and older ones asked for
        self.before: dict[str, int] = {}  # client_id -> the highest of its exec_ids not in the index
        self.recent: dict[int, bytes] = {}  # exec_id -> its line without the newline, the last RECENT
        self._recent_ids: deque[int] = deque()  # their exec_ids, oldest first (evicting by dict order is O(n))
        self.staged: list[ExecLine] = []
        self.staged_bytes = bytearray()
        self._encoder = msgspec.json.Encoder()
        self.error = ""  # why the last write failed ("" once one works)
        self.retry_at = 0.0
        self._failed_logged_at = -LOG_EVERY_S
        self.closed = 0  # n of the newest closed segment
        self.lines = 0  # exec lines in every segment
        self.size = 0  # bytes of whole lines in the open segment
        self.first_ns: int | None = None  # recv_ns of the open segment's first line
        self._seg_fds: dict[int, int] = {}  # closed segments read for a strategy's older execs
        self._pending_cp: bytes | None = None  # a checkpoint not written yet
        self._roll_retry_at = 0.0
        if not segments(self.path):
            if last_order_no:
                write_atomically(journal + BASE_SUFFIX, msgspec.json.encode({"order_no": last_order_no}))
                log.info("exec_journal_base", path=journal + BASE_SUFFIX, order_no=last_order_no)
            state.routed_upto = last_order_no
        else:
            state.routed_upto = max(state.routed_upto, read_base(journal))
        try:
            os.unlink(self.path + NEXT)  # a roll cut short: the next open segment, never written
        except FileNotFoundError:
            pass
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._load()
        self.highest = state.last_exec_id  # staged included: anything not above it is a duplicate

    # --- start ----------------------------------------------------------------

    def _load(self) -> None:
        t0 = time.monotonic()
        closed = closed_segments(self.path)
        try:
            cp = read_checkpoint(self.path)
        except ValueError as e:
            self.log.error("exec_journal_checkpoint_unreadable", path=self.path + CHECKPOINT, error=str(e))
        else:
            if cp is not None:
                restore(self.state, cp.state)
                self.closed, self.lines = cp.segments, cp.lines
            elif closed:
                self.log.warning("exec_journal_checkpoint_missing", path=self.path + CHECKPOINT, segments=len(closed))
        behind = [(n, p) for n, p in closed if n > self.closed]
        n_read = 0
        for n, p in behind:  # closed after the checkpoint was written (a roll cut short), or no checkpoint
            if n != self.closed + 1:
                self.log.error("exec_journal_segment_missing", path=f"{self.path}.{self.closed + 1}")
            n_read += self._replay(str(p), repair=False)
            self.closed = n
        if behind:
            self._write_checkpoint(self._checkpoint())
        self.before = dict(self.state.client_last)
        n_read += self._replay(self.path, repair=True)
        st = self.state
        self.log.info("exec_journal_loaded", path=self.path, execs=self.lines, read=n_read, segments=self.closed,
                      last_exec_id=st.last_exec_id or None, open_orders=len(st.by_no), routed_upto=st.routed_upto,
                      ms=round((time.monotonic() - t0) * 1000, 1))

    def _replay(self, path: str, repair: bool) -> int:
        """Fold every whole line of a segment into the state; the open one (``repair``) is indexed too,
        and a torn tail of it cut off. The lines taken."""
        good = n = 0
        bad: tuple[int, int, str] | None = None  # (offset, line, error) of a bad line not yet judged
        seg = self.closed + 1
        with open(path, "rb") as f:
            for i, line in enumerate(f, 1):
                err = "no newline at the end"
                if line.endswith(b"\n"):
                    try:
                        x = decode_line(line)
                    except msgspec.DecodeError as e:
                        err = str(e)
                    else:
                        if bad is not None:  # a good line after it: a corrupt middle line, skipped
                            self.log.error("exec_journal_corrupt_line", path=path, line=bad[1], error=bad[2])
                            bad = None
                        if self.state.apply(x):
                            if repair:
                                self._add(x, seg, good, len(line) - 1)
                                if self.first_ns is None:
                                    self.first_ns = x.recv_ns
                            n += 1
                        good += len(line)
                        continue
                if bad is None:
                    bad = (good, i, err)
                good += len(line)
        if bad is not None:
            if repair:
                self.log.warning("exec_journal_repaired", path=path, dropped_bytes=good - bad[0], error=bad[2])
                os.truncate(path, bad[0])
                good = bad[0]
            else:
                self.log.error("exec_journal_corrupt_line", path=path, line=bad[1], error=bad[2])
        if repair:
            self.size = good
        self.lines += n
        return n

    @property
    def held(self) -> bool:
        """Execs are waiting for a write that failed (``error`` says why)."""
        return bool(self.error and self.staged)

    def _add(self, x: ExecLine, seg: int, offset: int, length: int) -> None:
        idx = self.index.get(x.client_id)
        if idx is None:
            idx = self.index[x.client_id] = ClientExecs()
        idx.add(x.exec_id, seg, offset, length)

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
        if self.first_ns is None:
            self.first_ns = lines[0].recv_ns
        recent, ids = self.recent, self._recent_ids
        view = memoryview(data)
        start = 0
        apply, add, index, base, seg = self.state.apply, self._add, data.index, self.size, self.closed + 1
        for x in lines:
            end = index(b"\n", start)
            apply(x)
            add(x, seg, base + start, end - start)
            recent[x.exec_id] = bytes(view[start:end])
            ids.append(x.exec_id)
            start = end + 1
        view.release()
        self.size += len(data)
        self.lines += len(lines)
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

    # --- a client's execs -----------------------------------------------------

    def execs_of(self, client_id: str, after: int) -> ClientExecs | None:
        """The client's index, holding every exec of it above ``after`` (older ones are read in from the
        closed segments that hold them, once); None: the client has no exec."""
        if after < self.before.get(client_id, 0):
            self._read_older(client_id, after)
        return self.index.get(client_id)

    def _read_older(self, client_id: str, after: int) -> None:
        """Index the client's execs above ``after`` up to ``before[client_id]`` (all in closed segments)."""
        t0 = time.monotonic()
        upto = self.before[client_id]
        wanted: list[tuple[int, Path]] = []
        for n, p in reversed(closed_segments(self.path)):  # newest back to the one holding after + 1
            if n > self.closed:
                continue
            wanted.append((n, p))
            first = first_id(p)
            if first is not None and first <= after + 1:
                break
        older = ClientExecs()
        key = msgspec.json.encode(client_id)  # in every line of the client: the others are not decoded
        for n, p in reversed(wanted):
            data = p.read_bytes()  # a closed segment: about journal_segment_bytes, for this search only
            pos = 0
            while (hit := data.find(key, pos)) >= 0:
                start, end = data.rfind(b"\n", 0, hit) + 1, data.find(b"\n", hit)
                if end < 0:
                    break
                pos = end + 1
                try:
                    w = _where.decode(data[start:end])
                except msgspec.DecodeError:
                    continue
                if w.client_id == client_id and after < w.exec_id <= upto:
                    older.add(w.exec_id, n, start, end - start)
        idx = self.index.get(client_id)
        if idx is not None:
            older.extend(idx)
        if older:
            self.index[client_id] = older
        self.before[client_id] = after
        self.log.info("exec_journal_read_older", client_id=client_id, after=after, execs=len(older),
                      segments=len(wanted), ms=round((time.monotonic() - t0) * 1000, 1))

    def line(self, idx: ClientExecs, i: int) -> bytes:
        """The line (no newline) of a client's ``i``-th exec: from memory when recent, else from its segment."""
        got = self.recent.get(idx.ids[i])
        if got is not None:
            return got
        seg = idx.segs[i]
        fd = self.fd if seg > self.closed else self._seg_fds.get(seg)
        if fd is None:
            fd = self._seg_fds[seg] = os.open(f"{self.path}.{seg}", os.O_RDONLY)
        return os.pread(fd, idx.lens[i], idx.offs[i])

    # --- rolling --------------------------------------------------------------

    def tick(self, now_s: float | None = None) -> None:
        """Housekeeping, between turns: roll when the open segment is full or began before the last
        session boundary; retry a failed checkpoint. Not while execs are held or staged."""
        if self.staged or time.monotonic() < self._roll_retry_at:
            return
        if self._pending_cp is not None:
            self._write_checkpoint(self._pending_cp)
        reason = roll_reason(self.size, self.segment_bytes, self.first_ns, self.roll_at, now_s)
        if reason is not None:
            self.roll(reason)

    def roll(self, reason: str) -> bool:
        """Close the open segment as ``.execs.<n+1>``, open a new one, write the checkpoint; the index
        starts again with the new segment (older execs are read in when a strategy asks for them)."""
        assert not self.staged, "roll between turns"
        if not self.size:
            return False
        t0 = time.monotonic()
        n = self.closed + 1
        try:
            fd = roll_segment(self.path, self.fd, n)
        except OSError as e:
            self.log.error("exec_journal_roll_failed", path=self.path, reason=reason, errno=errno_name(e),
                           error=e.strerror or str(e), retry_s=RETRY_S)
            self._roll_retry_at = time.monotonic() + RETRY_S
            return False
        os.close(self.fd)
        self.fd, self.closed = fd, n
        size, self.size, self.first_ns = self.size, 0, None
        self.index, self.before = {}, dict(self.state.client_last)
        self._close_segments()
        self._write_checkpoint(self._checkpoint())
        self.log.info("exec_journal_rolled", path=f"{self.path}.{n}", segment=n, reason=reason, bytes=size,
                      execs=self.lines, last_exec_id=self.state.last_exec_id,
                      ms=round((time.monotonic() - t0) * 1000, 1))
        return True

    def _checkpoint(self) -> bytes:
        """The state now, as the checkpoint of closed segments 1..``closed`` (nothing staged)."""
        return msgspec.json.encode(Checkpoint(self.closed, self.lines, snapshot(self.state), time.time_ns()))

    def _write_checkpoint(self, data: bytes) -> None:
        try:
            write_atomically(self.path + CHECKPOINT, data)
        except OSError as e:
            self._pending_cp = data
            self._roll_retry_at = time.monotonic() + RETRY_S
            self.log.error("exec_journal_checkpoint_failed", path=self.path + CHECKPOINT, errno=errno_name(e),
                           error=e.strerror or str(e), retry_s=RETRY_S)
            return
        self._pending_cp = None

    def _close_segments(self) -> None:
        for fd in self._seg_fds.values():
            os.close(fd)
        self._seg_fds.clear()

    def close(self) -> None:
        self.commit()
        os.close(self.fd)
        self._close_segments()
