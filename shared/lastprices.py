"""The gateway's last published prices, kept in a small file so a restart
continues the random walk from them instead of starting a new market
(issue 15 item 9). Pure file handling, no sockets.

The file is memory-mapped and written in place on every price batch, before
the batch is sent: a store into the page cache, which ``kill -9`` does not
lose (a power cut may; then the walk starts afresh, as before). Two slots
take turns, each with a generation and a CRC, so a writer killed mid-write
leaves the other slot whole: the reader takes the valid slot of the higher
generation. Layout, little-endian, version 1::

    0    8s   magic b"TSLAST\\0\\0"
    8    u32  version = 1
    12   u32  n: symbols
    16   48   zero
    64   n x 16 bytes: the symbols, ASCII, NUL-padded
    then two slots of 16 + 8n bytes: u64 generation, n x i64 cents, u32 crc32 of the
    generation and cents, u32 zero

A file that is missing, of another version, or whose slots are both bad
gives no prices (the caller starts afresh and says why).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

MAGIC = b"TSLAST\0\0"
VERSION = 1
HEADER = struct.Struct("<8sII48x")
NAME_SIZE = 16


class LastPricesError(ValueError):
    """The file cannot be used: the message says why."""


def _layout(n: int) -> tuple[int, int]:
    """(offset of slot 0, size of one slot) for ``n`` symbols."""
    return HEADER.size + n * NAME_SIZE, 16 + 8 * n


def read(path: str | os.PathLike[str]) -> dict[str, int]:
    """The symbols' last prices in cents from the file; LastPricesError if there are none to trust."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise LastPricesError(f"{path}: no such file") from None
    except OSError as e:
        raise LastPricesError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise LastPricesError(f"{path}: not a last-prices file")
    _, version, n = HEADER.unpack_from(raw)
    if version != VERSION:
        raise LastPricesError(f"{path}: version {version}, this reader knows {VERSION}")
    base, size = _layout(n)
    if len(raw) < base + 2 * size:
        raise LastPricesError(f"{path}: cut short ({len(raw)} bytes)")
    try:
        names = [raw[HEADER.size + i * NAME_SIZE: HEADER.size + (i + 1) * NAME_SIZE].rstrip(b"\0").decode("ascii")
                 for i in range(n)]
    except UnicodeDecodeError:
        raise LastPricesError(f"{path}: bad symbol table") from None
    best: tuple[int, tuple[int, ...]] | None = None
    for slot in range(2):
        off = base + slot * size
        gen, *cents = struct.unpack_from(f"<Q{n}q", raw, off)
        (crc,) = struct.unpack_from("<I", raw, off + 8 + 8 * n)
        if gen and crc == zlib.crc32(raw[off: off + 8 + 8 * n]) and (best is None or gen > best[0]):
            best = (gen, tuple(cents))
    if best is None:
        raise LastPricesError(f"{path}: no whole slot")
    return {s: c for s, c in zip(names, best[1], strict=True) if c > 0}


class LastPrices:
    """The writer: a new file at ``path`` for ``symbols`` (replacing any, atomically), mapped;
    ``save(cents)`` records the prices, in the symbols' order."""

    def __init__(self, path: str | os.PathLike[str], symbols: tuple[str, ...], cents: list[int]) -> None:
        self.path = Path(path)
        self.n = n = len(symbols)
        self.base, self.size = _layout(n)
        self.fmt = struct.Struct(f"<Q{n}q")
        self.gen = 0
        names = b"".join(s.encode("ascii", "replace")[:NAME_SIZE].ljust(NAME_SIZE, b"\0") for s in symbols)
        body = bytearray(HEADER.pack(MAGIC, VERSION, n) + names + bytes(2 * self.size))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, self.path)  # a reader sees the old file or the whole new one
        fd = os.open(self.path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, len(body))
        finally:
            os.close(fd)
        self.save(cents)

    def save(self, cents: list[int]) -> None:
        """Record these prices (cents, in the symbols' order) in the older slot."""
        self.gen = gen = self.gen + 1
        off = self.base + (gen % 2) * self.size
        mm = self.mm
        self.fmt.pack_into(mm, off, gen, *cents)
        end = off + self.fmt.size
        struct.pack_into("<I", mm, end, zlib.crc32(mm[off:end]))

    def close(self) -> None:
        """Unmap; what was saved stays in the file."""
        if not self.mm.closed:
            self.mm.close()
