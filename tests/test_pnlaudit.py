"""The audit's P&L and halts (shared/ops/pnlaudit.py): the journal's segments in order, marks from a
real segment, the halt events and the text table."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from shared import book, halt, journal
from shared.ops import audit, pnlaudit


def entry(no: int, side: str, qty: int, price: float, client: str = "c", symbol: str = "AAPL") -> dict[str, Any]:
    return {"order_no": no, "order_id": f"o{no}", "client_id": client, "symbol": symbol, "side": side, "qty": qty,
            "price": price, "ts_ns": 1, "tick_ts_ns": 1, "recv_ns": 2}


def write_lines(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_journal_segments_are_read_closed_by_n_then_the_open_one(tmp_path: Path) -> None:
    """path.1, path.2, …, path.10 by number (not by name), then path; the ordermanager's own files
    beside them (non-numeric suffixes) are not orders."""
    j = tmp_path / "orders.jsonl"
    for n in (10, 2, 1):
        write_lines(Path(f"{j}.{n}"), [entry(n, "BUY", 1, 1.0)])
    write_lines(j, [entry(11, "BUY", 1, 1.0)])
    (tmp_path / "orders.jsonl.halted").write_text('{"seq": 1, "halted": []}\n')
    (tmp_path / "orders.jsonl.checkpoint").write_text('{"order_no": 99}\n')
    write_lines(tmp_path / "orders.jsonl.tmp-12", [entry(99, "BUY", 1, 1.0)])
    assert [p.name for p in journal.segments(j)] == ["orders.jsonl.1", "orders.jsonl.2", "orders.jsonl.10",
                                                           "orders.jsonl"]
    assert [e["order_no"] for e in list(journal.read(j))] == [1, 2, 10, 11]
    assert list(journal.read(tmp_path / "none.jsonl")) == []


def test_pnl_spans_the_segments(tmp_path: Path) -> None:
    """A flip whose opening lies in a closed segment and whose close lies in the open one."""
    j = tmp_path / "orders.jsonl"
    write_lines(Path(f"{j}.1"), [entry(1, "BUY", 10, 100.0)])
    write_lines(j, [entry(2, "SELL", 15, 110.0)])
    logs, records, journal = audit.load(tmp_path)
    s = audit.summarize(logs, records, journal, {"AAPL": 100.0})
    assert s["orders"]["journal"] == 2
    assert s["clients"]["c"]["symbols"]["AAPL"] == {"position": -5, "avg_price": 110.0, "realized": 100.0,
                                                    "unrealized": 50.0, "total": 150.0, "mark": 100.0}


def test_marks_from_a_real_segment() -> None:
    """The latest price of each symbol written; one never written has no mark; no segment, no marks."""
    name = f"ts_{uuid.uuid4().hex[:10]}"
    seg = book.Segment.create(name, ["AAPL", "MSFT", "GOOGL"])
    try:
        w = book.Writer(seg)
        w.write(0, 101.5, 1, 1)
        w.write(0, 102.25, 2, 2)
        w.write(2, 150.0, 3, 3)
        assert pnlaudit.marks(name) == {"AAPL": 102.25, "GOOGL": 150.0}
    finally:
        seg.close()
        book.unlink(name)
    assert pnlaudit.marks(name) == {}
    assert pnlaudit.marks(None) == {}


def rec(ts: str, event: str, cid: str) -> dict[str, Any]:
    return {"ts": ts, "level": "info", "event": event, "client_id": cid}


def test_halts_in_time_order_and_who_is_halted_now(tmp_path: Path) -> None:
    logs = {"ordermanager": [rec("2026-01-02T12:00:03Z", "client_resumed", "a"),
                             rec("2026-01-02T12:00:01Z", "client_halted", "a"),
                             {**rec("2026-01-02T12:00:02Z", "order_rejected", "a"), "reason": "risk"}],
            "ordermanager2": [rec("2026-01-02T12:00:02Z", "client_halted", "b")]}
    f = tmp_path / "orders.jsonl.halted"
    f.write_bytes(halt.encode(halt.HaltState(3, frozenset({"b"}))))
    doc = pnlaudit.halts(logs, f)
    assert [(e["event"], e["client_id"]) for e in doc["events"]] == [
        ("client_halted", "a"), ("client_halted", "b"), ("client_resumed", "a")]
    assert doc["halted"] == ["b"]
    assert pnlaudit.halts({}, tmp_path / "absent.halted")["halted"] == []
    f.write_text("garbage")
    assert pnlaudit.halts({}, f)["halted"] is None
    assert pnlaudit.halt_lines(pnlaudit.halts(logs, f))[0] == "halted now: unknown (the halt file cannot be read)"


def test_render_shows_the_pnl_table_and_the_halts() -> None:
    journal = [entry(1, "BUY", 10, 100.0), entry(2, "SELL", 4, 105.0), entry(3, "BUY", 2, 50.0, "d", "MSFT")]
    logs = {"ordermanager": [rec("2026-01-02T12:00:01Z", "client_halted", "d")]}
    text = audit.render(audit.summarize(logs, [], journal, {"AAPL": 101.0}))
    lines = text.splitlines()
    table = lines[lines.index(next(s for s in lines if s.startswith("POSITIONS AND P&L"))) + 1:]
    assert table[0].split() == pnlaudit.PNL_COLUMNS
    rows = [s.split() for s in table[1:5]]
    assert rows == [["c", "AAPL", "6", "100", "101", "20", "6", "26"], ["c", "*", "-", "-", "-", "20", "6", "26"],
                    ["d", "MSFT", "2", "50", "-", "0", "-", "-"], ["d", "*", "-", "-", "-", "0", "-", "-"]]
    assert "HALTS" in lines and "2026-01-02T12:00:01Z  client_halted  d" in lines
