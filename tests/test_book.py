"""The shared-memory book (contract §5): the seqlock codec, the segment, the writer."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from shared import book
from shared.book import BookError, Segment, Writer, WriterConflict, read_record, repair_record, write_record
from shared.bootstrap import Keeper
from shared.config import Book, Config

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ["AAPL", "MSFT", "GOOGL"]
U64 = struct.Struct("<Q")


# --- the codec, on a plain buffer ---------------------------------------------


def seq_at(buf: bytearray, off: int) -> int:
    """The raw seq word of the record at ``off``."""
    return U64.unpack_from(buf, off)[0]


def test_codec_write_then_read() -> None:
    buf = bytearray(3 * 64)
    assert read_record(buf, 64) == (0, 0.0, 0, 0, 0, 0)  # never written: seq 0
    write_record(buf, 64, 173.25, 11, 12, 13)
    rec = read_record(buf, 64)
    assert rec == (2, 173.25, 11, 12, 13, 1)
    assert (rec.seq, rec.price, rec.ts_ns, rec.recv_ns, rec.tick_seq, rec.updates) == (2, 173.25, 11, 12, 13, 1)
    assert buf[:64] == bytes(64) and buf[128:] == bytes(64)  # neighbours untouched


def test_codec_seq_even_and_growing_by_two() -> None:
    buf = bytearray(64)
    for k in range(1, 50):
        write_record(buf, 0, float(k), k, k, k)
        rec = read_record(buf, 0)
        assert rec is not None
        assert rec.seq == 2 * k
        assert rec.updates == k
        assert (rec.price, rec.ts_ns, rec.tick_seq) == (float(k), k, k)


def test_codec_layout_is_the_contracts() -> None:
    buf = bytearray(64)
    write_record(buf, 0, 1.5, 2, 3, 4)
    assert struct.unpack("<QdQQQQ", buf[:48]) == (2, 1.5, 2, 3, 4, 1)


def test_codec_odd_seq_read_gives_none_after_bounded_tries() -> None:
    buf = bytearray(64)
    write_record(buf, 0, 1.0, 1, 1, 1)
    U64.pack_into(buf, 0, 3)  # a writer died mid-write
    t0 = time.monotonic()
    assert read_record(buf, 0) is None
    assert read_record(buf, 0, tries=1) is None
    assert time.monotonic() - t0 < 5


def test_codec_repair_makes_seq_even() -> None:
    buf = bytearray(64)
    write_record(buf, 0, 1.0, 1, 1, 1)
    assert repair_record(buf, 0) is False  # even: left alone
    assert seq_at(buf, 0) == 2
    U64.pack_into(buf, 0, 3)
    assert repair_record(buf, 0) is True
    assert seq_at(buf, 0) == 4
    rec = read_record(buf, 0)
    assert rec is not None and rec.seq == 4 and rec.price == 1.0


def test_codec_write_over_odd_seq_ends_even() -> None:
    buf = bytearray(64)
    U64.pack_into(buf, 0, 5)
    write_record(buf, 0, 2.0, 2, 2, 2)
    assert seq_at(buf, 0) % 2 == 0 and seq_at(buf, 0) > 5
    assert read_record(buf, 0) is not None


def test_layout() -> None:
    for cap in (1, 3, 4, 5, 100):
        roff, size = book.layout(cap)
        assert roff % 64 == 0
        assert roff >= 128 + 16 * cap
        assert roff < 128 + 16 * cap + 64
        assert size == roff + 64 * cap


# --- segments -----------------------------------------------------------------


@pytest.fixture
def name() -> Iterator[str]:
    """A unique segment name, removed after the test whatever happened."""
    n = f"ts_test_{uuid4().hex[:8]}"
    yield n
    book.unlink(n)
    assert not os.path.exists(book.path_of(n))


@pytest.fixture
def seg(name: str) -> Iterator[Segment]:
    """A fresh segment with three symbols."""
    s = Segment.create(name, SYMBOLS)
    yield s
    s.close()


def test_header_per_contract(seg: Segment, name: str) -> None:
    path = book.path_of(name)
    assert os.stat(path).st_mode & 0o777 == 0o600
    raw = Path(path).read_bytes()
    magic, version, capacity, nsym, rsize, soff, roff, created, pid, hb, gen = struct.unpack_from(
        "<8sIIIIIIQQQQ", raw, 0)
    assert magic == b"TSTKBOOK"
    assert (version, capacity, nsym, rsize, soff) == (1, 3, 3, 64, 128)
    assert roff % 64 == 0 and roff >= soff + 16 * capacity
    assert abs(created - time.time_ns()) < 60 * 10**9
    assert (pid, hb, gen) == (0, 0, 0)
    table = [raw[soff + 16 * i : soff + 16 * (i + 1)] for i in range(capacity)]
    assert table == [s.encode().ljust(16, b"\0") for s in SYMBOLS]
    assert len(raw) >= roff + 64 * capacity
    assert raw[roff : roff + 64 * capacity] == bytes(64 * capacity)  # no record written yet
    assert seg.symbols == SYMBOLS and seg.slots == {"AAPL": 0, "MSFT": 1, "GOOGL": 2}
    assert seg.records_offset == roff


def test_numpy_views_match_the_header(seg: Segment) -> None:
    w = Writer(seg)
    try:
        w.write(1, 42.5, 7, 9)
        h = seg.header()
        assert bytes(h["magic"]) == b"TSTKBOOK"
        assert int(h["capacity"]) == 3 and int(h["writer_pid"]) == os.getpid() and int(h["generation"]) == 1
        recs = seg.records()
        assert (int(recs[1]["seq"]), float(recs[1]["price"]), int(recs[1]["tick_seq"])) == (2, 42.5, 9)
        del h, recs
    finally:
        w.release()


def test_attach_sees_what_create_wrote(seg: Segment, name: str) -> None:
    w = Writer(seg)
    w.write(2, 99.5, 1234, 77)
    other = Segment.attach(name)
    try:
        assert other.symbols == SYMBOLS
        assert other.generation == 1 and other.writer_pid == os.getpid()
        rec = other.read(2)
        assert rec is not None and (rec.price, rec.ts_ns, rec.tick_seq, rec.updates) == (99.5, 1234, 77, 1)
        assert other.read(0) == (0, 0.0, 0, 0, 0, 0)
        other.check_symbols(SYMBOLS)
        other.check_symbols(tuple(SYMBOLS))
        with pytest.raises(BookError):
            other.check_symbols(["AAPL", "MSFT"])
        with pytest.raises(BookError):
            other.check_symbols(["MSFT", "AAPL", "GOOGL"])
        assert not other.replaced()
    finally:
        other.close()
        w.release()


def test_create_refuses_existing(seg: Segment, name: str) -> None:
    with pytest.raises(FileExistsError):
        Segment.create(name, SYMBOLS)


def test_attach_missing_segment(name: str) -> None:
    with pytest.raises(BookError, match="does not exist"):
        Segment.attach(name)


def test_attach_foreign_segment(name: str) -> None:
    shm = book._open(name, True, 4096)  # all zeros: no magic
    try:
        with pytest.raises(BookError, match="magic"):
            Segment.attach(name)
    finally:
        shm.close()


def test_attach_wrong_version(seg: Segment, name: str) -> None:
    struct.pack_into("<I", seg.buf, 8, 2)
    with pytest.raises(BookError, match="version"):
        Segment.attach(name)


def test_replaced_after_unlink_and_recreate(seg: Segment, name: str) -> None:
    book.unlink(name)
    assert seg.replaced()
    again = Segment.create(name, SYMBOLS)
    try:
        assert seg.replaced() and not again.replaced()
    finally:
        again.close()


def test_close_never_unlinks(name: str) -> None:
    Segment.create(name, SYMBOLS).close()
    Segment.attach(name).close()
    assert os.path.exists(book.path_of(name))


# --- the writer ---------------------------------------------------------------


def test_first_writer_takes_generation_one(seg: Segment) -> None:
    w = Writer(seg)
    assert (seg.generation, seg.writer_pid, w.repaired) == (1, os.getpid(), [])


def test_second_writer_is_refused(seg: Segment, name: str) -> None:
    w = Writer(seg)
    other = Segment.attach(name)
    try:
        with pytest.raises(WriterConflict):
            Writer(other)
        assert seg.generation == 1 and seg.writer_pid == os.getpid()
    finally:
        other.close()
        w.release()


def test_live_writer_pid_without_lock_is_refused(seg: Segment) -> None:
    U64.pack_into(seg.buf, 40, os.getppid())  # alive, not us
    with pytest.raises(WriterConflict, match="alive"):
        Writer(seg)
    assert seg.generation == 0


def test_lock_freed_on_close_lets_the_next_writer_in(seg: Segment, name: str) -> None:
    a = Segment.attach(name)
    Writer(a).release()
    a.close()
    b = Segment.attach(name)
    try:
        assert Writer(b).generation == 2
    finally:
        b.close()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def test_takeover_after_dead_writer_repairs_and_bumps_generation(seg: Segment, name: str) -> None:
    first = Segment.attach(name)
    w1 = Writer(first)
    w1.write(0, 10.0, 1, 1)
    w1.write(1, 20.0, 2, 2)
    first.close()  # drops the flock, as the kernel does for a killed writer
    off0, off1 = seg.offset(0), seg.offset(1)
    U64.pack_into(seg.buf, off1, U64.unpack_from(seg.buf, off1)[0] + 1)  # died mid-write of MSFT
    U64.pack_into(seg.buf, 40, dead_pid())
    assert seg.read(1, tries=10) is None
    gen = seg.generation
    w2 = Writer(seg)
    assert w2.repaired == ["MSFT"]
    assert seg.generation == w2.generation == gen + 1
    assert seg.writer_pid == os.getpid()
    assert U64.unpack_from(seg.buf, off1)[0] % 2 == 0
    assert U64.unpack_from(seg.buf, off0)[0] == 2  # an even seq is left alone
    rec = seg.read(1)
    assert rec is not None and rec.price == 20.0
    w2.write(1, 21.0, 3, 3)
    rec = seg.read(1)
    assert rec is not None and rec.price == 21.0 and rec.seq % 2 == 0 and rec.updates == 2


def test_staleness(seg: Segment) -> None:
    assert seg.age_ms() == float("inf")  # no writer yet
    w = Writer(seg)
    assert 0 <= seg.age_ms() < 5_000
    hb = seg.writer_heartbeat_ns
    assert seg.age_ms(hb + 600_000_000) == pytest.approx(600.0)
    w.heartbeat(hb + 1_000_000_000)
    assert seg.writer_heartbeat_ns == hb + 1_000_000_000
    assert seg.age_ms(hb + 1_250_000_000) == pytest.approx(250.0)
    w.release()
    assert seg.writer_pid == 0 and seg.age_ms() == float("inf")


# --- separate processes -------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from shared.book import Segment, Writer
seg = Segment.attach(sys.argv[1])
stop = Path(sys.argv[2])
w = Writer(seg)
k = 0
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for _ in range(1000):
        k += 1
        w.write(0, float(k), k, k)
    w.heartbeat()
    if stop.exists():
        break
w.release()
print(k)
"""

READER = """
import json, sys, time
from shared.book import Segment
seg = Segment.attach(sys.argv[1])
n = int(sys.argv[2])
deadline = time.monotonic() + 60
while True:  # wait until the writer is under way
    r = seg.read(0)
    if r is not None and r.updates >= 1000:
        break
    if time.monotonic() > deadline:
        sys.exit("writer never started")
    time.sleep(0.001)
ok = torn = unavailable = backwards = 0
last = 0
seen = set()
deadline = time.monotonic() + 60
# 100k good reads, and long enough to race the writer even when it is starved of CPU
while (ok < n or len(seen) < 1000) and time.monotonic() < deadline:
    r = seg.read(0)
    if r is None:
        unavailable += 1
        continue
    k = r.tick_seq
    if not (r.price == float(k) and r.ts_ns == k and r.updates == k and r.seq == 2 * k):
        torn += 1
    if k < last:
        backwards += 1
    last = k
    seen.add(k)
    ok += 1
print(json.dumps({"ok": ok, "torn": torn, "unavailable": unavailable, "backwards": backwards,
                  "distinct": len(seen)}))
"""


def child(script: str, *args: str) -> subprocess.Popen[str]:
    """A separate Python process running ``script`` with the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float = 90) -> str:
    """Wait for a child; kill it if it hangs; return its stdout, failing on error."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    assert p.returncode == 0, err
    return out


def test_writer_and_reader_processes_no_torn_read(seg: Segment, name: str, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    writer = child(WRITER, name, str(stop))
    reader = child(READER, name, "100000")
    try:
        result = json.loads(finish(reader))
    finally:
        stop.touch()
        written = int(finish(writer))
    assert result["torn"] == 0, result
    assert result["backwards"] == 0, result
    assert result["ok"] >= 100_000, result
    assert result["distinct"] >= 1000, result  # the reads really raced the writes
    assert written >= 1000
    rec = seg.read(0)
    assert rec is not None and rec.tick_seq == rec.updates == written
    assert seg.writer_pid == 0  # released on a clean stop


ATTACH = """
import sys
from shared.book import Segment
seg = Segment.attach(sys.argv[1])
assert seg.symbols == sys.argv[2:], seg.symbols
print(seg.generation)
"""

CREATE = """
import sys
from shared.book import Segment
Segment.create(sys.argv[1], sys.argv[2:])
"""


def test_attaching_process_that_exits_leaves_the_segment(seg: Segment, name: str) -> None:
    for _ in range(2):
        assert finish(child(ATTACH, name, *SYMBOLS)).strip() == "0"
    time.sleep(0.2)  # a resource tracker would unlink just after the child exits
    assert os.path.exists(book.path_of(name))
    again = Segment.attach(name)
    try:
        assert again.symbols == SYMBOLS and not seg.replaced()
    finally:
        again.close()


def test_creating_process_that_exits_leaves_the_segment(name: str) -> None:
    finish(child(CREATE, name, *SYMBOLS))
    time.sleep(0.2)
    assert os.path.exists(book.path_of(name))
    s = Segment.attach(name)
    try:
        assert s.symbols == SYMBOLS
        assert os.stat(book.path_of(name)).st_mode & 0o777 == 0o600
    finally:
        s.close()


class _Log:
    """Records (event, fields) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []

    def _rec(self, event: str, **kw: object) -> None:
        self.calls.append((event, kw))

    info = warning = error = _rec


def test_bootstrap_retries_a_failing_create(name: str) -> None:
    """The segment cannot be opened or made (here: no file descriptor left, a real EMFILE):
    bootstrap logs it and tries again with backoff, then makes it once it can."""
    cfg = Config(symbols=tuple(SYMBOLS), book=Book(segment=name))
    log = _Log()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # every fd below is taken: no new one
    try:
        keeper = Keeper(cfg, log)
        keeper.retry.next_at = 0.0  # due again at once: a second failure, not a wait
        keeper.step()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failed = [kw for ev, kw in log.calls if ev == "segment_open_failed"]
    assert keeper.seg is None and [f["attempt"] for f in failed] == [1, 2] and failed[0]["errno"] == "EMFILE"
    deadline = time.monotonic() + 10
    while keeper.seg is None and time.monotonic() < deadline:
        keeper.step()
    try:
        assert keeper.seg is not None and [ev for ev, _ in log.calls][-1] == "segment_created"
    finally:
        keeper.shutdown(0)
