"""The tick ring (contract §8): per slot the last K ticks, each entry stamped
with its update number, so a reader tells a whole entry from an overwritten one.

Entry j of slot i lies at ``offset + (i*K + j) * 32``: u64 stamp, f64 price,
u64 ts_ns, u64 tick_seq. Update u (the record's ``updates`` after it, from 1)
goes to entry ``(u-1) mod K``: stamp = 2u-1, the fields, stamp = 2u. The
writer writes the entry before the record, so every update a record counts is
in the ring until K more overwrite it.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

from shared.rule import Tick

ENTRY_SIZE = 32
_WORDS = ENTRY_SIZE // 8
_FIELDS = struct.Struct("<dQQ")  # price, ts_ns, tick_seq


@functools.cache
def _block(n: int) -> struct.Struct:
    """n entries in one move."""
    return struct.Struct("<" + "QdQQ" * n)


def size(capacity: int, k: int) -> int:
    """Bytes of the rings of ``capacity`` slots of ``k`` entries."""
    return capacity * k * ENTRY_SIZE


class Ring:
    """The rings of every slot of one segment, over its buffer."""

    def __init__(self, buf: memoryview, offset: int, k: int, capacity: int) -> None:
        self.buf, self.offset, self.k = buf, offset, k
        # The stamps are raced: each is read and written as one 8-byte word
        # (struct.pack_into zeroes a field before writing it byte by byte).
        self.words = memoryview(buf)[offset : offset + size(capacity, k)].cast("Q")

    def write(self, slot: int, u: int, price: float, ts_ns: int, tick_seq: int) -> None:
        """Update ``u`` of ``slot`` into its entry (the single writer, before the record)."""
        j = slot * self.k + (u - 1) % self.k
        w = self.words
        w[j * _WORDS] = 2 * u - 1
        _FIELDS.pack_into(self.buf, self.offset + j * ENTRY_SIZE + 8, price, ts_ns, tick_seq)
        w[j * _WORDS] = 2 * u

    def read(self, slot: int, last: int, n: int) -> list[Tick] | None:
        """Updates ``last-n+1 .. last`` of ``slot``, oldest first; None if any was
        overwritten or being written (the reader fell K behind)."""
        if n <= 0:
            return []
        k, w = self.k, self.words
        first = last - n + 1
        j = (first - 1) % k
        parts = [(j, n)] if j + n <= k else [(j, k - j), (0, n - (k - j))]
        base = slot * k
        want = list(range(2 * first, 2 * last + 1, 2))
        stamps: list[int] = []
        for a, m in parts:
            stamps += w[(base + a) * _WORDS : (base + a + m) * _WORDS : _WORDS].tolist()
        if stamps != want:
            return None
        raw: list[Any] = []
        for a, m in parts:
            raw += _block(m).unpack_from(self.buf, self.offset + (base + a) * ENTRY_SIZE)
        stamps = []
        for a, m in parts:
            stamps += w[(base + a) * _WORDS : (base + a + m) * _WORDS : _WORDS].tolist()
        if stamps != want:
            return None
        return list(map(Tick, raw[1::4], raw[2::4], raw[3::4]))
