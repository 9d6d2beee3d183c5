"""The gateway serving a tape (``gateway.tape``, ``gateway.speed``): the
playback's pace with no sockets and no clock of its own, and a bad tape
stopping the gateway with one line. tests/test_recorder.py plays a recorded
tape through a real gateway."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from shared import tape
from shared.gateway import Playback
from shared.tape import TapeWriter

ROOT = Path(__file__).resolve().parents[1]
MS = 1_000_000


def tape_of(path: Path, rows: list[tuple[str, int, int, float]]) -> tape.Tape:
    """A tape of (stream, seq, ts_ns, value) rows on symbol "A"."""
    w = TapeWriter(path, ["A"])
    for stream, seq, ts, value in rows:
        getattr(w, stream)(seq, ts, "A", value)
    w.close()
    return tape.read(path)


def seqs(rows: list[tuple[int, int, int, int, float]]) -> list[int]:
    return [r[2] for r in rows]


@pytest.fixture
def ten(tmp_path: Path) -> tape.Tape:
    """Ten prices 10 ms apart, a news tick with the fifth."""
    rows = [("price", i + 1, 1_000 * MS + 10 * MS * i, 100.0 + i) for i in range(10)]
    rows.insert(5, ("news", 1, 1_000 * MS + 40 * MS, 70.0))
    return tape_of(tmp_path / "t", rows)


def test_at_speed_1_each_record_is_due_at_its_recorded_gap(ten: tape.Tape) -> None:
    pb = Playback([ten], 1.0)
    assert pb.wait(50.0) == float("inf")  # not started: the gateway waits on its sockets
    assert seqs(pb.due(50.0, 4096)) == [1]  # the first is due at once: it starts the clock
    assert pb.wait(50.0) == pytest.approx(0.010)
    assert pb.due(50.009, 4096) == []
    assert seqs(pb.due(50.0401, 4096)) == [2, 3, 4, 5, 1]  # the news tick in its recorded place
    assert [r[0] for r in pb.rows[:6]] == [0, 0, 0, 0, 0, 1]
    assert seqs(pb.due(50.095, 4096)) == [6, 7, 8, 9, 10]
    assert pb.ended and pb.wait(60.0) == float("inf") and pb.due(99.0, 4096) == []


def test_speed_scales_the_gaps(ten: tape.Tape) -> None:
    pb = Playback([ten], 4.0)
    pb.due(0.0, 4096)
    assert pb.wait(0.0) == pytest.approx(0.0025)
    assert len(pb.due(0.0226, 4096)) == 10 and pb.ended  # 90 ms of tape in 22.5 ms


def test_speed_0_is_as_fast_as_allowed(ten: tape.Tape) -> None:
    pb = Playback([ten], 0.0)
    assert seqs(pb.due(0.0, 3)) == [1, 2, 3]
    assert pb.wait(0.0) == 0.0
    assert len(pb.due(0.0, 100)) == 8 and pb.ended


def test_a_frozen_gateway_does_not_burst_it_reanchors(ten: tape.Tape) -> None:
    pb = Playback([ten], 1.0)
    pb.due(0.0, 4096)
    assert seqs(pb.due(10.0, 2)) == [2, 3]  # 10 s late: a batch, then the rest at the recorded pace
    assert pb.wait(10.0) == pytest.approx(0.0)
    assert seqs(pb.due(10.0, 4096)) == [4]
    assert pb.wait(10.0) == pytest.approx(0.010)


def test_chunks_and_files_follow_on(tmp_path: Path) -> None:
    rows = [("price", i + 1, i * MS, 1.0 + i) for i in range(10_000)]
    w = TapeWriter(tmp_path / "t", ["A"], roll_bytes=tape.RECORDS_OFFSET + 3_000 * tape.RECORD_SIZE)
    for i, (_, seq, ts, v) in enumerate(rows):
        w.price(seq, ts, "A", v)
        if i % 1000 == 999:
            w.flush()
    w.close()
    tapes = tape.read_all(tmp_path / "t")
    assert len(tapes) == 4
    pb = Playback(tapes, 0.0)
    got: list[int] = []
    while not pb.ended:
        got += seqs(pb.due(0.0, 256))
    assert got == list(range(1, 10_001))


def test_an_empty_tape_has_ended(tmp_path: Path) -> None:
    pb = Playback([tape_of(tmp_path / "t", [])], 1.0)
    assert pb.ended and pb.due(0.0, 10) == [] and pb.wait(0.0) == float("inf")


@pytest.mark.parametrize(
    ("record", "says"),
    [(struct.pack("<BB6xQQd", 0, 0, 1, 1, -2.0), "record 1 has a price not > 0"),
     (struct.pack("<BB6xQQd", 1, 0, 1, 1, 300.0), "record 1 has a sentiment not an integer in 0..100"),
     (b"\0" * 40, "record 1 has seq 0")],
    ids=["negative_price", "sentiment_300", "zero_record"],
)
def test_a_bad_record_stops_the_gateway_with_one_line(tmp_path: Path, record: bytes, says: str) -> None:
    tape_of(tmp_path / "t", [("price", 1, 1, 1.0)])
    with open(tmp_path / "t", "ab") as f:
        f.write(record)
    (tmp_path / "c.toml").write_text(f'[gateway]\ntape = "{tmp_path / "t"}"\nprice_port = 1\nnews_port = 2\n')
    r = subprocess.run([sys.executable, str(ROOT / "daemons" / "gateway.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "STACK_CONFIG": str(tmp_path / "c.toml")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"gateway: bad config: gateway.tape: {tmp_path / 't'}: {says}"]
