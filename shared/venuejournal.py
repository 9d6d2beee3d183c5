"""The exchange's journal, its owner's side: the lock, the restore at start, group commit, the roll.

The lines are shared.venuerecords'. At start the exchange loads the checkpoint of the last roll
(shared.venuestate), then replays the segments after it through the engine, checking each
derived exec against the journaled one: the books, the exec_id sequence and the de-duplication
window are back as they were. A torn last line (a crash mid-write; nothing of that turn was
sent) is cut off; execs the replay derives past the last journaled one (their turn's write was
cut short after its input) are journaled then, so they are delivered too.

A write that fails stops the exchange (``JournalFailed``): the engine has moved on in memory,
and only the journal may say what happened. Its restart replays what the journal holds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shared import matching, venuestate
from shared.journal import closed_segments
from shared.journalfiles import CHECKPOINT, NEXT, errno_name, lock, sync_dir
from shared.protocol import HEADER
from shared.venuerecords import (
    EXEC_PREFIX,
    CancelIn,
    ExecOut,
    OrderIn,
    Start,
    Tick,
    apply,
    body,
    exec_body,
    read_lines,
)

RECENT = 10_000  # execs kept in memory for the ordermanager's redelivery; older ones come from the files
RETRY_S = 5.0  # a roll that failed is tried again after this
PR_SET_PDEATHSIG = 1
CLOSE_FDS = 1 << 16  # the checkpoint's child closes every inherited descriptor from 3 up to this


class JournalFailed(Exception):
    """A write to the journal failed: the exchange must stop (its restart replays the journal)."""


@dataclass
class Restored:
    """What a start found: the engine, the window and the recent execs as they were."""

    engine: matching.Engine
    window: venuestate.Window
    recent: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=RECENT))  # (exec_id, frame)
    lines: int = 0  # journal lines read after the checkpoint
    checkpoint: bool = False
    diverged: int = 0  # journaled execs the replay derived otherwise (there should be none)
    missing: list[tuple[int, bytes]] = field(default_factory=list)  # derived, not journaled: journaled at start
    ticks: dict[str, tuple[str, int]] = field(default_factory=dict)  # symbol -> its last tick's (session, seq)


def framed(wire: bytes) -> bytes:
    """A wire body as a frame."""
    return len(wire).to_bytes(HEADER, "big") + wire


class _Replay:
    """Feeds journal lines to an engine, pairing each derived exec with the journaled one."""

    def __init__(self, r: Restored, log: Any) -> None:
        self.r, self.log = r, log
        self.derived: deque[tuple[int, bytes]] = deque()  # (exec_id, wire body) not journaled yet

    def line(self, rec: Any, raw: bytes, where: str) -> None:
        r, t = self.r, type(rec)
        if t is ExecOut:
            got = exec_body(raw)
            want = self.derived.popleft()[1] if self.derived else None
            if got != want:
                r.diverged += 1
                if r.diverged == 1:
                    self.log.error("journal_diverged", at=where, journaled=got.decode(errors="replace"),
                                   derived=want.decode(errors="replace") if want else None)
            r.recent.append((rec.exec_id, framed(got)))
        elif t is Start:
            r.engine.spread_bps, r.engine.depth = rec.spread_bps, rec.depth
        elif t is Tick or t is OrderIn or t is CancelIn:
            if t is Tick:
                r.ticks[rec.symbol] = (rec.session, rec.seq)
            elif t is OrderIn:
                r.window.add(rec.client_id, rec.order_id, rec.order_no)
            try:
                self.derived.extend((e.exec_id, body(e)) for e in apply(r.engine, rec))
            except ValueError as e:
                self.log.error("journal_bad_input", at=where, error=str(e))
        r.lines += 1


class VenueJournal:
    """The exchange's journal: locked, restored, appended a turn at a time, rolled by size."""

    def __init__(self, path: str, sync: str, log: Any, segment_bytes: int = 1 << 20) -> None:
        self.path, self.sync, self.log, self.segment_bytes = path, sync, log, segment_bytes
        self.closed = 0  # n of the newest closed segment
        self.lines = 0  # in every segment
        self.size = 0  # bytes of whole lines in the open segment
        self.staged = bytearray()
        self.staged_lines = 0
        self.retry_at = 0.0
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.lock_fd = lock(path)
        self.fd = -1
        self.child: tuple[int, int, float] | None = None  # the checkpoint being written: (pid, segment, since)

    # --- start ----------------------------------------------------------------

    def restore(self, spread_bps: float, depth: int) -> Restored:
        """Load the checkpoint and replay what follows it; open the segment for appending."""
        try:
            os.unlink(self.path + NEXT)  # a roll cut short: the next open segment, never written
        except FileNotFoundError:
            pass
        r = self._checkpoint(spread_bps, depth)
        rep = _Replay(r, self.log)
        for n, p in closed_segments(self.path):
            if n > self.closed:  # closed after the checkpoint was written (a roll cut short), or no checkpoint
                if n != self.closed + 1:
                    self.log.error("journal_segment_missing", path=f"{self.path}.{self.closed + 1}")
                self._replay(str(p), rep, repair=False)
                self.closed = n
        self._replay(self.path, rep, repair=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        r.missing = list(rep.derived)
        if r.missing:  # their turn's write was cut short after its input: journaled (and so sent) now
            for exec_id, wire in r.missing:
                self.stage_exec(wire)
                r.recent.append((exec_id, framed(wire)))
            self.commit()
            self.log.warning("journal_repaired", path=self.path, execs_journaled=len(r.missing))
        return r

    def _checkpoint(self, spread_bps: float, depth: int) -> Restored:
        try:
            f = open(self.path + CHECKPOINT, "rb")
        except FileNotFoundError:
            if closed_segments(self.path):
                self.log.warning("journal_checkpoint_missing", path=self.path + CHECKPOINT)
            return Restored(matching.Engine(spread_bps, depth), venuestate.Window())
        with f:
            try:
                head, engine, window = venuestate.restore(f)
            except ValueError as e:
                self.log.error("journal_checkpoint_unreadable", path=self.path + CHECKPOINT, error=str(e))
                return Restored(matching.Engine(spread_bps, depth), venuestate.Window())
        self.closed, self.lines = head.segments, head.lines
        return Restored(engine, window, checkpoint=True, ticks=dict(head.ticks))

    def _replay(self, path: str, rep: _Replay, repair: bool) -> None:
        """Replay every whole line of a segment; in the open one (``repair``) a torn tail is cut off."""
        good = 0  # bytes up to the end of the last good line
        bad: tuple[int, int, str] | None = None  # (offset, line, error) of a bad line not yet judged
        n = 0
        for ln in read_lines(path):
            if ln.rec is None:
                if bad is None:
                    bad = (ln.offset, ln.number, ln.error)
                continue
            if bad is not None:  # a good line after it: a corrupt middle line, kept
                self.log.error("journal_corrupt_line", path=path, line=bad[1], error=bad[2])
                bad = None
            rep.line(ln.rec, ln.raw, f"{path}:{ln.number}")
            good = ln.offset + len(ln.raw)
            n += 1
        if bad is not None:
            if repair:
                size = os.path.getsize(path)
                os.truncate(path, bad[0])
                self.log.warning("journal_repaired", path=path, dropped_bytes=size - bad[0], line=bad[1],
                                 error=bad[2])
                good = bad[0]
            else:
                self.log.error("journal_corrupt_line", path=path, line=bad[1], error=bad[2])
        if repair:
            self.size = good
        self.lines += n

    # --- a turn ---------------------------------------------------------------

    def stage(self, line: bytes) -> None:
        """A line for the next ``commit``."""
        self.staged += line
        self.staged += b"\n"
        self.staged_lines += 1

    def stage_exec(self, wire: bytes) -> None:
        """An exec's line, from its wire body, for the next ``commit``."""
        self.staged += EXEC_PREFIX
        self.staged += memoryview(wire)[1:]
        self.staged += b"\n"
        self.staged_lines += 1

    def commit(self) -> None:
        """Write the staged lines in one write (and fsync them, by policy); JournalFailed if it fails."""
        data = self.staged
        if not data:
            return
        try:
            n = os.write(self.fd, data)
            while n < len(data):
                n += os.write(self.fd, memoryview(data)[n:])
            if self.sync == "fsync":
                os.fsync(self.fd)
        except OSError as e:
            self.log.error("journal_write_failed", path=self.path, errno=errno_name(e), error=e.strerror or str(e),
                           lines=self.staged_lines)
            raise JournalFailed(e.strerror or str(e)) from None
        self.size += len(data)
        self.lines += self.staged_lines
        data.clear()
        self.staged_lines = 0

    # --- rolling --------------------------------------------------------------

    def due(self) -> bool:
        """Time to roll: the open segment is full (and a failed roll is not being waited out)."""
        return self.size >= self.segment_bytes and time.monotonic() >= self.retry_at

    def roll(self, engine: matching.Engine, window: venuestate.Window, ticks: dict[str, tuple[str, int]],
             reason: str) -> bool:
        """Close the open segment as ``path.<n+1>``, open a new one, write the checkpoint of the state
        now: between turns, nothing staged, every applied tick journaled (``ticks``: their marks)."""
        assert not self.staged, "roll between turns"
        if not self.size:
            return False
        t0 = time.monotonic()
        n = self.closed + 1
        closed, nxt = f"{self.path}.{n}", self.path + NEXT
        try:
            os.fsync(self.fd)  # a closed segment is on disk before the checkpoint counts it
            if os.path.exists(closed):
                raise FileExistsError(17, "a closed segment is never overwritten", closed)
            fd = os.open(nxt, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.rename(self.path, closed)
            except OSError:
                os.close(fd)
                os.unlink(nxt)
                raise
            os.rename(nxt, self.path)
        except OSError as e:
            self.log.error("journal_roll_failed", path=self.path, reason=reason, errno=errno_name(e),
                           error=e.strerror or str(e), retry_s=RETRY_S)
            self.retry_at = time.monotonic() + RETRY_S
            return False
        os.close(self.fd)
        self.fd, self.closed, size, self.size = fd, n, self.size, 0
        self.wait_checkpoint()  # the one before, if still being written: in order, and every roll has its own
        self._checkpoint_in_child(engine, window, ticks, n)
        self.log.info("journal_rolled", path=closed, segment=n, reason=reason, bytes=size, lines=self.lines,
                      resting=venuestate.resting(engine), ms=round((time.monotonic() - t0) * 1000, 1))
        return True

    def _checkpoint_in_child(self, engine: matching.Engine, window: venuestate.Window,
                             ticks: dict[str, tuple[str, int]], segment: int) -> None:
        """Write the checkpoint from a forked child, which sees the state as it is now (copy on write)
        while this process goes on matching: written here, it held the loop for the whole snapshot.
        One child at a time: a roll waits for the one before (only when checkpoints take longer than a
        segment takes to fill), so they land in order and a start replays one segment at most. If it
        fails, the next start replays the closed segments instead: slower, as correct."""
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: writes the file and says how it went by its exit status; never returns
            code = 255
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # no orphan outlives the exchange
                if os.getppid() != parent:  # it died before the prctl
                    os._exit(code)
                os.closerange(3, CLOSE_FDS)  # the sockets and the lock stay the exchange's alone
                sync_dir(self.path)
                self._write_checkpoint(engine, window, ticks)
                code = 0
            except OSError as e:
                code = min(e.errno or 255, 255)
            finally:
                os._exit(code)
        self.child = (pid, segment, time.monotonic())

    def wait_checkpoint(self, block: bool = True) -> None:
        """Reap the checkpoint's child once it is done (``block``: wait for it) and log how it went."""
        if self.child is None:
            return
        pid, segment, t0 = self.child
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if not done:
            return
        self.child = None
        code, path = os.waitstatus_to_exitcode(status), self.path + CHECKPOINT
        ms = round((time.monotonic() - t0) * 1000, 1)
        if code == 0:
            self.log.info("journal_checkpoint_written", path=path, segment=segment, ms=ms)
        else:  # the next start replays the closed segments instead: slower, as correct
            self.log.error("journal_checkpoint_failed", path=path, segment=segment, ms=ms,
                           errno=errno.errorcode.get(code, str(code)) if code > 0 else None,
                           error=os.strerror(code) if 0 < code < 255 else f"the writer's exit status {code}")

    def _write_checkpoint(self, engine: matching.Engine, window: venuestate.Window,
                          ticks: dict[str, tuple[str, int]]) -> None:
        """The checkpoint, whole or not at all: a temporary beside it, fsync, rename, fsync the directory."""
        path = self.path + CHECKPOINT
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in venuestate.snapshot(engine, window, ticks, self.closed, self.lines, time.time_ns()):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)
        sync_dir(path)

    def close(self) -> None:
        """Write what is staged, wait for the checkpoint being written, close the segment, release the lock."""
        try:
            self.commit()
            self.wait_checkpoint()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
            os.close(self.lock_fd)

