"""The order journal: the truth of the ordermanager, read by the audit and the invariants too.

One JSON line per accepted order, written (and, by policy, fsynced) before
any ack of the turn goes out, so ``kill -9`` never loses an acked order. At
start it is read back to rebuild the order numbers, the de-duplication index
and the positions; a torn last line is cut off.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec


class Entry(msgspec.Struct, frozen=True):
    """One journal line (contract §6)."""

    order_no: int
    order_id: str
    client_id: str
    symbol: str
    side: str
    qty: int
    price: float
    ts_ns: int
    tick_ts_ns: int
    recv_ns: int


class Journal:
    """Append-only order journal with the index rebuilt from it at start."""

    def __init__(self, path: str, sync: str, log: Any) -> None:
        self.path, self.sync, self.log = path, sync, log
        self.index: dict[str, dict[str, int]] = {}  # client_id -> order_id -> order_no
        self.positions: dict[str, dict[str, int]] = {}  # client_id -> symbol -> signed qty
        self.last_id: dict[str, str] = {}  # client_id -> its last journaled order_id
        self.last_no = 0
        self.staged = 0  # orders in staged_bytes, not yet written
        self.staged_bytes = bytearray()
        self._encoder = msgspec.json.Encoder()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._load()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        dec = msgspec.json.Decoder(Entry)
        good = 0  # bytes of whole, valid lines
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            try:
                if last:
                    raise ValueError("no newline at the end")
                e = dec.decode(line)
            except (msgspec.DecodeError, ValueError) as err:
                if last or all(not x for x in lines[i + 1 :]):
                    self.log.warning("journal_repaired", path=self.path, dropped_bytes=len(data) - good,
                                     error=str(err))
                    with open(self.path, "r+b") as f:
                        f.truncate(good)
                    break
                self.log.error("journal_corrupt_line", path=self.path, line=i + 1, error=str(err))
                good += len(line) + 1
                continue
            good += len(line) + 1
            self._index(e)
        self.log.info("journal_loaded", path=self.path, orders=sum(map(len, self.index.values())),
                      last_order_no=self.last_no)

    def _index(self, e: Entry) -> None:
        ids = self.index.get(e.client_id)
        if ids is None:
            ids = self.index[e.client_id] = {}
        ids[e.order_id] = e.order_no
        pos = self.positions.setdefault(e.client_id, {})
        pos[e.symbol] = pos.get(e.symbol, 0) + (e.qty if e.side == "BUY" else -e.qty)
        self.last_id[e.client_id] = e.order_id
        if e.order_no > self.last_no:
            self.last_no = e.order_no

    def lookup(self, client_id: str, order_id: str) -> int | None:
        """The order_no of an order already accepted, or None."""
        ids = self.index.get(client_id)
        return None if ids is None else ids.get(order_id)

    def stage(self, e: Entry) -> None:
        """Accept an order: indexed now, written at the next ``commit``."""
        self._index(e)
        self._encoder.encode_into(e, self.staged_bytes, -1)
        self.staged_bytes += b"\n"
        self.staged += 1

    def commit(self) -> int:
        """Write the staged lines in one write (then fsync, by policy)."""
        if not self.staged:
            return 0
        data = bytes(self.staged_bytes)
        n = self.staged
        self.staged_bytes.clear()
        self.staged = 0
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        if self.sync == "fsync":
            os.fsync(self.fd)
        return n

    def close(self) -> None:
        self.commit()
        os.close(self.fd)
