"""The shared-memory price book (contract §5, and the tick ring of §8): layout,
seqlock codec, create / attach / validate, and the single writer.

The record codec works on any writable buffer, so it is tested without a
segment. NumPy views describe the same layout for readers that want arrays.
"""

from __future__ import annotations

import _posixshmem
import fcntl
import functools
import os
import struct
import sys
import time
from multiprocessing import resource_tracker, shared_memory
from typing import TYPE_CHECKING, Any, NamedTuple

from shared import ring as ring_mod
from shared.ring import Ring
from shared.rule import Tick

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"TSTKBOOK"
VERSION = 1
HEADER_SIZE = 128
RECORD_SIZE = 64
SYMBOL_SIZE = 16
READ_TRIES = 1000
CHECK_S = 0.25  # how often bootstrap and the orderbook check the segment for removal

_HEADER_FIELDS = {  # name: (NumPy format, offset), contract §5
    "magic": ("S8", 0), "version": ("<u4", 8), "capacity": ("<u4", 12), "nsymbols": ("<u4", 16),
    "record_size": ("<u4", 20), "symbols_offset": ("<u4", 24), "records_offset": ("<u4", 28),
    "created_ns": ("<u8", 32), "writer_pid": ("<u8", 40), "writer_heartbeat_ns": ("<u8", 48),
    "generation": ("<u8", 56), "ring_offset": ("<u4", 64), "ring_len": ("<u4", 68),
}
_RECORD_FIELDS = {
    "seq": ("<u8", 0), "price": ("<f8", 8), "ts_ns": ("<u8", 16), "recv_ns": ("<u8", 24),
    "tick_seq": ("<u8", 32), "updates": ("<u8", 40),
}


@functools.cache
def _dtype(fields: str) -> np.dtype:
    import numpy as np  # on first use only: the daemons' hot paths use struct, and numpy costs 13 MB a process

    spec = _HEADER_FIELDS if fields == "header" else _RECORD_FIELDS
    return np.dtype({"names": list(spec), "formats": [f for f, _ in spec.values()],
                     "offsets": [o for _, o in spec.values()],
                     "itemsize": HEADER_SIZE if fields == "header" else RECORD_SIZE})


def __getattr__(name: str) -> Any:
    """``HEADER_DTYPE`` and ``RECORD_DTYPE``: the layout as NumPy dtypes, made on first use."""
    if name == "HEADER_DTYPE":
        return _dtype("header")
    if name == "RECORD_DTYPE":
        return _dtype("record")
    raise AttributeError(name)


_U64 = struct.Struct("<Q")
_FIELDS = struct.Struct("<dQQQQ")  # price, ts_ns, recv_ns, tick_seq, updates
_HDR = struct.Struct("<8sIIIIII")  # magic .. records_offset
_OFF_CREATED, _OFF_PID, _OFF_HEARTBEAT, _OFF_GENERATION = 32, 40, 48, 56
_RING = struct.Struct("<II")  # ring_offset, ring_len at offset 64 (contract §8)
_OFF_RING = 64
assert sys.byteorder == "little"  # _word's native u64 is the layout's little-endian one


def _word(buf: memoryview | bytearray, off: int) -> memoryview:
    """The u64 at ``off`` as a one-item view, read and written in one 8-byte move.

    A word another process races (seq, heartbeat) must not go through struct:
    ``pack_into`` zeroes the bytes before writing them one by one, so a reader
    could see seq 0 (even) on both sides of a half-written record.
    """
    return memoryview(buf)[off : off + 8].cast("Q")


class BookError(Exception):
    """The segment is missing, foreign or incompatible."""


class SegmentMissing(BookError):
    """No segment of that name exists (yet)."""


class WriterConflict(BookError):
    """Another live writer holds the segment."""


class Record(NamedTuple):
    """One consistent read of a slot."""

    seq: int
    price: float
    ts_ns: int
    recv_ns: int
    tick_seq: int
    updates: int


def layout(capacity: int, ring_len: int = 0) -> tuple[int, int]:
    """(records_offset, total size) of a segment with ``capacity`` slots and
    ``ring_len`` ticks kept per slot (0: no ring); the ring follows the records."""
    records = -(-(HEADER_SIZE + capacity * SYMBOL_SIZE) // 64) * 64
    return records, records + capacity * RECORD_SIZE + ring_mod.size(capacity, ring_len)


# --- the seqlock record codec -------------------------------------------------


def write_record(buf: memoryview | bytearray, off: int, price: float, ts_ns: int, recv_ns: int, tick_seq: int) -> None:
    """Seqlock write: seq to odd, the fields, seq to even. Single writer only."""
    seq = _U64.unpack_from(buf, off)[0]
    updates = _U64.unpack_from(buf, off + 40)[0]
    _publish(buf, off, seq + (seq & 1), price, ts_ns, recv_ns, tick_seq, updates + 1)


def _publish(buf: memoryview | bytearray, off: int, seq: int, price: float, ts_ns: int, recv_ns: int,
             tick_seq: int, updates: int, word: memoryview | None = None) -> int:
    """The seqlock's write order from an even ``seq``; returns the new even seq.
    ``word`` is the slot's seq view, when the caller keeps one."""
    if word is None:
        word = _word(buf, off)
    word[0] = seq + 1
    _FIELDS.pack_into(buf, off + 8, price, ts_ns, recv_ns, tick_seq, updates)
    word[0] = seq + 2
    return seq + 2


def read_record(buf: memoryview | bytearray, off: int, tries: int = READ_TRIES,
                word: memoryview | None = None) -> Record | None:
    """Seqlock read; None when no consistent copy was had in ``tries``."""
    if word is None:
        word = _word(buf, off)
    for _ in range(tries):
        s1 = word[0]
        if s1 & 1:
            continue
        fields = _FIELDS.unpack_from(buf, off + 8)
        if word[0] == s1:
            return Record(s1, *fields)
    return None


def repair_record(buf: memoryview | bytearray, off: int) -> bool:
    """Make an odd seq (a writer died mid-write) even again; True if it was odd."""
    word = _word(buf, off)
    seq = word[0]
    if seq & 1:
        word[0] = seq + 1
        return True
    return False


# --- the segment --------------------------------------------------------------


def _open(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    """Open a segment without the resource tracker, which on Python < 3.13
    unlinks every segment a process attached to when that process exits."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, create=create, size=size, track=False)  # type: ignore[call-arg]
    register = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name, create=create, size=size)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


def unlink(name: str) -> bool:
    """Remove the segment (only deploy/down and tests do); True if it existed."""
    try:
        _posixshmem.shm_unlink("/" + name)
        return True
    except FileNotFoundError:
        return False


def path_of(name: str) -> str:
    return f"/dev/shm/{name}"


def _inode(name: str) -> int | None:
    try:
        return os.stat(path_of(name)).st_ino
    except FileNotFoundError:
        return None


class Segment:
    """An open book segment: header fields, symbols and record reads."""

    def __init__(self, name: str, shm: shared_memory.SharedMemory) -> None:
        self.name = name
        self._shm = shm
        assert shm.buf is not None
        self.buf: memoryview = shm.buf
        self.inode = os.fstat(shm._fd).st_ino  # type: ignore[attr-defined]
        magic, version, capacity, nsym, rsize, soff, roff = _HDR.unpack_from(self.buf, 0)
        if magic != MAGIC:
            raise BookError(f"segment {name}: bad magic {magic!r} (not a tradestack book, or not finished)")
        if version != VERSION or rsize != RECORD_SIZE or soff != HEADER_SIZE:
            raise BookError(f"segment {name}: version {version}, record_size {rsize}; "
                            f"expected {VERSION}, {RECORD_SIZE}")
        if nsym > capacity or layout(capacity)[0] != roff or len(self.buf) < layout(capacity)[1]:
            raise BookError(f"segment {name}: inconsistent header (capacity {capacity}, nsymbols {nsym})")
        self.capacity = capacity
        self.records_offset = roff
        self.symbols = [
            bytes(self.buf[soff + i * SYMBOL_SIZE : soff + (i + 1) * SYMBOL_SIZE]).rstrip(b"\0").decode("ascii")
            for i in range(nsym)
        ]
        self.slots = {s: i for i, s in enumerate(self.symbols)}
        ring_offset, self.ring_len = _RING.unpack_from(self.buf, _OFF_RING)
        self.ring: Ring | None = None
        if ring_offset:
            end = ring_offset + ring_mod.size(capacity, self.ring_len)
            if ring_offset % 64 or ring_offset < layout(capacity)[1] or not self.ring_len or end > len(self.buf):
                raise BookError(f"segment {name}: inconsistent ring (ring_offset {ring_offset}, "
                                f"ring_len {self.ring_len})")
            self.ring = Ring(self.buf, ring_offset, self.ring_len, capacity)
        else:
            self.ring_len = 0
        # Views made once: each is read and written in one 8-byte move.
        self.seq_words = [_word(self.buf, self.offset(i)) for i in range(capacity)]
        self.heartbeat_word = _word(self.buf, _OFF_HEARTBEAT)

    @classmethod
    def create(cls, name: str, symbols: list[str] | tuple[str, ...], ring_len: int = 0) -> Segment:
        """Create a new segment (mode 0600) keeping ``ring_len`` ticks per symbol
        (0: a plain v1 book), with the magic written last."""
        roff, size = layout(len(symbols), ring_len)
        shm = _open(name, True, size)
        try:  # every page now: a full /dev/shm is an error here, not a SIGBUS at the first write
            os.posix_fallocate(shm._fd, 0, size)  # type: ignore[attr-defined]
        except OSError:
            shm.close()
            shm.unlink()
            raise
        buf = shm.buf
        assert buf is not None
        _HDR.pack_into(buf, 0, b"\0" * 8, VERSION, len(symbols), len(symbols), RECORD_SIZE, HEADER_SIZE, roff)
        _U64.pack_into(buf, _OFF_CREATED, time.time_ns())
        if ring_len:
            _RING.pack_into(buf, _OFF_RING, layout(len(symbols))[1], ring_len)
        for i, s in enumerate(symbols):
            raw = s.encode("ascii")
            buf[HEADER_SIZE + i * SYMBOL_SIZE : HEADER_SIZE + i * SYMBOL_SIZE + len(raw)] = raw
        buf[0:8] = MAGIC
        return cls(name, shm)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Attach to an existing segment and check its header."""
        try:
            shm = _open(name, False)
        except FileNotFoundError:
            raise SegmentMissing(f"segment {name} does not exist") from None
        if shm.size < HEADER_SIZE:
            shm.close()
            raise BookError(f"segment {name}: {shm.size} bytes, too small for a header")
        try:
            return cls(name, shm)
        except BookError:
            shm.close()
            raise

    def check_symbols(self, symbols: list[str] | tuple[str, ...]) -> None:
        """Raise BookError unless the segment holds exactly these symbols."""
        if list(symbols) != self.symbols:
            raise BookError(f"segment {self.name}: symbols {self.symbols} differ from config {list(symbols)}")

    def check_ring(self, ring_len: int) -> None:
        """Raise BookError unless the segment keeps exactly ``ring_len`` ticks per symbol."""
        if self.ring_len != ring_len:
            raise BookError(f"segment {self.name}: ring_len {self.ring_len} differs from config book.ring_len "
                            f"{ring_len}")

    def header(self) -> np.ndarray:
        """A NumPy view of the header (drop it before ``close``)."""
        import numpy as np

        return np.ndarray((), dtype=_dtype("header"), buffer=self.buf, offset=0)

    def records(self) -> np.ndarray:
        """A NumPy view of the records (unsynchronised; drop it before ``close``)."""
        import numpy as np

        return np.ndarray((self.capacity,), dtype=_dtype("record"), buffer=self.buf, offset=self.records_offset)

    @property
    def size(self) -> int:
        return len(self.buf)

    @property
    def generation(self) -> int:
        return _U64.unpack_from(self.buf, _OFF_GENERATION)[0]

    @property
    def writer_pid(self) -> int:
        return _U64.unpack_from(self.buf, _OFF_PID)[0]

    @property
    def writer_heartbeat_ns(self) -> int:
        return self.heartbeat_word[0]

    def age_ms(self, now_ns: int | None = None) -> float:
        """Milliseconds since the writer's last heartbeat (inf: no writer)."""
        if self.writer_pid == 0:
            return float("inf")
        hb = self.writer_heartbeat_ns
        return ((now_ns or time.time_ns()) - hb) / 1e6 if hb else float("inf")

    def offset(self, slot: int) -> int:
        return self.records_offset + slot * RECORD_SIZE

    def read(self, slot: int, tries: int = READ_TRIES) -> Record | None:
        """A consistent copy of one slot, or None if none was had."""
        return read_record(self.buf, self.records_offset + slot * RECORD_SIZE, tries, self.seq_words[slot])

    def ticks(self, slot: int, n: int, wait_s: float = 0.002) -> list[Tick] | None:
        """The last ``n`` ticks of a slot from the ring, oldest first (all of them
        if fewer were written); None if no consistent copy was had within
        ``wait_s`` (the writer stopped mid-write, or lapping the reader)."""
        if self.ring is None or n > self.ring_len:
            raise BookError(f"segment {self.name}: keeps {self.ring_len} ticks per symbol, {n} asked")
        deadline = 0.0
        while True:
            rec = self.read(slot, 100)
            if rec is not None:
                got = self.ring.read(slot, rec.updates, min(n, rec.updates))
                if got is not None:
                    return got
            now = time.monotonic()
            if not deadline:
                deadline = now + wait_s
            elif now > deadline:
                return None
            os.sched_yield()  # a writer preempted mid-write, on our CPU, finishes

    def replaced(self) -> bool:
        """True when the name no longer points at this segment (removed or re-created)."""
        return _inode(self.name) != self.inode

    def close(self) -> None:
        """Unmap (never unlink)."""
        if self.ring is not None:
            self.ring.words.release()
            self.ring = None
        self.seq_words = []
        self.heartbeat_word = None  # type: ignore[assignment]
        self.buf = None  # type: ignore[assignment]
        try:
            self._shm.close()
        except BufferError:
            pass  # a NumPy view is still alive; the mapping goes with the process


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Writer:
    """The single writer: takes the segment over, writes ticks, beats."""

    def __init__(self, seg: Segment, pid: int | None = None) -> None:
        self.seg = seg
        self.pid = pid or os.getpid()
        fd = seg._shm._fd  # type: ignore[attr-defined]
        try:
            # Held until we close or die; the kernel frees it on kill -9.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WriterConflict(f"segment {seg.name}: another writer (pid {seg.writer_pid}) holds it") from None
        old = seg.writer_pid
        if old and old != self.pid and _alive(old):
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise WriterConflict(f"segment {seg.name}: writer pid {old} is still alive")
        buf = seg.buf
        self.repaired = [s for i, s in enumerate(seg.symbols) if repair_record(buf, seg.offset(i))]
        # The writer's own copy of each slot's seq and updates: no reads on the hot path.
        self._seq = [_U64.unpack_from(buf, seg.offset(i))[0] for i in range(seg.capacity)]
        self._updates = [_U64.unpack_from(buf, seg.offset(i) + 40)[0] for i in range(seg.capacity)]
        self.ring = seg.ring
        self.generation = seg.generation + 1
        _U64.pack_into(buf, _OFF_GENERATION, self.generation)
        _U64.pack_into(buf, _OFF_PID, self.pid)
        self.heartbeat()

    def write(self, slot: int, price: float, ts_ns: int, tick_seq: int) -> None:
        """Publish one tick to a slot: its ring entry first, then its record."""
        u = self._updates[slot] + 1
        self._updates[slot] = u
        if self.ring is not None:
            self.ring.write(slot, u, price, ts_ns, tick_seq)
        self._seq[slot] = _publish(self.seg.buf, self.seg.records_offset + slot * RECORD_SIZE, self._seq[slot],
                                   price, ts_ns, time.time_ns(), tick_seq, u, self.seg.seq_words[slot])

    def heartbeat(self, now_ns: int | None = None) -> None:
        """Tell readers the writer lives."""
        self.seg.heartbeat_word[0] = now_ns or time.time_ns()

    def release(self) -> None:
        """Give the segment up on a clean stop: no writer, so readers see it stale."""
        if self.seg.buf is not None and self.seg.writer_pid == self.pid:
            _U64.pack_into(self.seg.buf, _OFF_PID, 0)
