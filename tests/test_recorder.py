"""stack-record (shared/recorder.py) against a real gateway process, then that
tape served by a second gateway (``gateway.tape``): the subscriber sees the
same ticks, with the same seqs, per stream (contract §10).

Each gateway runs alone (daemons/gateway.py, its own config and free ports);
every process is stopped and every file is under pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import config, tape
from shared.protocol import BadFrame, BadMessage, FrameDecoder, Heartbeat, Hello, News, Price, frame, frame_body
from shared.recorder import Batch, Recorder, TickFrames, _price_decoder, _prices_decoder
from shared.tape import TapeWriter

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ["AAPL", "MSFT", "GOOGL"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


class GatewayProc:
    """A gateway daemon of its own: ``[gateway]`` keys given, free ports; ``stop()`` ends it."""

    def __init__(self, workdir: Path, symbols: list[str] = SYMBOLS, **gateway: Any) -> None:
        name = f"gw-{uuid.uuid4().hex[:6]}"
        self.price_port, self.news_port = free_port(), free_port()
        keys = {"price_port": self.price_port, "news_port": self.news_port, "heartbeat_ms": 100, **gateway}
        self.config = workdir / f"{name}.toml"
        self.config.write_text(f"symbols = {toml_value(symbols)}\n[gateway]\n"
                               + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()))
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "daemons" / "gateway.py")], cwd=ROOT,
                                         env={**os.environ, "STACK_CONFIG": str(self.config)},
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            self.wait_for(lambda: len(self.events("listening")) == 2, "listening on both ports")
        except BaseException:
            self.stop()
            raise

    def events(self, event: str) -> list[dict[str, Any]]:
        """The gateway's log records of one event (a probe connection would be a subscriber)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == event:
                out.append(rec)
        return out

    def wait_for(self, ok: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway: no {what} in {timeout} s: {self.log_path.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[GatewayProc]]:
    """Gateways a test starts (append them); all stopped after it."""
    procs: list[GatewayProc] = []
    yield procs
    for g in procs:
        g.stop()


def record(gw: GatewayProc, out: Path, seconds: float, *extra: str) -> tuple[subprocess.CompletedProcess[str],
                                                                              dict[str, Any]]:
    """Run stack-record against ``gw``; the process and its final ``recorded`` log record."""
    r = subprocess.run([sys.executable, "-m", "shared.recorder", "--seconds", str(seconds), "--out", str(out),
                        "--config", str(gw.config), *extra], cwd=ROOT, capture_output=True, text=True,
                       timeout=seconds + 60)
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    done = [x for x in recs if x["event"] == "recorded"]
    return r, (done[0] if done else {})


@dataclass
class Heard:
    """What one subscriber heard on each stream."""

    hello: dict[str, Hello] = field(default_factory=dict)
    ticks: dict[str, list[tuple[int, str, float]]] = field(default_factory=lambda: {"price": [], "news": []})
    snapshot: list[Price] = field(default_factory=list)
    heartbeats: dict[str, list[Heartbeat]] = field(default_factory=lambda: {"price": [], "news": []})
    arrived: dict[str, list[float]] = field(default_factory=lambda: {"price": [], "news": []})


def listen(gw: GatewayProc, until: Any, timeout: float = 30.0) -> Heard:
    """Subscribe to both streams (price first) and collect until ``until(heard)`` or the timeout."""
    heard = Heard()
    sel = selectors.DefaultSelector()
    socks = []
    for stream, port in (("price", gw.price_port), ("news", gw.news_port)):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, (stream, FrameDecoder()))
        socks.append(s)
    deadline = time.monotonic() + timeout
    try:
        while not until(heard) and time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                stream, dec = key.data
                data = key.fileobj.recv(1 << 16)
                assert data, f"the gateway closed the {stream} stream"
                now = time.monotonic()
                for m in dec.feed(data):
                    if type(m) is Hello:
                        heard.hello[stream] = m
                    elif type(m) is Price and m.snapshot:
                        heard.snapshot.append(m)
                    elif type(m) is Price:
                        heard.ticks[stream].append((m.seq, m.symbol, m.price))
                        heard.arrived[stream].append(now)
                    elif type(m) is News:
                        heard.ticks[stream].append((m.seq, m.symbol, float(m.sentiment)))
                        heard.arrived[stream].append(now)
                    elif type(m) is Heartbeat:
                        heard.heartbeats[stream].append(m)
    finally:
        for s in socks:
            sel.unregister(s)
            s.close()
        sel.close()
    return heard


def on_tape(t: tape.Tape, stream: str) -> list[tuple[int, str, float]]:
    """The tape's (seq, symbol, value) of one stream, in order."""
    r = t.kind(stream)
    return [(seq, t.symbols[sym], v) for seq, sym, v in zip(r["seq"].tolist(), r["sym"].tolist(),
                                                            r["value"].tolist(), strict=True)]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


# --- the recorder in-process: frames in, records out ----------------------------


class Log:
    """Records (event, fields) instead of writing JSON."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.records.append((event, kw))

    warning = error = info

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for ev, kw in self.records if ev == name]


def hello(stream: str, session: str, next_seq: int, symbols: list[str]) -> Hello:
    return Hello(proto=1, stream=stream, session=session, symbols=symbols, heartbeat_ms=100,
                 next_seq=next_seq)


def test_live_ticks_are_recorded_snapshots_not_and_gaps_counted(tmp_path: Path) -> None:
    log = Log()
    rec = Recorder(config.parse({}), log, TapeWriter(tmp_path / "t"))
    p, n = rec._on_price, rec._on_news
    p(None, hello("price", "S", 5, ["MSFT", "AAPL"]))
    p(None, Price(seq=3, ts_ns=30, symbol="AAPL", price=1.5, snapshot=True))
    for seq in (5, 6, 8):  # 7 never came
        p(None, Price(seq=seq, ts_ns=seq * 10, symbol="AAPL", price=seq / 2))
    p(None, Heartbeat(ts_ns=90, seq=9))  # 9 never came either
    n(None, hello("news", "S", 1, ["MSFT", "AAPL"]))
    n(None, News(seq=1, ts_ns=95, symbol="MSFT", sentiment=77))
    rec.price._connected(SimpleNamespace(decoder=None))  # a reconnect: ticks 10..11 went by meanwhile
    p(None, hello("price", "S", 12, ["MSFT", "AAPL"]))
    p(None, Price(seq=12, ts_ns=120, symbol="ÜBER", price=2.0))  # not ASCII
    p(None, Price(seq=13, ts_ns=130, symbol="NEW", price=3.0))
    summary = rec.close()
    t = tape.read(tmp_path / "t")
    assert t.symbols == ("MSFT", "AAPL", "NEW")  # hello's order, then what came
    assert as_rows(t) == [(0, 1, 5, 50, 2.5), (0, 1, 6, 60, 3.0), (0, 1, 8, 80, 4.0), (1, 0, 1, 95, 77.0),
                          (0, 2, 13, 130, 3.0)]
    assert {k: summary[k] for k in ("price_ticks", "price_gaps", "price_missed", "news_ticks", "news_gaps",
                                    "records", "skipped", "files")} == {
        "price_ticks": 5, "price_gaps": 2, "price_missed": 2, "news_ticks": 1, "news_gaps": 0, "records": 5,
        "skipped": 1, "files": 1}
    assert [(g["expected"], g["got"]) for g in log.events("gap_detected")] == [(7, 8), (9, 10)]
    assert log.events("ticks_missed") == [{"stream": "price", "first": 10, "last": 11}]
    assert [e["symbol"] for e in log.events("symbol_not_recorded")] == ["ÜBER"]


def as_rows(t: tape.Tape) -> list[tuple[int, int, int, int, float]]:
    r = t.records
    return list(zip(r["kind"].tolist(), r["sym"].tolist(), r["seq"].tolist(), r["ts_ns"].tolist(),
                    r["value"].tolist(), strict=True))


# --- recording ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A tape of ~2 s of a random-walk gateway (2,000 prices/s, 100 news/s), and the recorder's summary."""
    d = tmp_path_factory.mktemp("recorded")
    gw = GatewayProc(d, price_rate=2000, news_rate=100, seed=7)
    try:
        r, summary = record(gw, d / "ticks.tape", 2)
    finally:
        gw.stop()
    assert r.returncode == 0, r.stderr
    yield d / "ticks.tape", summary


def test_the_recorder_writes_every_live_tick_of_both_streams(recorded: tuple[Path, dict[str, Any]]) -> None:
    path, summary = recorded
    t = tape.read(path)
    assert t.symbols == tuple(SYMBOLS) and t.dropped_bytes == 0 and t.problem() is None
    prices, news = t.kind("price"), t.kind("news")
    assert 2000 <= len(prices) <= 6000 and 50 <= len(news) <= 400  # about 2 s of each
    for stream, kind in (("price", prices), ("news", news)):
        seqs = kind["seq"].tolist()
        assert contiguous(seqs), f"{stream}: a gap in the tape"
        assert summary[f"{stream}_ticks"] == len(seqs)
        assert summary[f"{stream}_gaps"] == summary[f"{stream}_missed"] == 0
        assert np.all(np.diff(kind["ts_ns"].astype(np.int64)) >= 0)  # one gateway's clock, in order
    assert summary["records"] == len(t) and summary["bytes"] == len(t) * tape.RECORD_SIZE
    assert (summary["files"], summary["reason"]) == (1, "done")
    assert 1.9 <= summary["seconds"] < 10
    assert np.all((news["value"] >= 0) & (news["value"] <= 100))


def test_the_tape_is_in_arrival_order_across_streams(recorded: tuple[Path, dict[str, Any]]) -> None:
    kinds = tape.read(recorded[0]).records["kind"]
    first_news = int(np.flatnonzero(kinds == tape.NEWS)[0])
    assert 0 < first_news < len(kinds) - 1 and tape.PRICE in kinds[first_news:]  # interleaved, not appended


def test_a_killed_recorder_leaves_a_tape_readable_to_its_last_whole_record(
        tmp_path: Path, gateways: list[GatewayProc]) -> None:
    gw = GatewayProc(tmp_path, price_rate=0, news_rate=0)  # as fast as it can
    gateways.append(gw)
    out = tmp_path / "killed.tape"
    rec = subprocess.Popen([sys.executable, "-m", "shared.recorder", "--seconds", "60", "--out", str(out),
                            "--config", str(gw.config)], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.stat().st_size > 4 << 20) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        rec.send_signal(signal.SIGKILL)
        rec.wait()
    t = tape.read(out)
    assert len(t) > 100_000 and t.problem() is None
    for stream in ("price", "news"):
        seqs = t.kind(stream)["seq"]
        assert np.all(np.diff(seqs.astype(np.int64)) > 0), stream  # whole records, in order


def test_the_recorder_refuses_an_existing_file_and_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"keep me")
    (tmp_path / "ok.toml").write_text("")
    for args, says in (
        (["--out", str(tmp_path / "t"), "--config", str(tmp_path / "ok.toml")], "exists"),
        (["--out", str(tmp_path / "u"), "--config", str(tmp_path / "absent.toml")], "bad config"),
    ):
        r = subprocess.run([sys.executable, "-m", "shared.recorder", "--seconds", "1", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "t").read_bytes() == b"keep me" and not (tmp_path / "u").exists()


def test_with_no_gateway_the_recorder_says_so_and_fails(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "c.toml").write_text(f"[gateway]\nprice_port = {port}\nnews_port = {port}\n")
    r = subprocess.run([sys.executable, "-m", "shared.recorder", "--seconds", "0.3", "--out", str(tmp_path / "t"),
                        "--config", str(tmp_path / "c.toml")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "never subscribed to price" in r.stderr and "and news" in r.stderr
    assert len(tape.read(tmp_path / "t")) == 0


# --- replay -------------------------------------------------------------------


def test_a_replay_serves_the_recorded_ticks_with_their_seqs(
        tmp_path: Path, gateways: list[GatewayProc], recorded: tuple[Path, dict[str, Any]]) -> None:
    t = tape.read(recorded[0])
    want = {s: on_tape(t, s) for s in ("price", "news")}
    gw = GatewayProc(tmp_path, symbols=["XYZ"], tape=str(recorded[0]), speed=0)  # the tape's symbols win
    gateways.append(gw)
    cpu = cpu_s(gw.proc.pid)
    time.sleep(1.0)
    assert cpu_s(gw.proc.pid) - cpu < 0.25  # waiting for its subscribers, it sleeps
    last = {s: want[s][-1][0] for s in want}

    def done(h: Heard) -> bool:  # everything, then a heartbeat past the end on each stream
        return all(h.heartbeats[s] and h.heartbeats[s][-1].seq == last[s] for s in last)

    heard = listen(gw, done)
    assert heard.ticks == want
    for s in ("price", "news"):
        h = heard.hello[s]
        assert h.symbols == SYMBOLS
        assert h.next_seq == want[s][0][0] > 1  # it waited for both streams' subscribers; the recording
        # began mid-session, and the replay begins at its first seq: no gap
    assert heard.snapshot == []
    assert gw.events("tape_ended") and gw.events("tape_symbols")

    late = listen(gw, lambda h: len(h.hello) == 2 and h.heartbeats["price"] and h.heartbeats["news"])
    assert {s: late.hello[s].next_seq for s in last} == {s: last[s] + 1 for s in last}
    latest = {sym: (seq, px) for seq, sym, px in want["price"]}
    assert {p.symbol: (p.seq, p.price) for p in late.snapshot} == latest
    assert late.ticks == {"price": [], "news": []}


def test_a_replay_at_speed_keeps_the_recorded_pace(
        tmp_path: Path, gateways: list[GatewayProc], recorded: tuple[Path, dict[str, Any]]) -> None:
    t = tape.read(recorded[0])
    ts = t.records["ts_ns"]
    span = (int(ts[-1]) - int(ts[0])) / 1e9
    gw = GatewayProc(tmp_path, tape=str(recorded[0]), speed=4.0)
    gateways.append(gw)
    n = {s: len(t.kind(s)) for s in ("price", "news")}
    heard = listen(gw, lambda h: all(len(h.ticks[s]) == n[s] for s in n))
    assert heard.ticks == {s: on_tape(t, s) for s in n}
    arrived = sorted(heard.arrived["price"] + heard.arrived["news"])
    took = arrived[-1] - arrived[0]
    assert span / 4 * 0.8 <= took <= span / 4 + 1.0, (took, span)


# --- the stack recording all the time ([recorder] enabled) -----------------------


def test_an_enabled_recorder_records_all_the_time_rolling_and_a_new_tape_per_start(
        make_stack: Any, tmp_path: Path) -> None:
    """A supervised ``recorder`` beside the stack: tapes rolled by size; kill -9 of it loses no tape
    (supervisord starts it again, on a new one); every file reads back, each stream's seqs rising."""
    from shared.ops.chaos import faults

    tapes = tmp_path / "tapes"
    s = make_stack({"recorder": {"enabled": True, "dir": str(tapes), "roll_mb": 0.02},
                    "gateway": {"price_rate": 300, "news_rate": 20}})
    s.wait_running(("recorder",))

    def bases() -> list[Path]:
        return sorted(p for p in tapes.glob("session-*.tape"))

    def wait(what: str, predicate: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    wait("a first tape rolled", lambda: len(bases()) == 1 and len(tape.files(bases()[0])) >= 2)
    first = bases()[0]
    old = faults.kill(s, "recorder", signal.SIGKILL)
    wait("a second tape after the restart", lambda: len(bases()) == 2 and s.pids().get("recorder") not in (0, old))
    second = [b for b in bases() if b != first][0]
    wait("ticks on the second tape", lambda: sum(t.records.size for t in tape.read_all(second)) > 0)
    s.ctl("stop", "recorder", check=True)
    done = [r for r in s.events("recorder", "recorded")]
    assert done and done[-1]["out"] == str(second) and done[-1]["price_gaps"] == 0, done
    for base in (first, second):  # every rolled file and the open one (a kill -9's cut last record is left out)
        recs = np.concatenate([t.records for t in tape.read_all(base)])
        assert recs.size > 0
        for kind in (0, 1):  # each stream's seqs rise, one gateway session
            assert (np.diff(recs["seq"][recs["kind"] == kind].astype(np.int64)) > 0).all()
    assert len(tape.files(first)) >= 2


def test_the_recorder_program_is_there_only_when_enabled() -> None:
    from shared.ops import ctl

    text = (config.ROOT / "deploy" / "supervisord.conf").read_text()
    assert "[program:recorder]" not in ctl.render(config.parse({}), text, "/x")  # off by default
    on = ctl.render(config.parse({"recorder": {"enabled": True}}), text, "/x")
    assert "[program:recorder]" in on and "/x/../daemons/recorder.py" in on
    with pytest.raises(config.ConfigError, match="recorder.roll_mb"):
        config.parse({"recorder": {"roll_mb": -1}})


# --- a read's frames decoded in one call (TickFrames) ---------------------------

BAD_BODIES = [b'{"type":"price","seq":0,"ts_ns":1,"symbol":"AAPL","price":1.0}', b"not json",
              b'{"type":"order","order_id":"x"}', b'{"type":"price","seq":\xff}', b'{"a":1},{"b":2}']
price_msgs = st.one_of(
    st.builds(Price, seq=st.integers(1, 2**40), ts_ns=st.integers(0, 2**63),
              symbol=st.sampled_from(SYMBOLS), price=st.floats(0.01, 1e6), snapshot=st.booleans()),
    st.builds(Heartbeat, ts_ns=st.integers(0, 2**63), seq=st.none() | st.integers(0, 2**40)),
    st.builds(hello, st.just("price"), st.just("S"), st.integers(1, 2**40), st.just(SYMBOLS)),
)


def flat(out: list[Any]) -> list[Any]:
    """Messages as a subscriber handles them: a Batch's one by one; a bad one by its detail."""
    ms = [m for x in out for m in (x if type(x) is Batch else [x])]
    return [("bad", m.detail) if isinstance(m, BadMessage) else m for m in ms]


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(price_msgs | st.sampled_from(BAD_BODIES), min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 5_000), max_size=10))
def test_tick_frames_give_what_the_frame_decoder_gives(parts: list[Any], cuts: list[int]) -> None:
    stream = b"".join(frame_body(p) if isinstance(p, bytes) else frame(p) for p in parts)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    one, many = FrameDecoder(_price_decoder), TickFrames(_price_decoder, _prices_decoder)
    a: list[Any] = []
    b: list[Any] = []
    prev = 0
    for p in [*points, len(stream)]:
        a += one.feed(stream[prev:p])
        b += many.feed(stream[prev:p])
        prev = p
    assert flat(b) == flat(a)


def test_tick_frames_decode_a_good_read_in_one_batch_and_a_bad_length_as_ever() -> None:
    good = [Price(seq=i, ts_ns=i, symbol="AAPL", price=1.5) for i in range(1, 6)]
    out = TickFrames(_price_decoder, _prices_decoder).feed(b"".join(frame(p) for p in good))
    assert len(out) == 1 and type(out[0]) is Batch and list(out[0]) == good
    cut = frame(good[0]) + frame_body(b"x") + b"\0\0\0\0"  # a length of 0: the stream is broken there
    got = []
    for d in (FrameDecoder(_price_decoder), TickFrames(_price_decoder, _prices_decoder)):
        with pytest.raises(BadFrame) as e:
            d.feed(cut)
        got.append((flat(e.value.messages), str(e.value), d.broken))
    assert got[0] == got[1] and got[1][0][0] == good[0] and got[1][0][1][0] == "bad" and got[1][2]


def test_a_batch_is_recorded_as_its_ticks_one_by_one(tmp_path: Path) -> None:
    """The same tape, counts and log lines from a read's Batch as from its messages one at a time."""
    msgs: list[Any] = [hello("price", "S", 5, ["MSFT", "AAPL"]),
                       Price(seq=3, ts_ns=30, symbol="AAPL", price=1.5, snapshot=True),
                       *(Price(seq=q, ts_ns=q * 10, symbol="AAPL", price=q / 2) for q in (5, 6, 8)),
                       Heartbeat(ts_ns=90, seq=9), Price(seq=12, ts_ns=120, symbol="ÜBER", price=2.0),
                       Price(seq=13, ts_ns=130, symbol="NEW", price=3.0)]
    got = []
    for name, feed in (("one", msgs), ("batch", [Batch(msgs)])):
        log = Log()
        rec = Recorder(config.parse({}), log, TapeWriter(tmp_path / name))
        for m in feed:
            rec._on_price(None, m)
        summary = rec.close()
        got.append((as_rows(tape.read(tmp_path / name)), {k: v for k, v in summary.items() if k != "out"
                                                          and k != "seconds" and k != "per_s"}, log.records))
    assert got[0] == got[1]
    assert got[0][1]["price_ticks"] == 5 and got[0][1]["skipped"] == 1
