"""The tape file (shared/tape.py): its layout, the writer and the reader, with no processes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from shared import tape
from shared.tape import TapeError, TapeWriter

SYMBOLS = ["AAPL", "MSFT", "GOOGL"]


def write_some(path: Path, n: int = 10, **kw: int) -> list[tuple[int, int, int, int, float]]:
    """A tape of ``n`` ticks, prices and every third one news; returns (kind, sym, seq, ts_ns, value) rows."""
    rows = []
    w = TapeWriter(path, SYMBOLS, **kw)
    for i in range(n):
        sym = i % 3
        if i % 3 == 2:
            w.news(i // 3 + 1, 1_000 + i, SYMBOLS[sym], float(i % 101))
            rows.append((1, sym, i // 3 + 1, 1_000 + i, float(i % 101)))
        else:
            w.price(i + 1, 1_000 + i, SYMBOLS[sym], 100.0 + i / 100)
            rows.append((0, sym, i + 1, 1_000 + i, 100.0 + i / 100))
    w.close()
    return rows


def as_rows(t: tape.Tape) -> list[tuple[int, int, int, int, float]]:
    r = t.records
    return list(zip(r["kind"].tolist(), r["sym"].tolist(), r["seq"].tolist(), r["ts_ns"].tolist(),
                    r["value"].tolist(), strict=True))


def test_round_trip(tmp_path: Path) -> None:
    rows = write_some(tmp_path / "t", 30)
    t = tape.read(tmp_path / "t")
    assert isinstance(t.records, np.memmap)
    assert t.symbols == tuple(SYMBOLS) and t.version == 1 and t.dropped_bytes == 0
    assert len(t) == 30 and as_rows(t) == rows
    assert t.problem() is None
    news = t.kind("news")
    assert news["seq"].tolist() == list(range(1, 11)) and set(news["kind"].tolist()) == {1}
    assert len(t.kind("price")) == 20
    assert (t.first_seq("price"), t.first_seq("news")) == (1, 1)
    write_some(tmp_path / "prices", 2)
    assert tape.read(tmp_path / "prices").first_seq("news") is None


def test_layout_is_the_documented_one(tmp_path: Path) -> None:
    write_some(tmp_path / "t", 4)
    raw = (tmp_path / "t").read_bytes()
    magic, version, rsize, roff, nsym, created = struct.unpack_from("<8sIIIIQ", raw)
    assert (magic, version, rsize, roff, nsym) == (b"TSTAPE\0\0", 1, 32, 4160, 3)
    assert raw[32:64] == bytes(32)
    assert [raw[64 + 16 * i : 80 + 16 * i] for i in range(3)] == [s.encode().ljust(16, b"\0") for s in SYMBOLS]
    assert raw[64 + 48 : 4160] == bytes(4160 - 112)
    assert len(raw) == 4160 + 4 * 32
    assert struct.unpack_from("<BB6xQQd", raw, 4160) == (0, 0, 1, 1000, 100.0)
    # numpy alone, with the dtype of the docstring, reads the same records
    dt = np.dtype([("kind", "u1"), ("sym", "u1"), ("pad", "V6"), ("seq", "<u8"), ("ts_ns", "<u8"), ("value", "<f8")])
    assert dt == tape.dtype() and dt.itemsize == tape.RECORD_SIZE
    mm = np.memmap(tmp_path / "t", dtype=dt, mode="r", offset=4160)
    assert mm["seq"].tolist() == [1, 2, 1, 4] and mm["kind"].tolist() == [0, 0, 1, 0]


def test_an_empty_tape_reads_as_no_records(tmp_path: Path) -> None:
    TapeWriter(tmp_path / "t", SYMBOLS).close()
    t = tape.read(tmp_path / "t")
    assert len(t) == 0 and t.symbols == tuple(SYMBOLS) and t.problem() is None


@pytest.mark.parametrize("cut", [1, 17, 31])
def test_a_cut_tail_is_read_to_the_last_whole_record(tmp_path: Path, cut: int) -> None:
    rows = write_some(tmp_path / "t", 10)
    with open(tmp_path / "t", "r+b") as f:  # a killed writer: part of one more record
        f.seek(0, os.SEEK_END)
        f.write(b"\x01" * cut)
    t = tape.read(tmp_path / "t")
    assert as_rows(t) == rows and t.dropped_bytes == cut


def test_records_are_on_disk_only_whole_and_after_their_symbol(tmp_path: Path) -> None:
    w = TapeWriter(tmp_path / "t")
    w.price(1, 5, "AAPL", 1.5)
    assert len(tape.read(tmp_path / "t")) == 0  # buffered
    w.flush()
    w.price(2, 6, "ZZZ", 2.5)  # a symbol the table did not have: in the file's header at once
    assert tape.read_header(tmp_path / "t").symbols == ("AAPL", "ZZZ")
    w.flush()
    t = tape.read(tmp_path / "t")
    assert as_rows(t) == [(0, 0, 1, 5, 1.5), (0, 1, 2, 6, 2.5)]
    w.close()
    w.close()  # twice is harmless


def test_the_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    write_some(tmp_path / "t", 1)
    with pytest.raises(FileExistsError):
        TapeWriter(tmp_path / "t", SYMBOLS)


@pytest.mark.parametrize("bad", ["", "ABCDEFGHIJKLMNOPQ", "ÄPFEL"])
def test_a_bad_symbol_is_refused(tmp_path: Path, bad: str) -> None:
    w = TapeWriter(tmp_path / "t")
    with pytest.raises(TapeError):
        w.price(1, 1, bad, 1.0)
    w.close()


def test_prices_in_one_call_are_written_all_or_none(tmp_path: Path) -> None:
    from types import SimpleNamespace as T

    w = TapeWriter(tmp_path / "t", SYMBOLS)
    w.prices([T(seq=1, ts_ns=10, symbol="AAPL", price=1.5), T(seq=2, ts_ns=20, symbol="NEW", price=2.5)])
    with pytest.raises(TapeError):
        w.prices([T(seq=3, ts_ns=30, symbol="MSFT", price=3.5), T(seq=4, ts_ns=40, symbol="ÄPFEL", price=1.0)])
    w.close()
    t = tape.read(tmp_path / "t")
    assert t.symbols == (*SYMBOLS, "NEW")
    assert as_rows(t) == [(0, 0, 1, 10, 1.5), (0, 3, 2, 20, 2.5)]


def test_at_most_256_symbols(tmp_path: Path) -> None:
    names = [f"S{i}" for i in range(256)]
    w = TapeWriter(tmp_path / "t", names)
    w.price(1, 1, "S255", 1.0)
    with pytest.raises(TapeError, match="more than 256"):
        w.symbol("ONE_MORE")
    w.close()
    t = tape.read(tmp_path / "t")
    assert t.symbols == tuple(names) and t.records["sym"].tolist() == [255]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "not a tape"),
        (b"{\"order_no\": 1}\n", "not a tape"),
        (b"TSTKBOOK" + bytes(4200), "not a tape"),
        (b"TSTAPE\0\0" + bytes(20), "not a tape"),  # shorter than a header
    ],
    ids=["empty", "json", "other_magic", "short"],
)
def test_not_a_tape(tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "t").write_bytes(content)
    with pytest.raises(TapeError, match=says) as e:
        tape.read(tmp_path / "t")
    assert "\n" not in str(e.value) and str(tmp_path / "t") in str(e.value)


def test_a_newer_version_is_refused_with_one_line(tmp_path: Path) -> None:
    write_some(tmp_path / "t", 3)
    with open(tmp_path / "t", "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    with pytest.raises(TapeError, match="tape version 2 is newer than this reader's 1") as e:
        tape.read(tmp_path / "t")
    assert "\n" not in str(e.value)


def test_a_header_cut_short_or_bad_is_refused(tmp_path: Path) -> None:
    write_some(tmp_path / "t", 3)
    raw = (tmp_path / "t").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:1000])
    with pytest.raises(TapeError, match="header cut short"):
        tape.read(tmp_path / "cut")
    (tmp_path / "bad").write_bytes(raw[:12] + struct.pack("<I", 64) + raw[16:])
    with pytest.raises(TapeError, match="record_size 64"):
        tape.read(tmp_path / "bad")


def test_a_missing_file_is_a_tape_error(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match="cannot read"):
        tape.read(tmp_path / "absent")


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ((2, 0, 1, 1, 1.0), "a kind other than"),
        ((0, 3, 1, 1, 1.0), "a sym outside"),
        ((0, 0, 0, 1, 1.0), "seq 0"),
        ((0, 0, 1, 1, -1.0), "a price not > 0"),
        ((0, 0, 1, 1, float("inf")), "a price not finite"),
        ((1, 0, 1, 1, 50.5), "a sentiment not an integer"),
        ((1, 0, 1, 1, 101.0), "a sentiment not an integer"),
    ],
)
def test_problem_names_the_first_bad_record(tmp_path: Path, record: tuple[int, int, int, int, float],
                                            says: str) -> None:
    write_some(tmp_path / "t", 2)
    with open(tmp_path / "t", "ab") as f:
        f.write(struct.pack("<BB6xQQd", *record))
    problem = tape.read(tmp_path / "t").problem()
    assert problem is not None and says in problem and "record 2" in problem


def test_rolling_by_size(tmp_path: Path) -> None:
    roll = tape.RECORDS_OFFSET + 100 * tape.RECORD_SIZE
    w = TapeWriter(tmp_path / "t", SYMBOLS[:1], roll_bytes=roll)
    for i in range(250):
        w.price(i + 1, i, SYMBOLS[i % 3], 1.0 + i)
        if i % 50 == 49:
            w.flush()
    w.close()
    assert [p.name for p in tape.files(tmp_path / "t")] == ["t.1", "t.2", "t"]
    tapes = tape.read_all(tmp_path / "t")
    assert [len(t) for t in tapes] == [100, 100, 50]
    assert tapes[0].symbols == tuple(SYMBOLS) and tapes[-1].symbols == tuple(SYMBOLS)
    assert np.concatenate([t.records["seq"] for t in tapes]).tolist() == list(range(1, 251))
    with pytest.raises(FileExistsError):  # a rolled tape is not overwritten either
        (tmp_path / "t").unlink()
        TapeWriter(tmp_path / "t", SYMBOLS)


def test_a_large_tape_is_read_memory_mapped(tmp_path: Path) -> None:
    n = 2_000_000  # 64 MB
    dt = tape.dtype()
    recs = np.zeros(n, dtype=dt)
    recs["sym"] = np.arange(n) % 3
    recs["seq"] = np.arange(1, n + 1)
    recs["ts_ns"] = np.arange(n) * 5_000
    recs["value"] = 100.0 + (np.arange(n) % 1000) / 100
    TapeWriter(tmp_path / "t", SYMBOLS).close()
    with open(tmp_path / "t", "ab") as f:
        f.write(recs.tobytes())
    t = tape.read(tmp_path / "t")
    assert isinstance(t.records, np.memmap) and not t.records.flags.writeable
    assert str(tmp_path / "t") in Path("/proc/self/maps").read_text()  # mapped, not read in
    assert len(t) == n and int(t.records["seq"][-1]) == n
    assert float(t.records["value"][1234]) == 100.0 + 234 / 100
    assert t.problem() is None


def test_writer_and_dtype_agree(tmp_path: Path) -> None:
    w = TapeWriter(tmp_path / "t", ["X"])
    w.news(7, 2**63 + 5, "X", 100.0)  # u64 times survive
    w.close()
    r = tape.read(tmp_path / "t").records[0]
    assert (int(r["kind"]), int(r["sym"]), int(r["seq"]), int(r["ts_ns"]), float(r["value"])) == (
        1, 0, 7, 2**63 + 5, 100.0)
    assert bytes(r["pad"]) == bytes(6)


def test_a_failed_write_takes_back_its_part_and_keeps_the_buffer(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    w = TapeWriter(tmp_path / "t", SYMBOLS)
    w.price(1, 1, "AAPL", 1.0)
    w.flush()
    for i in range(2, 6):
        w.price(i, i, "AAPL", float(i))
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: bytes) -> int:  # the first write goes half through, the next finds the disk full
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:40])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tape.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        w.flush()
    t = tape.read(tmp_path / "t")
    assert t.dropped_bytes == 0 and t.records["seq"].tolist() == [1]  # whole records only
    monkeypatch.setattr(tape.os, "write", real_write)
    w.close()  # the space is back: the kept records go out
    assert tape.read(tmp_path / "t").records["seq"].tolist() == [1, 2, 3, 4, 5]
