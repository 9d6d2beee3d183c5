"""A subscriber's stream sequence: sessions and gaps (shared.net.Sequence)."""

from __future__ import annotations

from typing import Any

from shared.net import Retry, Sequence, backoff


class Log:
    """Records (event, fields) instead of writing JSON."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.records.append((event, kw))

    warning = info

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for ev, kw in self.records if ev == name]


def test_contiguous_frames_after_hello_are_no_gap() -> None:
    log = Log()
    s = Sequence(log, "price", 250)
    s.hello("A", next_seq=5, heartbeat_ms=100)
    for seq in (5, 6, 7):
        s.data(seq)
    s.heartbeat(7)
    assert not log.events("gap_detected")
    assert log.events("session") == [{"stream": "price", "session": "A", "previous": None}]
    assert s.timeout_s == 0.3


def test_a_skipped_frame_is_a_gap_and_the_count_resumes() -> None:
    log = Log()
    s = Sequence(log, "news", 250)
    s.hello("A", 1, 250)
    s.data(1)
    s.data(4)
    s.data(5)
    assert [(g["expected"], g["got"]) for g in log.events("gap_detected")] == [(2, 4)]


def test_a_heartbeat_past_what_came_is_a_gap() -> None:
    log = Log()
    s = Sequence(log, "news", 250)
    s.hello("A", 1, 250)
    s.data(1)
    s.heartbeat(3)  # frames 2 and 3 never came
    s.data(4)
    assert [(g["expected"], g["got"]) for g in log.events("gap_detected")] == [(2, 4)]


def test_reconnect_resyncs_from_hello_and_a_new_session_is_logged() -> None:
    log = Log()
    s = Sequence(log, "price", 250)
    s.hello("A", 1, 250)
    s.data(1)
    s.reset()
    s.data(99)  # before the new hello nothing is expected
    s.hello("B", 1, 250)  # the gateway restarted: seq counts from 1 again
    s.data(1)
    assert not log.events("gap_detected")
    assert [r["session"] for r in log.events("session")] == ["A", "B"]


def test_backoff_grows_is_jittered_and_capped() -> None:
    for attempt, top in ((1, 0.05), (2, 0.1), (3, 0.2), (10, 1.0), (100, 1.0)):
        for _ in range(50):
            d = backoff(attempt)
            assert top / 2 <= d <= top


def test_retry_logs_each_failure_and_waits_longer() -> None:
    log = Log()
    r = Retry(log, "segment_wait", segment="s")
    assert r.due(0.0)
    r.failed(10.0, "missing")
    r.failed(10.0, "missing")
    waits = log.events("segment_wait")
    assert [w["attempt"] for w in waits] == [1, 2]
    assert waits[0] == {"segment": "s", "attempt": 1, "delay_ms": waits[0]["delay_ms"], "error": "missing"}
    assert not r.due(10.0) and r.due(10.0 + waits[1]["delay_ms"] / 1000 + 0.001)
    r.succeeded()
    r.failed(20.0, "missing")
    assert log.events("segment_wait")[-1]["attempt"] == 1
