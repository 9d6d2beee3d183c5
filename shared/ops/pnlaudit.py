"""The audit's positions, P&L and halts: the journal's segments, marks from the book, the halt file.

``stack-audit`` (shared.ops.audit) calls these; the P&L itself is
``shared.pnl``, pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared import book, config, halt, pnl

Record = dict[str, Any]


def halt_file(journal: Path) -> Path:
    """The halt file beside a journal (shared.halt)."""
    return Path(str(journal) + halt.SUFFIX)


def config_segment() -> str | None:
    """The book segment of the config in force (None if it does not load)."""
    try:
        return config.load().book.segment
    except config.ConfigError:
        return None


def marks(segment: str | None) -> dict[str, float]:
    """The book's latest price of every symbol priced so far; {} when there is no segment."""
    if not segment:
        return {}
    try:
        seg = book.Segment.attach(segment)
    except (book.BookError, OSError, ValueError):
        return {}
    try:
        out = {}
        for slot, sym in enumerate(seg.symbols):
            rec = seg.read(slot)
            if rec is not None and rec.updates > 0 and rec.price > 0:
                out[sym] = rec.price
        return out
    finally:
        seg.close()


def clients(journal: Iterable[Mapping[str, Any]], prices: Mapping[str, float]) -> dict[str, Any]:
    """Contract §8's ``clients[<client_id>]`` document from journal entries and marks."""
    return pnl.report(pnl.positions(journal), prices)


def halts(logs: Mapping[str, Iterable[Record]], halt_file: Path | None) -> dict[str, Any]:
    """``events``: every ``client_halted`` / ``client_resumed`` logged, in time order; ``halted``:
    the clients halted now by the halt file (None if it cannot be read)."""
    events = [{"ts": r.get("ts"), "event": r["event"], "client_id": r.get("client_id")}
              for records in logs.values() for r in records
              if r.get("event") in ("client_halted", "client_resumed")]
    events.sort(key=lambda e: str(e["ts"]))
    now: list[str] | None = None
    if halt_file is not None:
        try:
            now = sorted(halt.read(str(halt_file)).halted)
        except (OSError, halt.HaltFileError):
            now = None
    return {"events": events, "halted": now}


PNL_COLUMNS = ["client", "symbol", "position", "avg_price", "mark", "realized", "unrealized", "total"]


def pnl_rows(doc: Mapping[str, Any]) -> list[list[Any]]:
    """The P&L table's rows: each client's symbols, then its total (symbol ``*``)."""
    rows: list[list[Any]] = []
    for cid, c in doc.items():
        for sym, s in c["symbols"].items():
            rows.append([cid, sym, s["position"], s["avg_price"], s["mark"], s["realized"], s["unrealized"],
                         s["total"]])
        rows.append([cid, "*", None, None, None, c["realized"], c["unrealized"], c["total"]])
    return rows


def halt_lines(doc: Mapping[str, Any]) -> list[str]:
    """The HALTS section's lines."""
    now = doc["halted"]
    lines = [f"halted now: {', '.join(now) if now else 'none'}" if now is not None
             else "halted now: unknown (the halt file cannot be read)"]
    lines += [f"{e['ts']}  {e['event']}  {e['client_id']}" for e in doc["events"]]
    return lines
