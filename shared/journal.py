"""The order journal: the truth of the ordermanager, read by the audit and the invariants too.

One JSON line per accepted order, written (and, by policy, fsynced) before
any ack of the turn goes out, so ``kill -9`` never loses an acked order.

Files (contract §8), beside the configured ``path``:

- ``path``: the open segment, the only one written;
- ``path.<n>``: closed segments, n = 1, 2, … from the oldest, never changed;
- ``path.checkpoint``: the state at the end of the last closed segment
  (order numbers, positions, last order id and the de-duplication window of
  each client), rewritten atomically at each roll;
- ``path.lock``: an flock held by the one ordermanager that owns the journal.

A restart reads the checkpoint and the open segment only, so its cost stays
flat however long the history. ``read(path)`` gives every order, oldest first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from shared.journalfiles import (
    CHECKPOINT,
    NEXT,
    Checkpoint,
    closed_segments,
    encode_checkpoint,
    errno_name,
    lock,
    read_checkpoint,
    roll_segment,
    segment_lines,
    segments,
    write_atomically,
)
from shared.protocol import DecisionContext

LOG_EVERY_S = 5.0  # journal_write_failed / journal_checkpoint_failed at most this often
PROBE_S = 0.1  # while writes fail, a turn's orders are tried at most this often (others: unavailable)
RETRY_S = 5.0  # a roll or a checkpoint that failed is tried again after this


class Entry(msgspec.Struct, frozen=True):
    """One journal line (contract §6; 1.2: ``ord_type``, ``tif``, and no ``price`` for a bare market order;
    ours: ``ctx``, the order's decision context, left out when it came without one)."""

    order_no: int
    order_id: str
    client_id: str
    symbol: str
    side: str
    qty: int
    price: float | None
    ts_ns: int
    tick_ts_ns: int
    recv_ns: int
    ord_type: str = "limit"  # a line written before 1.2 has neither: a limit order for the day
    tif: str = "day"
    ctx: DecisionContext | msgspec.UnsetType = msgspec.UNSET  # what the rule saw, as the order carried it (or none)


# --- reading ------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every order of the journal, oldest first (``segment_lines``); a line that is not a JSON object
    (torn, corrupt) is skipped."""
    for line in segment_lines(path):
        try:
            obj = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


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


def roll_reason(size: int, segment_bytes: int, first_ns: int | None, roll_at: int | None,
                now_s: float | None = None) -> str | None:
    """Why an open segment of ``size`` bytes, whose first line came at ``first_ns``, is due to roll:
    "size" when full, "session" when it began before the last daily boundary; None when it is not."""
    if not size:
        return None
    if size >= segment_bytes:
        return "size"
    if roll_at is not None and first_ns is not None:
        now_s = time.time() if now_s is None else now_s
        if first_ns < boundary_before(now_s, roll_at) * 1e9:
            return "session"
    return None


def boundary_before(now_s: float, minute_of_day: int) -> float:
    """The latest daily boundary (``minute_of_day`` minutes after 00:00 UTC) at or before ``now_s``."""
    b = now_s - now_s % 86400 + minute_of_day * 60
    return b if b <= now_s else b - 86400


# --- the journal --------------------------------------------------------------


class Journal:
    """The ordermanager's journal: locked, loaded from the checkpoint and the
    open segment, appended by group commit, rolled by size and session.

    ``stage`` indexes an order at once; ``commit`` writes the turn's orders in
    one write. A write that fails leaves the file at its last whole line and
    takes the turn's orders out again (``commit`` returns False): the caller
    answers them ``unavailable``.
    """

    def __init__(self, path: str, sync: str, log: Any, segment_bytes: int = 1 << 24,
                 roll_at: int | None = None, window: int = 8192) -> None:
        self.path, self.sync, self.log = path, sync, log
        self.segment_bytes, self.roll_at, self.window_size = segment_bytes, roll_at, window
        self.window: dict[str, dict[str, int]] = {}  # client_id -> its last order_ids -> order_no
        self.positions: dict[str, dict[str, int]] = {}  # client_id -> symbol -> signed qty
        self.last_id: dict[str, str] = {}  # client_id -> its last journaled order_id
        self.last_no = 0  # staged included
        self.committed_no = 0  # written
        self.orders = 0  # lines in every segment
        self.closed = 0  # n of the newest closed segment
        self.size = 0  # bytes of whole lines in the open segment
        self.first_ns: int | None = None  # recv_ns of the open segment's first order
        self.staged: list[Entry] = []
        self.staged_bytes = bytearray()
        self._prev_last: dict[str, str | None] = {}  # last_id before this turn, per client of the turn
        self._encoder = msgspec.json.Encoder()
        self.available = True
        self.retry_at = 0.0  # while unavailable: when a turn's orders may be tried again
        self.refused = 0  # orders answered unavailable in this outage (the caller counts them)
        self.error = ""  # why the last write failed
        self._down_since = 0.0
        self._failed_logged_at = -LOG_EVERY_S
        self._failures = 0  # failed writes not logged yet
        self._outage_logged = False
        self._pending_cp: bytes | None = None  # a checkpoint not written yet
        self._retry_at = 0.0  # of a failed roll or checkpoint
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.lock_fd = lock(path)
        try:
            self._load()
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except BaseException:
            os.close(self.lock_fd)
            raise

    # --- start ----------------------------------------------------------------

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            os.unlink(self.path + NEXT)  # a roll cut short: the next open segment, never written
        except FileNotFoundError:
            pass
        closed = closed_segments(self.path)
        try:
            cp = read_checkpoint(self.path)
        except ValueError as e:
            self.log.error("journal_checkpoint_unreadable", path=self.path + CHECKPOINT, error=str(e))
        else:
            if cp is not None:
                self._restore(cp)
            elif closed:
                self.log.warning("journal_checkpoint_missing", path=self.path + CHECKPOINT, segments=len(closed))
        covered = self.closed
        behind = [(n, p) for n, p in closed if n > covered]
        n_read = 0
        for n, p in behind:  # closed after the checkpoint was written (a roll cut short), or no checkpoint
            if n != self.closed + 1:
                self.log.error("journal_segment_missing", path=f"{self.path}.{self.closed + 1}")
            n_read += self._replay(str(p), repair=False)
            self.closed = n
            self._trim(list(self.window))
        if behind:
            self._write_checkpoint(self._checkpoint())
        n_read += self._replay(self.path, repair=True)
        self._trim(list(self.window))
        self.committed_no = self.last_no
        self.log.info("journal_loaded", path=self.path, orders=self.orders, last_order_no=self.last_no,
                      segments=self.closed, read=n_read, window=sum(map(len, self.window.values())),
                      ms=round((time.monotonic() - t0) * 1000, 1))

    def _restore(self, cp: Checkpoint) -> None:
        self.closed, self.orders, self.last_no = cp.segments, cp.orders, cp.last_no
        self.positions, self.last_id, self.window = cp.positions, cp.last_id, cp.window

    def _replay(self, path: str, repair: bool) -> int:
        """Index every whole line of a segment; in the open one (``repair``) a torn tail is cut off."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return 0
        dec = msgspec.json.Decoder(Entry)
        index = self._index
        good = 0  # bytes of whole lines so far
        bad: tuple[int, int, str] | None = None  # (offset, line, error) of a bad line not yet judged
        n = 0
        with f:
            for i, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    err = "no newline at the end"
                else:
                    try:
                        e = dec.decode(line)
                    except msgspec.DecodeError as x:
                        err = str(x)
                    else:
                        if bad is not None:  # a good line after it: a corrupt middle line, kept
                            self.log.error("journal_corrupt_line", path=path, line=bad[1], error=bad[2])
                            bad = None
                        index(e)
                        if self.first_ns is None and repair:
                            self.first_ns = e.recv_ns
                        n += 1
                        good += len(line)
                        continue
                if bad is None:
                    bad = (good, i, err)
                good += len(line)
        if bad is not None:
            if repair:
                self.log.warning("journal_repaired", path=path, dropped_bytes=good - bad[0], error=bad[2])
                os.truncate(path, bad[0])
                good = bad[0]
            else:
                self.log.error("journal_corrupt_line", path=path, line=bad[1], error=bad[2])
        if repair:
            self.size = good
        self.orders += n
        return n

    def _index(self, e: Entry) -> None:
        cid = e.client_id
        ids = self.window.get(cid)
        if ids is None:
            ids = self.window[cid] = {}
        ids[e.order_id] = e.order_no
        pos = self.positions.get(cid)
        if pos is None:
            pos = self.positions[cid] = {}
        pos[e.symbol] = pos.get(e.symbol, 0) + (e.qty if e.side == "BUY" else -e.qty)
        self.last_id[cid] = e.order_id
        if e.order_no > self.last_no:
            self.last_no = e.order_no

    def _trim(self, clients: Any) -> None:
        """Keep each client's last ``window_size`` order ids (a window holds up to 1.5 times that between trims)."""
        w = self.window_size
        for cid in clients:
            ids = self.window[cid]
            if len(ids) > w:
                self.window[cid] = dict(islice(ids.items(), len(ids) - w, None))

    # --- the hot path ---------------------------------------------------------

    def lookup(self, client_id: str, order_id: str) -> int | None:
        """The order_no of an order in the client's window (its last ``window_size`` at least), or None."""
        ids = self.window.get(client_id)
        return None if ids is None else ids.get(order_id)

    def stage(self, e: Entry) -> None:
        """Accept an order: indexed now, written at the next ``commit``."""
        cid = e.client_id
        if cid not in self._prev_last:
            self._prev_last[cid] = self.last_id.get(cid)
        self._index(e)
        self.staged.append(e)
        self._encoder.encode_into(e, self.staged_bytes, -1)
        self.staged_bytes += b"\n"

    def commit(self) -> bool:
        """Write the staged lines in one write (then fsync, by policy). False: the
        write failed, the file is back at its last whole line and the staged
        orders are out of the index again."""
        if not self.staged:
            return True
        data = self.staged_bytes
        try:
            if not self.available:  # a failed write may have left part of a line behind
                os.ftruncate(self.fd, self.size)
            n = os.write(self.fd, data)
            while n < len(data):
                n += os.write(self.fd, data[n:])
            if self.sync == "fsync":
                os.fsync(self.fd)
        except OSError as e:
            self._failed(e)
            return False
        if self.first_ns is None:
            self.first_ns = self.staged[0].recv_ns
        self.size += len(data)
        self.orders += len(self.staged)
        self.committed_no = self.last_no
        for cid in self._prev_last:
            if len(self.window[cid]) > self.window_size * 3 // 2:
                self._trim((cid,))
        self._prev_last.clear()
        self.staged.clear()
        data.clear()
        if not self.available:
            self._writable()
        return True

    def _failed(self, e: OSError) -> None:
        """Undo the turn: the file back to its last whole line, the staged orders out of the index."""
        try:
            os.ftruncate(self.fd, self.size)
        except OSError:
            pass  # tried again before the next write
        for s in reversed(self.staged):
            cid = s.client_id
            del self.window[cid][s.order_id]
            pos = self.positions[cid]
            pos[s.symbol] -= s.qty if s.side == "BUY" else -s.qty
        for cid, prev in self._prev_last.items():
            if prev is None:  # its first orders: the client is unknown again
                self.last_id.pop(cid, None)
                self.window.pop(cid, None)
                self.positions.pop(cid, None)
            else:
                self.last_id[cid] = prev
        n = len(self.staged)
        self.last_no = self.committed_no
        self._prev_last.clear()
        self.staged.clear()
        self.staged_bytes.clear()
        now = time.monotonic()
        if self.available:
            self.available, self._down_since, self.refused = False, now, 0
        self.retry_at = now + PROBE_S
        self._failures += 1
        if now - self._failed_logged_at >= LOG_EVERY_S:
            self.log.error("journal_write_failed", path=self.path, errno=errno_name(e), error=e.strerror or str(e),
                           orders=n, failures=self._failures, refused=self.refused)
            self._failed_logged_at, self._failures, self._outage_logged = now, 0, True
        self.error = e.strerror or str(e)

    def _writable(self) -> None:
        self.available = True
        if self._outage_logged:  # paired with its journal_write_failed: both at most every LOG_EVERY_S
            self._outage_logged = False
            self.log.info("journal_writable", path=self.path, refused=self.refused,
                          down_ms=round((time.monotonic() - self._down_since) * 1000))

    def may_try(self, now: float) -> bool:
        """Whether orders may be staged now: writable, or time to try a write again."""
        return self.available or now >= self.retry_at

    # --- rolling --------------------------------------------------------------

    def tick(self, now_s: float | None = None) -> None:
        """Housekeeping, between turns: roll when the open segment is full or
        began before the last session boundary; retry a failed checkpoint."""
        if self.staged or time.monotonic() < self._retry_at:
            return
        if self._pending_cp is not None:
            self._write_checkpoint(self._pending_cp)
        reason = roll_reason(self.size, self.segment_bytes, self.first_ns, self.roll_at, now_s)
        if reason is not None:
            self.roll(reason)

    def roll(self, reason: str) -> bool:
        """Close the open segment as ``path.<n+1>``, open a new one, write the checkpoint."""
        assert not self.staged, "roll between turns"
        if not self.size:
            return False
        t0 = time.monotonic()
        n = self.closed + 1
        try:
            fd = roll_segment(self.path, self.fd, n)
        except OSError as e:
            return self._roll_failed(e, reason)
        os.close(self.fd)
        self.fd, self.closed = fd, n
        size, self.size, self.first_ns = self.size, 0, None
        self._write_checkpoint(self._checkpoint())
        self.log.info("journal_rolled", path=f"{self.path}.{n}", segment=n, reason=reason, bytes=size,
                      orders=self.orders, last_order_no=self.last_no, ms=round((time.monotonic() - t0) * 1000, 1))
        return True

    def _roll_failed(self, e: OSError, reason: str) -> bool:
        self.log.error("journal_roll_failed", path=self.path, reason=reason, errno=errno_name(e),
                       error=e.strerror or str(e), retry_s=RETRY_S)
        self._retry_at = time.monotonic() + RETRY_S
        return False

    def _checkpoint(self) -> bytes:
        """The state now, as the checkpoint of closed segments 1..``closed`` (nothing staged)."""
        w = self.window_size
        window = {c: dict(islice(ids.items(), max(0, len(ids) - w), None)) for c, ids in self.window.items()}
        return encode_checkpoint(Checkpoint(
            segments=self.closed, orders=self.orders, last_no=self.last_no,
            positions={c: {s: q for s, q in p.items() if q} for c, p in self.positions.items()},
            last_id=self.last_id, window=window, window_size=w, written_ns=time.time_ns()))

    def _write_checkpoint(self, data: bytes) -> None:
        try:
            write_atomically(self.path + CHECKPOINT, data)
        except OSError as e:
            self._pending_cp = data
            self._retry_at = time.monotonic() + RETRY_S
            self.log.error("journal_checkpoint_failed", path=self.path + CHECKPOINT, errno=errno_name(e),
                           error=e.strerror or str(e), retry_s=RETRY_S)
            return
        self._pending_cp = None

    def close(self) -> None:
        """Commit what is staged, close the segment, release the lock."""
        self.commit()
        os.close(self.fd)
        os.close(self.lock_fd)
