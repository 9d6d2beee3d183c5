"""The tick ring (contract §8): the entry codec, the header fields, a v1 reader
unchanged, and a writer process racing reader processes at 100k ticks/s."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from shared import book, ring
from shared.book import BookError, Segment, Writer
from shared.ops.bench import ring as ring_race
from shared.ops.bench.ring import race
from shared.ring import Ring
from shared.rule import Tick

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ["AAPL", "MSFT", "GOOGL"]
ENTRY = struct.Struct("<QdQQ")  # stamp, price, ts_ns, tick_seq


# --- the codec, on a plain buffer ---------------------------------------------


def plain(k: int, slots: int = 2, offset: int = 64) -> tuple[bytearray, Ring]:
    buf = bytearray(offset + ring.size(slots, k))
    return buf, Ring(memoryview(buf), offset, k, slots)


def test_entry_layout_is_the_contracts() -> None:
    buf, r = plain(4)
    r.write(1, 1, 101.5, 7, 9)  # slot 1, update 1: entry 0 of slot 1
    assert ENTRY.unpack_from(buf, 64 + 4 * 32) == (2, 101.5, 7, 9)
    r.write(1, 6, 102.5, 8, 10)  # update 6: entry (6 - 1) mod 4 = 1
    assert ENTRY.unpack_from(buf, 64 + 5 * 32) == (12, 102.5, 8, 10)
    assert buf[:64] == bytes(64) and buf[64 : 64 + 4 * 32] == bytes(128)  # slot 0 and before: untouched


def test_read_returns_the_last_n_oldest_first_across_the_wrap() -> None:
    _, r = plain(8)
    for u in range(1, 12):
        r.write(0, u, float(u), 10 * u, 100 + u)
    assert r.read(0, 11, 3) == [Tick(9.0, 90, 109), Tick(10.0, 100, 110), Tick(11.0, 110, 111)]
    got = r.read(0, 11, 8)  # entries 3..7 then 0..2
    assert got is not None and [t.tick_seq for t in got] == list(range(104, 112))
    assert r.read(0, 11, 0) == []


def test_read_says_it_cannot_when_overwritten() -> None:
    _, r = plain(8)
    for u in range(1, 12):
        r.write(0, u, float(u), u, u)
    assert r.read(0, 3, 1) is None  # update 3 was overwritten by 11
    assert r.read(0, 10, 8) is None  # reaches back to 3: gone
    assert r.read(0, 11, 8) is not None
    assert r.read(0, 12, 1) is None  # not written yet


def test_read_says_it_cannot_while_an_entry_is_written() -> None:
    buf, r = plain(8)
    for u in range(1, 5):
        r.write(0, u, float(u), u, u)
    struct.pack_into("<Q", buf, 64 + 1 * 32, 2 * 10 - 1)  # update 10 half-written over update 2
    assert r.read(0, 4, 3) is None
    assert r.read(0, 4, 2) == [Tick(3.0, 3, 3), Tick(4.0, 4, 4)]


# --- the segment --------------------------------------------------------------


@pytest.fixture
def name() -> Iterator[str]:
    n = f"ts_test_{uuid4().hex[:8]}"
    yield n
    book.unlink(n)


def test_header_fields_and_layout(name: str) -> None:
    seg = Segment.create(name, SYMBOLS, 256)
    try:
        raw = Path(book.path_of(name)).read_bytes()
        records_offset = struct.unpack_from("<I", raw, 28)[0]
        ring_offset, ring_len = struct.unpack_from("<II", raw, 64)
        assert ring_len == 256
        assert ring_offset % 64 == 0 and ring_offset == records_offset + 64 * len(SYMBOLS)
        assert len(raw) == ring_offset + len(SYMBOLS) * 256 * 32 == book.layout(3, 256)[1]
        assert (seg.ring_len, int(seg.header()["ring_offset"]), int(seg.header()["ring_len"])) == (
            256, ring_offset, 256)
    finally:
        seg.close()


def test_plain_v1_segment_has_no_ring(name: str) -> None:
    seg = Segment.create(name, SYMBOLS)
    try:
        assert struct.unpack_from("<II", seg.buf, 64) == (0, 0)
        assert seg.ring is None and seg.ring_len == 0
        Writer(seg).write(0, 1.0, 1, 1)  # a writer without a ring writes records only
        with pytest.raises(BookError, match="keeps 0 ticks"):
            seg.ticks(0, 1)
        with pytest.raises(BookError, match="ring_len 0 differs"):
            seg.check_ring(256)
    finally:
        seg.close()


def test_inconsistent_ring_header_is_refused(name: str) -> None:
    seg = Segment.create(name, SYMBOLS, 16)
    try:
        struct.pack_into("<I", seg.buf, 68, 1 << 20)  # a ring larger than the segment
        with pytest.raises(BookError, match="inconsistent ring"):
            Segment.attach(name)
    finally:
        seg.close()


def test_writer_fills_ring_before_record_and_ticks_read_it(name: str) -> None:
    seg = Segment.create(name, SYMBOLS, 4)
    try:
        w = Writer(seg)
        assert seg.ticks(1, 4) == []  # never priced
        for k in range(1, 7):
            w.write(1, 100.0 + k, 1000 + k, k)
        rec = seg.read(1)
        assert rec is not None and rec.updates == 6
        assert seg.ticks(1, 2) == [Tick(105.0, 1005, 5), Tick(106.0, 1006, 6)]
        assert [t.tick_seq for t in seg.ticks(1, 4) or []] == [3, 4, 5, 6]
        with pytest.raises(BookError, match="keeps 4 ticks per symbol, 5 asked"):
            seg.ticks(1, 5)
        w.write(0, 1.0, 1, 1)
        assert seg.ticks(0, 4) == [Tick(1.0, 1, 1)]  # fewer than asked: all there is
    finally:
        seg.close()


def test_ticks_say_they_cannot_while_the_record_is_mid_write(name: str) -> None:
    seg = Segment.create(name, SYMBOLS, 8)
    try:
        Writer(seg).write(0, 1.0, 1, 1)
        struct.pack_into("<Q", seg.buf, seg.offset(0), 3)  # the writer stopped mid-write
        t0 = time.monotonic()
        assert seg.ticks(0, 1, wait_s=0.01) is None
        assert 0.01 <= time.monotonic() - t0 < 5
    finally:
        seg.close()


def test_takeover_keeps_the_ring_going(name: str) -> None:
    seg = Segment.create(name, SYMBOLS, 8)
    try:
        w = Writer(seg)
        for k in range(1, 4):
            w.write(0, float(k), k, k)
        w.release()  # a clean stop; the next writer (here on the same fd, so the same flock) goes on
        w2 = Writer(seg)
        w2.write(0, 4.0, 4, 4)
        assert [t.tick_seq for t in seg.ticks(0, 8) or []] == [1, 2, 3, 4]
    finally:
        seg.close()


V1_READER = """
import mmap, struct, sys
fd = open('/dev/shm/' + sys.argv[1], 'rb')
m = mmap.mmap(fd.fileno(), 0, prot=mmap.PROT_READ)
magic, version, capacity, nsym, rsize, soff, roff = struct.unpack_from('<8sIIIIII', m, 0)
assert (magic, version, rsize, soff) == (b'TSTKBOOK', 1, 64, 128)
seq, price, ts, recv, tick_seq, updates = struct.unpack_from('<QdQQQQ', m, roff + 64 * int(sys.argv[2]))
print(price, tick_seq, updates)
"""


def test_a_v1_reader_reads_a_segment_with_a_ring_unchanged(name: str) -> None:
    seg = Segment.create(name, SYMBOLS, 256)
    try:
        w = Writer(seg)
        for k in range(1, 300):
            w.write(2, 50.0 + k, k, 1000 + k)
        out = subprocess.run([sys.executable, "-c", V1_READER, name, "2"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
        assert out == ["349.0", "1299", "299"]
    finally:
        seg.close()


# --- a writer process and reader processes ------------------------------------

RATE = 100_000
def test_writer_and_readers_at_100k_ticks_per_s_exact_windows_no_torn_tick(name: str) -> None:
    """A writer aiming at 100k ticks/s, a reader of 20-tick and one of 200-tick windows, each
    reading 1,000 windows or more after the ring wrapped: no tick torn, every window exact, and a
    reader too far behind says so rather than guess. How fast they went is the bench's figure
    (deploy/bench --suite), not this test's."""
    r = race(RATE, wants=(20, 200), windows=1000, seconds=3.0, name=name)
    print(f"\nring race: writer {r['ticks_per_s']:,.0f} ticks/s; readers {r['readers']}")
    assert r["written"] > 2 * ring_race.K * len(ring_race.SYMBOLS)
    for res in r["readers"]:
        assert res["torn"] == 0 and res["inexact"] == 0, r
        assert res["windows"] >= 1000, r
