"""The tape: a file of the gateway's price and news ticks, in arrival order,
readable with numpy alone (contract §10).

Layout, little-endian, version 1. A header of 64 bytes at offset 0:

======  ========  =====================================================
offset  type      field
======  ========  =====================================================
0       8 bytes   magic ``b"TSTAPE\\0\\0"``
8       u32       version = 1
12      u32       record_size = 32
16      u32       records_offset = 4160
20      u32       nsymbols: entries of the symbol table in use
24      u64       created_ns
32      32 bytes  zero (reserved)
======  ========  =====================================================

then the symbol table at offset 64: 256 entries of 16 bytes, ASCII,
NUL-padded (entry i is symbol index i; unused entries are zero), then the
records from offset 4160 to the end of the file, 32 bytes each::

    np.dtype([("kind", "u1"),     # 0 price, 1 news
              ("sym", "u1"),      # index into the symbol table
              ("pad", "V6"),      # zero
              ("seq", "<u8"),     # the gateway's seq of the tick, per stream
              ("ts_ns", "<u8"),   # the gateway's time of the tick
              ("value", "<f8")])  # the price, or the news sentiment (0..100)

so ``np.memmap(path, dtype, mode="r", offset=4160)`` reads them (a file whose
length is not 4160 plus whole records ends in a cut record: leave it out).

The writer adds a symbol to the table (in place: the table has a fixed size)
before any record that names it reaches the file, and writes whole records
only, so a killed writer leaves a tape readable up to its last whole record.
It may roll by size as the journal does: the open file is ``path``, closed
ones ``path.1``, ``path.2``, … from the oldest, never changed once closed,
each a tape of its own whose symbol table begins with the one before's.

Only the reader needs numpy, and imports it on first use: a daemon that
merely checks a tape's header does not pay for it.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"TSTAPE\0\0"
VERSION = 1
HEADER_SIZE = 64
MAX_SYMBOLS = 256  # sym is one byte
SYMBOL_SIZE = 16
RECORDS_OFFSET = HEADER_SIZE + MAX_SYMBOLS * SYMBOL_SIZE  # 4160
RECORD_SIZE = 32
PRICE, NEWS = 0, 1
KINDS = {"price": PRICE, "news": NEWS}

RECORD_FIELDS: list[tuple[str, str]] = [
    ("kind", "u1"), ("sym", "u1"), ("pad", "V6"), ("seq", "<u8"), ("ts_ns", "<u8"), ("value", "<f8"),
]
_HEADER = struct.Struct("<8sIIIIQ32x")
_RECORD = struct.Struct("<BB6xQQd")  # the same bytes as RECORD_FIELDS
_pack = _RECORD.pack
_NSYMBOLS_AT = 20
FLUSH_BYTES = 1 << 20  # the writer's buffer: written out past this (and on flush)


class TapeError(ValueError):
    """Not a tape, a tape of a newer version, or a broken one: one line naming the file."""


def dtype() -> np.dtype[Any]:
    """The records' numpy dtype (RECORD_FIELDS)."""
    import numpy as np

    return np.dtype(RECORD_FIELDS)


def header(symbols: list[str] | tuple[str, ...], created_ns: int) -> bytes:
    """A tape's first RECORDS_OFFSET bytes: the header and the symbol table."""
    for s in symbols:
        _check_symbol(s)
    if len(symbols) > MAX_SYMBOLS:
        raise TapeError(f"more than {MAX_SYMBOLS} symbols")
    return _header(list(symbols), created_ns)


def _header(symbols: list[str], created_ns: int) -> bytes:
    table = b"".join(s.encode("ascii").ljust(SYMBOL_SIZE, b"\0") for s in symbols)
    return (_HEADER.pack(MAGIC, VERSION, RECORD_SIZE, RECORDS_OFFSET, len(symbols), created_ns)
            + table.ljust(MAX_SYMBOLS * SYMBOL_SIZE, b"\0"))


def _check_symbol(symbol: str) -> bytes:
    raw = symbol.encode("ascii", "replace")
    if not 1 <= len(raw) <= SYMBOL_SIZE or not symbol.isascii() or "\0" in symbol:
        raise TapeError(f"symbol {symbol!r} is not 1..{SYMBOL_SIZE} ASCII characters")
    return raw


class TapeWriter:
    """Appends ticks to a new tape at ``path`` in whole records, buffered; with
    ``roll_bytes``, closes the file as ``path.<n>`` once past that size and goes
    on in a new ``path``. Refuses to overwrite a tape (FileExistsError)."""

    def __init__(self, path: str | os.PathLike[str], symbols: list[str] | tuple[str, ...] = (),
                 roll_bytes: int = 0) -> None:
        self.path = Path(path)
        self.roll_bytes = roll_bytes
        for p in (self.path, Path(f"{self.path}.1")):
            if p.exists():
                raise FileExistsError(f"{p} exists")
        self.symbols: list[str] = []
        self.index: dict[str, int] = {}
        self.fd = -1
        for s in symbols:
            self.symbol(s)
        self.buf = bytearray()
        self.records = 0  # written, all files
        self.closed_files = 0
        self.fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, _header(self.symbols, time.time_ns()))
        self.size = RECORDS_OFFSET
        return fd

    def symbol(self, symbol: str) -> int:
        """The symbol's index, added to the table (and the open file's header) if new."""
        i = self.index.get(symbol)
        if i is not None:
            return i
        raw = _check_symbol(symbol)
        i = len(self.symbols)
        if i >= MAX_SYMBOLS:
            raise TapeError(f"{self.path}: more than {MAX_SYMBOLS} symbols")
        self.symbols.append(symbol)
        self.index[symbol] = i
        if self.fd >= 0:  # the file's table first, so no record in it names a symbol it lacks
            os.pwrite(self.fd, raw.ljust(SYMBOL_SIZE, b"\0"), HEADER_SIZE + i * SYMBOL_SIZE)
            os.pwrite(self.fd, struct.pack("<I", len(self.symbols)), _NSYMBOLS_AT)
        return i

    def price(self, seq: int, ts_ns: int, symbol: str, price: float) -> None:
        """Append a price tick."""
        i = self.index.get(symbol)
        self.buf += _pack(PRICE, self.symbol(symbol) if i is None else i, seq, ts_ns, price)
        if len(self.buf) >= FLUSH_BYTES:
            self.flush()

    def prices(self, ticks: Iterable[Any]) -> None:
        """Append price ticks (anything with ``seq``, ``ts_ns``, ``symbol`` and ``price``) in one call, all or
        none: a symbol the tape cannot hold raises TapeError with none of them appended."""
        index, buf, start = self.index, self.buf, len(self.buf)
        try:
            for t in ticks:
                i = index.get(t.symbol)
                buf += _pack(PRICE, self.symbol(t.symbol) if i is None else i, t.seq, t.ts_ns, t.price)
        except TapeError:
            del buf[start:]
            raise
        if len(buf) >= FLUSH_BYTES:
            self.flush()

    def news(self, seq: int, ts_ns: int, symbol: str, sentiment: float) -> None:
        """Append a news tick."""
        i = self.index.get(symbol)
        self.buf += _pack(NEWS, self.symbol(symbol) if i is None else i, seq, ts_ns, sentiment)
        if len(self.buf) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write out the buffered records (whole ones: the buffer holds nothing else); roll if due."""
        if not self.buf:
            return
        try:
            with memoryview(self.buf) as view:
                done = 0
                while done < len(view):
                    done += os.write(self.fd, view[done:])
        except OSError:  # a full disk: take back the part written, so the file holds whole records only
            os.ftruncate(self.fd, self.size)
            os.lseek(self.fd, self.size, os.SEEK_SET)
            raise
        self.records += len(self.buf) // RECORD_SIZE
        self.size += len(self.buf)
        self.buf.clear()
        if self.roll_bytes and self.size >= self.roll_bytes:
            self._roll()

    def _roll(self) -> None:
        os.close(self.fd)
        self.closed_files += 1
        os.rename(self.path, f"{self.path}.{self.closed_files}")
        self.fd = self._open()

    @property
    def nbytes(self) -> int:
        """Bytes of records so far, written (all files) and buffered."""
        return self.records * RECORD_SIZE + len(self.buf)

    def close(self) -> None:
        """Flush and close; the tape is complete."""
        if self.fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class Header:
    """A tape's header and symbol table."""

    version: int
    symbols: tuple[str, ...]
    created_ns: int


def read_header(path: str | os.PathLike[str]) -> Header:
    """The header of the tape at ``path``; TapeError if it is not one this code reads."""
    try:
        with open(path, "rb") as f:
            raw = f.read(RECORDS_OFFSET)
    except OSError as e:
        raise TapeError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
        raise TapeError(f"{path}: not a tape (no {MAGIC!r} magic)")
    _, version, record_size, records_offset, nsym, created = _HEADER.unpack_from(raw)
    if version > VERSION:
        raise TapeError(f"{path}: tape version {version} is newer than this reader's {VERSION}")
    if version != VERSION or record_size != RECORD_SIZE or records_offset != RECORDS_OFFSET:
        raise TapeError(f"{path}: bad header (version {version}, record_size {record_size}, "
                        f"records_offset {records_offset})")
    if len(raw) < RECORDS_OFFSET:
        raise TapeError(f"{path}: header cut short ({len(raw)} of {RECORDS_OFFSET} bytes)")
    if nsym > MAX_SYMBOLS:
        raise TapeError(f"{path}: bad header (nsymbols {nsym})")
    table = raw[HEADER_SIZE : HEADER_SIZE + nsym * SYMBOL_SIZE]
    try:
        symbols = tuple(table[i : i + SYMBOL_SIZE].rstrip(b"\0").decode("ascii")
                        for i in range(0, len(table), SYMBOL_SIZE))
    except UnicodeDecodeError:
        raise TapeError(f"{path}: bad symbol table (not ASCII)") from None
    return Header(version, symbols, created)


@dataclass(frozen=True, eq=False)
class Tape:
    """A tape read: its header, its whole records (memory-mapped, read-only) and
    how many bytes of a cut last record were left out."""

    path: Path
    version: int
    symbols: tuple[str, ...]
    created_ns: int
    records: np.ndarray[Any, Any]
    dropped_bytes: int

    def __len__(self) -> int:
        return len(self.records)

    def kind(self, name: str) -> np.ndarray[Any, Any]:
        """The records of one stream ("price" or "news"), in order (a copy)."""
        return self.records[self.records["kind"] == KINDS[name]]

    def first_seq(self, name: str) -> int | None:
        """The seq of the first record of one stream ("price" or "news"), or None if it has none."""
        import numpy as np

        is_kind = self.records["kind"] == KINDS[name]
        if not is_kind.any():
            return None
        return int(self.records["seq"][int(np.argmax(is_kind))])

    def problem(self, start: int = 0, stop: int | None = None) -> str | None:
        """What is wrong with the values of records ``start:stop`` (default: all, one pass over the
        file), if anything."""
        return problem(self.records[start:stop], len(self.symbols), self.path, start)


def problem(records: np.ndarray[Any, Any], nsymbols: int, path: str | os.PathLike[str], start: int = 0) -> str | None:
    """What is wrong with these records' values (the first found), if anything; the message names the
    file and counts records from ``start``."""
    if not len(records):
        return None
    import numpy as np

    return column_problem(np.ascontiguousarray(records["kind"]), np.ascontiguousarray(records["sym"]),
                          np.ascontiguousarray(records["seq"]), np.ascontiguousarray(records["value"]),
                          nsymbols, path, start)


def column_problem(kind: np.ndarray[Any, Any], sym: np.ndarray[Any, Any], seq: np.ndarray[Any, Any],
                   value: np.ndarray[Any, Any], nsymbols: int, path: str | os.PathLike[str],
                   start: int = 0) -> str | None:
    """``problem`` on the records' columns (contiguous copies read once are faster than the strided fields)."""
    import numpy as np

    news = kind == NEWS
    checks = (
        (lambda: kind > NEWS, "a kind other than 0 (price) or 1 (news)"),
        (lambda: sym >= nsymbols, f"a sym outside the table of {nsymbols} symbols"),
        (lambda: seq == 0, "seq 0"),
        (lambda: ~news & ~(value > 0), "a price not > 0"),
        (lambda: ~news & ~np.isfinite(value), "a price not finite"),
        (lambda: news & ~((value >= 0) & (value <= 100) & (value == np.round(value))),
         "a sentiment not an integer in 0..100"),
    )
    for bad, what in checks:
        hit = bad()
        if hit.any():
            return f"{path}: record {start + int(np.argmax(hit))} has {what}"
    return None


def read(path: str | os.PathLike[str]) -> Tape:
    """Memory-map a tape; TapeError if it is not one (or a newer version)."""
    import numpy as np

    h = read_header(path)
    size = os.path.getsize(path)
    n, cut = divmod(size - RECORDS_OFFSET, RECORD_SIZE)
    dt = dtype()
    records = (np.memmap(path, dtype=dt, mode="r", offset=RECORDS_OFFSET, shape=(n,)) if n
               else np.zeros(0, dtype=dt))  # mmap refuses an empty range
    return Tape(Path(path), h.version, h.symbols, h.created_ns, records, cut)


def files(path: str | os.PathLike[str]) -> list[Path]:
    """A rolled tape's files in order: ``path.1``, ``path.2``, …, then ``path`` (those that exist)."""
    out = []
    n = 1
    while Path(f"{path}.{n}").exists():
        out.append(Path(f"{path}.{n}"))
        n += 1
    if Path(path).exists() or not out:
        out.append(Path(path))
    return out


def read_all(path: str | os.PathLike[str]) -> list[Tape]:
    """Every file of a (possibly rolled) tape, oldest first; the symbol table of
    each must begin with the one before's, so every record reads against the last."""
    tapes = [read(p) for p in files(path)]
    for a, b in zip(tapes, tapes[1:], strict=False):
        if b.symbols[: len(a.symbols)] != a.symbols:
            raise TapeError(f"{b.path}: its symbol table does not continue {a.path}'s")
    return tapes
