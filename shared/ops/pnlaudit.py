"""The audit's positions, P&L, open orders, fills and halts: the journal's segments and its exec
journal, marks from the book, the halt file.

``stack-audit`` (shared.ops.audit) calls these; the P&L itself is
``shared.pnl`` and the orders' state ``shared.execstate``, both pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared import book, config, halt, pnl
from shared.execstate import ExecLine, ExecState, build

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


def _is_order(e: Mapping[str, Any]) -> bool:
    return (isinstance(e.get("order_no"), int) and isinstance(e.get("client_id"), str)
            and isinstance(e.get("order_id"), str) and isinstance(e.get("symbol"), str)
            and e.get("side") in ("BUY", "SELL") and isinstance(e.get("qty"), int) and e["qty"] > 0)


def state(journal: Iterable[Mapping[str, Any]], execs: Iterable[ExecLine], base: int = 0) -> ExecState:
    """Every order's state from the journal's orders (those after ``base``, the last before the venue)
    and the exec journal's lines."""
    return build((e for e in journal if _is_order(e)), execs, base)


def open_by_client(st: ExecState) -> dict[str, pnl.Open]:
    """Each client's open orders for ``pnl.report``: their count and leaves per symbol and side."""
    out: dict[str, pnl.Open] = {}
    for cid, orders in st.open.items():
        out[cid] = pnl.Open(len(orders))
    for (cid, sym), (buy, sell) in st.leaves.items():
        if buy or sell:
            out.setdefault(cid, pnl.Open()).symbols[sym] = [buy, sell]
    return out


def clients(journal: Iterable[Mapping[str, Any]], prices: Mapping[str, float], execs: Iterable[ExecLine] = (),
            base: int = 0) -> dict[str, Any]:
    """Contract §8's ``clients[<client_id>]`` document (§9: from fills, with open orders) from the
    journal, the exec journal and marks."""
    execs = list(execs)
    return pnl.report(pnl.positions(execs), prices, open_by_client(state(journal, execs, base)))


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


PNL_COLUMNS = ["client", "symbol", "position", "avg_price", "mark", "realized", "unrealized", "total", "open_buy",
               "open_sell"]


def pnl_rows(doc: Mapping[str, Any]) -> list[list[Any]]:
    """The P&L table's rows: each client's symbols, then its total (symbol ``*``, with its open orders)."""
    rows: list[list[Any]] = []
    for cid, c in doc.items():
        for sym, s in c["symbols"].items():
            rows.append([cid, sym, s["position"], s["avg_price"], s["mark"], s["realized"], s["unrealized"],
                         s["total"], s.get("open_buy", 0), s.get("open_sell", 0)])
        rows.append([cid, "*", None, None, None, c["realized"], c["unrealized"], c["total"],
                     f"{c.get('open_orders', 0)} open", None])
    return rows


OPEN_COLUMNS = ["client_id", "order_id", "order_no", "symbol", "side", "qty", "price", "cum_qty", "leaves_qty"]
SHOWN = 20  # open orders listed in the text report; the rest are counted


def open_orders(st: ExecState) -> list[dict[str, Any]]:
    """Every open order, oldest first, with the OPEN_COLUMNS."""
    return [{"client_id": o.client_id, "order_id": o.order_id, "order_no": o.order_no, "symbol": o.symbol,
             "side": o.side, "qty": o.qty, "price": o.price, "cum_qty": o.cum_qty, "leaves_qty": o.leaves_qty}
            for o in sorted(st.by_no.values(), key=lambda o: o.order_no)]


FILL_COLUMNS = ["client_id", "symbol", "fills", "bought", "sold", "avg_buy", "avg_sell", "last_fill"]


def fills(execs: Iterable[ExecLine]) -> list[dict[str, Any]]:
    """Per client and symbol, the FILL_COLUMNS: the fills, the quantities bought and sold at their
    average prices, and the venue's time of the last fill (UTC)."""
    acc: dict[tuple[str, str], list[Any]] = {}
    for x in execs:
        if not x.last_qty or x.last_px is None:
            continue
        a = acc.setdefault((x.client_id, x.symbol), [0, 0, 0.0, 0, 0.0, 0])
        buy = x.side == "BUY"
        a[0] += 1
        a[1 if buy else 3] += x.last_qty
        a[2 if buy else 4] += x.last_qty * x.last_px
        a[5] = max(a[5], x.ts_ns)
    return [{"client_id": cid, "symbol": sym, "fills": n, "bought": bought, "sold": sold,
             "avg_buy": round(buy_px / bought, 6) if bought else None,
             "avg_sell": round(sell_px / sold, 6) if sold else None, "last_fill": _utc(last)}
            for (cid, sym), (n, bought, buy_px, sold, sell_px, last) in sorted(acc.items())]


def rows(doc: list[dict[str, Any]], columns: list[str], shown: int | None = None) -> tuple[list[list[Any]], int]:
    """A list of records as table rows (the first ``shown``), and how many were left out."""
    shown = len(doc) if shown is None else shown
    return [[r[c] for c in columns] for r in doc[:shown]], max(0, len(doc) - shown)


def _utc(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def halt_lines(doc: Mapping[str, Any]) -> list[str]:
    """The HALTS section's lines."""
    now = doc["halted"]
    lines = [f"halted now: {', '.join(now) if now else 'none'}" if now is not None
             else "halted now: unknown (the halt file cannot be read)"]
    lines += [f"{e['ts']}  {e['event']}  {e['client_id']}" for e in doc["events"]]
    return lines
