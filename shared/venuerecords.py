"""The exchange journal's lines and files, read and written the same way by the exchange and
``stack-replay``: its input, and every exec it sent, as JSON lines (contract §9 rule 4).

One line per record, tagged by ``k``:

- ``{"k":"start","session","spread_bps","depth","ts_ns"}``: an exchange started (the engine's
  parameters from here on);
- ``{"k":"tick","symbol","price","seq","ts_ns","session"}``: a price tick (the gateway's seq and
  session: a restart does not apply the same tick twice), journaled when it produced execs,
  or when it is the symbol's latest applied tick, not journaled yet, as an order or a cancel of
  that symbol arrives (a tick that changed nothing and was superseded cannot change a replay);
- ``{"k":"order","order_no","client_id","order_id","symbol","side","qty","price","ord_type","tif","ts_ns"}``;
- ``{"k":"cancel","client_id","order_id","ts_ns"}``;
- ``{"k":"exec",...}``: an exec as sent, its wire body byte for byte after ``{"k":"exec",``.

``ts_ns`` of an input is the venue's receive time; its execs carry it. A turn's lines go out in
one write before anything of the turn is sent. Files, as the order journal's (contract §8): the
open segment at the configured path, closed segments ``path.<n>``, ``path.checkpoint`` (the state
at the end of the last closed segment, shared.venuestate) and ``path.lock``. Readers that want
everything read the closed segments by n, then the open one (``records``). The exchange's side of
it (the lock, restore, group commit, roll) is shared.venuejournal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from shared import matching
from shared.journal import segments
from shared.protocol import Exec

EXEC_PREFIX = b'{"k":"exec",'


class Start(msgspec.Struct, tag_field="k", tag="start", frozen=True):
    """An exchange started with these engine parameters."""

    session: str
    spread_bps: float
    depth: int
    ts_ns: int


class Tick(msgspec.Struct, tag_field="k", tag="tick", frozen=True):
    """A price tick the engine applied (``seq`` and ``session`` are the gateway's)."""

    symbol: str
    price: float
    seq: int
    ts_ns: int
    session: str = ""


class OrderIn(msgspec.Struct, tag_field="k", tag="order", frozen=True):
    """A routed order the engine took (a Route's fields)."""

    order_no: int
    client_id: str
    order_id: str
    symbol: str
    side: str
    qty: int
    price: float | None
    ord_type: str
    tif: str
    ts_ns: int


class CancelIn(msgspec.Struct, tag_field="k", tag="cancel", frozen=True):
    """A cancel the engine was asked."""

    client_id: str
    order_id: str
    ts_ns: int


class ExecOut(msgspec.Struct, tag_field="k", tag="exec", frozen=True):
    """An exec line, as far as a reader needs it (the rest is the wire body)."""

    exec_id: int


Record = Start | Tick | OrderIn | CancelIn | ExecOut
Input = Tick | OrderIn | CancelIn

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


def encode(rec: Record) -> bytes:
    """One record as a journal line's bytes (without the newline)."""
    return _encoder.encode(rec)


def decode(line: bytes) -> Record:
    """One journal line; msgspec.DecodeError if it is not a record."""
    return _decoder.decode(line)


def body(e: matching.Exec) -> bytes:
    """An engine exec as the wire body the exchange sends (the contra stays the venue's)."""
    return _encoder.encode(Exec(order_id=e.order_id, exec_id=e.exec_id, status=e.status,  # type: ignore[arg-type]
                                last_qty=e.last_qty, last_px=e.last_px, cum_qty=e.cum_qty, leaves_qty=e.leaves_qty,
                                avg_px=e.avg_px, ts_ns=e.ts_ns, symbol=e.symbol, side=e.side,  # type: ignore[arg-type]
                                client_id=e.client_id, order_no=e.order_no))


def exec_line(wire: bytes | memoryview) -> bytes:
    """The journal line of an exec's wire body."""
    return EXEC_PREFIX + bytes(wire[1:])


def exec_body(line: bytes) -> bytes:
    """The wire body of an exec line (without its newline)."""
    return b"{" + line[len(EXEC_PREFIX) :].rstrip(b"\n")


def apply(engine: matching.Engine, rec: Input) -> list[matching.Exec]:
    """Feed one input record to the engine: the execs it causes (ValueError on a bad order)."""
    t = type(rec)
    if t is Tick:
        k: Tick = rec  # type: ignore[assignment]
        return engine.tick(k.symbol, k.price, k.ts_ns)
    if t is OrderIn:
        o: OrderIn = rec  # type: ignore[assignment]
        return engine.order(o.order_no, o.client_id, o.order_id, o.symbol, o.side, o.qty, o.price, o.ord_type,
                            o.tif, o.ts_ns)
    c: CancelIn = rec  # type: ignore[assignment]
    return engine.cancel(c.client_id, c.order_id, c.ts_ns) or []


class Line(msgspec.Struct, frozen=True, gc=False):
    """One line as read: where it is, its bytes, and its record (None: torn or not a record)."""

    path: str
    number: int
    offset: int
    raw: bytes
    rec: Record | None
    error: str = ""


def read_lines(path: str | os.PathLike[str]) -> Iterator[Line]:
    """Every line of one segment file, decoded; a line without its newline counts as torn."""
    p = str(path)
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        return
    offset = 0
    with f:
        for i, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                yield Line(p, i, offset, raw, None, "no newline at the end")
            else:
                try:
                    yield Line(p, i, offset, raw, _decoder.decode(raw))
                except msgspec.DecodeError as e:
                    yield Line(p, i, offset, raw, None, str(e))
            offset += len(raw)


def records(path: str | os.PathLike[str]) -> Iterator[Line]:
    """Every line of the journal: the closed segments by n, then the open one."""
    for seg in segments(path):
        yield from read_lines(seg)


def exec_bodies_after(path: str | os.PathLike[str], exec_id: int) -> Iterator[tuple[int, bytes]]:
    """(exec_id, wire body) of every journaled exec above ``exec_id``, oldest first (from the files:
    the slow way, for a peer further behind than the exchange's memory of recent execs)."""
    segs = segments(path)
    start = 0
    for i in range(len(segs) - 1, -1, -1):  # the newest segment whose first exec is at or below it
        first = _first_exec_id(segs[i])
        if first is not None and first <= exec_id + 1:
            start = i
            break
    for seg in segs[start:]:
        for ln in read_lines(seg):
            if type(ln.rec) is ExecOut and ln.rec.exec_id > exec_id:
                yield ln.rec.exec_id, exec_body(ln.raw)


def _first_exec_id(path: Path) -> int | None:
    for ln in read_lines(path):
        if type(ln.rec) is ExecOut:
            return ln.rec.exec_id
    return None

