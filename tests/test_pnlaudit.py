"""The audit's P&L, open orders, fills and halts (shared/ops/pnlaudit.py): the journal's segments in
order and its exec journal, marks from a real segment, the halt events and the text tables."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from shared import book, halt, journal
from shared.execstate import decode_line
from shared.ops import audit, pnlaudit


def entry(no: int, side: str, qty: int, price: float, client: str = "c", symbol: str = "AAPL") -> dict[str, Any]:
    """A journal line: order ``o<no>``, accepted."""
    return {"order_no": no, "order_id": f"o{no}", "client_id": client, "symbol": symbol, "side": side, "qty": qty,
            "price": price, "ts_ns": 1, "tick_ts_ns": 1, "recv_ns": 2}


def write_lines(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def ex(exec_id: int, no: int, status: str, last_qty: int, last_px: float | None, cum: int, leaves: int,
       side: str = "BUY", client: str = "c", symbol: str = "AAPL") -> dict[str, Any]:
    """An exec line of order ``o<no>`` (the exec journal's)."""
    return {"type": "exec", "order_id": f"o{no}", "exec_id": exec_id, "status": status, "last_qty": last_qty,
            "last_px": last_px, "cum_qty": cum, "leaves_qty": leaves, "avg_px": last_px, "ts_ns": 1_767_355_200 * 10**9,
            "symbol": symbol, "side": side, "client_id": client, "order_no": no, "recv_ns": 3}


def filled(exec_id: int, no: int, side: str, qty: int, price: float, client: str = "c",
           symbol: str = "AAPL") -> list[dict[str, Any]]:
    """An order's ``new`` and ``filled`` execs (exec_id, exec_id + 1)."""
    return [ex(exec_id, no, "new", 0, None, 0, qty, side, client, symbol),
            ex(exec_id + 1, no, "filled", qty, price, qty, 0, side, client, symbol)]


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


def test_pnl_from_fills_and_open_orders_across_the_segments(tmp_path: Path) -> None:
    """Bought 10 at 100 (an order in a closed segment) and 5 at 80 (a partial fill of another), sold
    15 at 110 (an order in the open segment): 15 x (110 - 1400/15) = 250 realized, flat. An order acked
    but not filled counts nothing but its leaves; one before the venue (the base) is history, neither
    filled nor open."""
    j = tmp_path / "orders.jsonl"
    write_lines(Path(f"{j}.1"), [entry(1, "BUY", 99, 1.0), entry(2, "BUY", 10, 100.0), entry(3, "BUY", 20, 80.0)])
    write_lines(j, [entry(4, "SELL", 15, 110.0), entry(5, "SELL", 7, 150.0, symbol="MSFT")])
    write_lines(Path(f"{j}.execs"), [*filled(1, 2, "BUY", 10, 100.0), ex(3, 3, "new", 0, None, 0, 20),
                                     ex(4, 4, "new", 0, None, 0, 15, "SELL"),
                                     ex(5, 3, "partially_filled", 5, 80.0, 5, 15),
                                     ex(6, 4, "filled", 15, 110.0, 15, 0, "SELL")])
    Path(f"{j}.execs.base").write_text('{"order_no": 1}')
    logs, records, journal = audit.load(tmp_path)
    s = audit.summarize(logs, records, journal, {"AAPL": 100.0}, **audit.load_execs(j))
    assert s["orders"]["journal"] == 5 and (s["orders"]["execs"], s["orders"]["fills"]) == (6, 3)
    c = s["clients"]["c"]
    assert c["symbols"]["AAPL"] == {"position": 0, "avg_price": None, "realized": 250.0, "unrealized": 0.0,
                                    "total": 250.0, "mark": 100.0, "open_buy": 15, "open_sell": 0}
    assert c["symbols"]["MSFT"] == {"position": 0, "avg_price": None, "realized": 0.0, "unrealized": 0.0,
                                    "total": 0.0, "mark": None, "open_buy": 0, "open_sell": 7}
    assert c["open_orders"] == 2
    assert [(o["order_id"], o["cum_qty"], o["leaves_qty"]) for o in s["open_orders"]] == [("o3", 5, 15), ("o5", 0, 7)]
    assert s["fills"] == [{"client_id": "c", "symbol": "AAPL", "fills": 3, "bought": 15, "sold": 15,
                           "avg_buy": 93.333333, "avg_sell": 110.0, "last_fill": "2026-01-02T12:00:00.000Z"}]


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


def test_render_shows_the_pnl_open_orders_fills_and_halts() -> None:
    journal = [entry(1, "BUY", 10, 100.0), entry(2, "SELL", 4, 105.0), entry(3, "BUY", 2, 50.0, "d", "MSFT"),
               entry(4, "BUY", 3, 40.0, "d", "MSFT")]
    execs = [*filled(1, 1, "BUY", 10, 100.0), *filled(3, 2, "SELL", 4, 105.0),
             *filled(5, 3, "BUY", 2, 50.0, "d", "MSFT"), ex(7, 4, "new", 0, None, 0, 3, client="d", symbol="MSFT")]
    logs = {"ordermanager": [rec("2026-01-02T12:00:01Z", "client_halted", "d")]}
    lines_ = [decode_line(json.dumps(x).encode()) for x in execs]
    text = audit.render(audit.summarize(logs, [], journal, {"AAPL": 101.0}, execs=lines_))
    lines = text.splitlines()
    table = lines[lines.index(next(s for s in lines if s.startswith("POSITIONS AND P&L"))) + 1:]
    assert table[0].split() == pnlaudit.PNL_COLUMNS
    rows = [s.split() for s in table[1:5]]
    assert rows == [["c", "AAPL", "6", "100", "101", "20", "6", "26", "0", "0"],
                    ["c", "*", "-", "-", "-", "20", "6", "26", "0", "open", "-"],
                    ["d", "MSFT", "2", "50", "-", "0", "-", "-", "3", "0"],
                    ["d", "*", "-", "-", "-", "0", "-", "-", "1", "open", "-"]]
    opened = lines[lines.index("OPEN ORDERS") + 1:][:2]
    assert opened[0].split() == pnlaudit.OPEN_COLUMNS and opened[1].split() == ["d", "o4", "4", "MSFT", "BUY", "3",
                                                                                 "40", "0", "3"]
    fills = lines[lines.index("FILLS") + 1:][:3]
    assert [r.split()[:5] for r in fills[1:]] == [["c", "AAPL", "2", "10", "4"], ["d", "MSFT", "1", "2", "0"]]
    assert "execs 7  fills 3  exec_id journaled twice 0" in lines
    assert "HALTS" in lines and "2026-01-02T12:00:01Z  client_halted  d" in lines
