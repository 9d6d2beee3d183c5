"""The order journal (contract §6): lines, reload, torn and corrupt lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.journal import Entry, Journal

FIELDS = {"order_no", "order_id", "client_id", "symbol", "side", "qty", "price", "ts_ns", "tick_ts_ns", "recv_ns"}


class FakeLog:
    """Records every call as (level, event, fields)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, event: str, **kw: Any) -> None:
        self.calls.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._record("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._record("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._record("error", event, **kw)

    def events(self, level: str | None = None) -> list[str]:
        """The events logged, at one level or all."""
        return [e for lv, e, _ in self.calls if level is None or lv == level]

    def find(self, event: str) -> dict[str, Any]:
        """The fields of the one call of ``event``."""
        hits = [kw for _, e, kw in self.calls if e == event]
        assert len(hits) == 1, self.calls
        return hits[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "orders.jsonl"


@pytest.fixture
def opened() -> Iterator[list[Journal]]:
    """Journals opened by a test, closed after it."""
    js: list[Journal] = []
    yield js
    for j in js:
        j.close()


def open_journal(path: Path, opened: list[Journal], sync: str = "write") -> tuple[Journal, FakeLog]:
    """A journal on ``path`` with a recording logger, closed after the test."""
    log = FakeLog()
    j = Journal(str(path), sync, log)
    opened.append(j)
    return j, log


def entry(no: int, order_id: str, client_id: str = "c1", symbol: str = "AAPL", side: str = "BUY",
          qty: int = 10) -> Entry:
    """A journal entry with made-up times."""
    return Entry(no, order_id, client_id, symbol, side, qty, 100.0 + no / 4, 1000 + no, 900 + no, 1100 + no)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_new_journal_is_empty(path: Path, opened: list[Journal]) -> None:
    j, log = open_journal(path, opened)
    assert (j.last_no, j.index, j.positions, j.last_id) == (0, {}, {}, {})
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    assert log.events("warning") == log.events("error") == []


def test_stage_commit_writes_one_line_per_order(path: Path, opened: list[Journal]) -> None:
    j, _ = open_journal(path, opened)
    j.stage(entry(1, "a-1"))
    j.stage(entry(2, "a-2", side="SELL", qty=3))
    assert j.last_no == 2 and j.lookup("c1", "a-2") == 2  # indexed at once
    assert path.read_bytes() == b""  # written only at commit
    assert j.commit() == 2
    assert j.commit() == 0
    got = lines(path)
    assert [set(line) for line in got] == [FIELDS, FIELDS]
    assert got[0] == {"order_no": 1, "order_id": "a-1", "client_id": "c1", "symbol": "AAPL", "side": "BUY",
                      "qty": 10, "price": 100.25, "ts_ns": 1001, "tick_ts_ns": 901, "recv_ns": 1101}
    assert (got[1]["order_no"], got[1]["side"], got[1]["qty"]) == (2, "SELL", 3)
    assert path.read_bytes().endswith(b"\n")


def test_fsync_policy_writes_too(path: Path, opened: list[Journal]) -> None:
    j, _ = open_journal(path, opened, sync="fsync")
    j.stage(entry(1, "a-1"))
    assert j.commit() == 1
    assert len(lines(path)) == 1


def test_close_commits_what_is_staged(path: Path) -> None:
    j = Journal(str(path), "write", FakeLog())
    j.stage(entry(1, "a-1"))
    j.close()
    assert len(lines(path)) == 1


def fill(path: Path, opened: list[Journal]) -> None:
    """Three orders of two clients, committed."""
    j, _ = open_journal(path, opened)
    j.stage(entry(1, "a-1", "c1", "AAPL", "BUY", 10))
    j.stage(entry(2, "b-1", "c2", "MSFT", "SELL", 5))
    j.stage(entry(3, "a-2", "c1", "AAPL", "SELL", 20))
    j.commit()


def test_reload_rebuilds_the_state(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    j, log = open_journal(path, opened)
    assert j.last_no == 3
    assert j.index == {"c1": {"a-1": 1, "a-2": 3}, "c2": {"b-1": 2}}
    assert j.positions == {"c1": {"AAPL": -10}, "c2": {"MSFT": -5}}
    assert j.last_id == {"c1": "a-2", "c2": "b-1"}
    loaded = log.find("journal_loaded")
    assert (loaded["orders"], loaded["last_order_no"]) == (3, 3)
    assert log.events("warning") == log.events("error") == []


def test_appends_after_reload(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    j, _ = open_journal(path, opened)
    j.stage(entry(j.last_no + 1, "a-3"))
    j.commit()
    assert [line["order_no"] for line in lines(path)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "tail",
    [
        b'{"order_no": 4, "order_id": "a-3", "client_id": "c1", "sym',  # half an object
        b"{",
        json.dumps({"order_no": 4, "order_id": "a-3", "client_id": "c1", "symbol": "AAPL", "side": "BUY", "qty": 1,
                    "price": 1.0, "ts_ns": 1, "tick_ts_ns": 1, "recv_ns": 1}).encode(),  # whole, but no newline
    ],
    ids=["half_object", "one_brace", "no_newline"],
)
def test_torn_last_line_is_cut_off(path: Path, opened: list[Journal], tail: bytes) -> None:
    fill(path, opened)
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    j, log = open_journal(path, opened)
    assert path.read_bytes() == good
    rep = log.find("journal_repaired")
    assert rep["dropped_bytes"] == len(tail)
    assert "journal_repaired" in log.events("warning")
    assert j.last_no == 3 and j.lookup("c1", "a-3") is None
    assert j.positions == {"c1": {"AAPL": -10}, "c2": {"MSFT": -5}}
    # the next order continues contiguously, on a line of its own
    j.stage(entry(j.last_no + 1, "a-3"))
    j.commit()
    assert [line["order_no"] for line in lines(path)] == [1, 2, 3, 4]
    j2, log2 = open_journal(path, opened)
    assert j2.last_no == 4 and log2.events("warning") == []


def test_torn_line_in_an_otherwise_empty_journal(path: Path, opened: list[Journal]) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"order_no": 1, "ord')
    j, log = open_journal(path, opened)
    assert path.read_bytes() == b""
    assert j.last_no == 0 and log.events("warning") == ["journal_repaired"]


def test_corrupt_middle_line_is_logged_and_skipped(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    raw = path.read_bytes().split(b"\n")
    raw[1] = b'{"order_no": 2, "garbage'
    path.write_bytes(b"\n".join(raw))
    before = path.read_bytes()
    j, log = open_journal(path, opened)
    err = log.find("journal_corrupt_line")
    assert err["line"] == 2
    assert "journal_corrupt_line" in log.events("error")
    assert path.read_bytes() == before  # a middle line is never cut away
    assert j.index == {"c1": {"a-1": 1, "a-2": 3}}
    assert j.last_no == 3
    assert j.positions == {"c1": {"AAPL": -10}}
    j.stage(entry(j.last_no + 1, "a-3"))
    j.commit()
    assert path.read_bytes().endswith(b"\n")
    assert [json.loads(x)["order_no"] for x in path.read_bytes().splitlines() if x != raw[1]] == [1, 3, 4]


def test_wrong_field_type_counts_as_corrupt(path: Path, opened: list[Journal]) -> None:
    fill(path, opened)
    raw = path.read_bytes().split(b"\n")
    raw[0] = raw[0].replace(b'"qty":10', b'"qty":"10"')
    assert b'"qty":"10"' in raw[0]
    path.write_bytes(b"\n".join(raw))
    j, log = open_journal(path, opened)
    assert log.find("journal_corrupt_line")["line"] == 1
    assert j.lookup("c1", "a-1") is None and j.last_no == 3
