"""The ordermanager's routing, exec journal and forwarding, in-process against a stand-in venue
(the real matching engine behind a socket): orders routed and filled, cancels, ``unavailable``
while the venue is away and routing again without doubles, exec replay after a strategy's logon
with ``last_exec_id``, a restart of the ordermanager from its journals, risk with open quantity.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared import config, logs
from shared.matching import Engine
from shared.ops.harness import free_port
from shared.ops.peer import OrderClient
from shared.ordermanager import OrderManager
from shared.protocol import (
    PROTO,
    Ack,
    Cancel,
    Exec,
    FrameDecoder,
    Heartbeat,
    Logon,
    LogonAck,
    Order,
    Reject,
    Route,
    frame,
)

TOKEN = "t0ken"
_ids = itertools.count(1)
_exec_fields = [f for f in Exec.__struct_fields__]


class FakeVenue:
    """The venue's side of the link, on a thread: the real Engine, its execs kept and sent in exec_id
    order; after a logon, every exec above the logon's ``last_exec_id`` first (``replay_all``: every
    one, to test the ordermanager's de-duplication). ``deaf``: routes are read and dropped. ``hold``:
    execs are kept back until released."""

    def __init__(self, port: int | None = None) -> None:
        self.engine = Engine(spread_bps=2.0, depth=100)
        self.execs: list[Exec] = []
        self.routes: list[Route] = []
        self.cancels: list[Cancel] = []
        self.logons: list[Logon] = []
        self.lock = threading.RLock()
        self.deaf = self.hold = self.replay_all = False
        self.conn: socket.socket | None = None
        self.sent = 0  # execs sent on the current connection, by position in self.execs
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port or 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                if self.conn is not None:
                    self.conn.close()
                self.conn, self.sent = c, len(self.execs)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c: socket.socket) -> None:
        dec = FrameDecoder()
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                return
            if not data:
                return
            for m in dec.feed(data):
                with self.lock:
                    if c is self.conn:
                        self._on(c, m)

    def _on(self, c: socket.socket, m: Any) -> None:
        if isinstance(m, Logon):
            self.logons.append(m)
            if m.token != TOKEN:
                c.sendall(frame(Reject(order_id=None, reason="unauthorized", detail="bad token")))
                c.close()
                return
            last = self.engine.next_exec_id - 1
            c.sendall(frame(LogonAck(session="venue-1", heartbeat_ms=250, positions={}, last_order_id=None,
                                     open_orders=[], last_exec_id=last or None)))
            self.sent = 0 if self.replay_all else len([e for e in self.execs if e.exec_id <= (m.last_exec_id or 0)])
            self.flush()
        elif isinstance(m, Route):
            self.routes.append(m)
            if not self.deaf:
                self._add(self.engine.order(m.order_no, m.client_id, m.order_id, m.symbol, m.side, m.qty, m.price,
                                            m.ord_type, m.tif, time.time_ns()))
        elif isinstance(m, Cancel):
            self.cancels.append(m)
            got = self.engine.cancel(m.client_id or "", m.order_id, time.time_ns())
            if got is None:
                self.flush()
                c.sendall(frame(Reject(order_id=m.order_id, reason="unknown_order", detail="not open",
                                       client_id=m.client_id)))
            else:
                self._add(got)
        elif isinstance(m, Heartbeat):
            c.sendall(frame(Heartbeat(ts_ns=time.time_ns())))

    def _add(self, execs: list[Any]) -> None:
        self.execs += [Exec(**{f: getattr(e, f) for f in _exec_fields}) for e in execs]
        self.flush()

    def flush(self) -> None:
        """Send what is not sent yet on this connection (unless held)."""
        with self.lock:
            if self.hold or self.conn is None:
                return
            out = b"".join(frame(e) for e in self.execs[self.sent :])
            self.sent = len(self.execs)
            try:
                self.conn.sendall(out)
            except OSError:
                pass

    def tick(self, symbol: str, price: float) -> None:
        with self.lock:
            self._add(self.engine.tick(symbol, price, time.time_ns()))

    def drop(self) -> None:
        """Close the current connection (the ordermanager reconnects)."""
        with self.lock:
            if self.conn is not None:
                try:
                    self.conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed already (a refused logon)
                self.conn.close()
                self.conn = None

    def stop(self) -> None:
        self.stopped = True
        self.drop()
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.lsock.close()
        self.thread.join(5)


class Lines:
    """The daemon's log stream: JSON lines, kept."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in bytes(self.buf).splitlines() if line.strip()]


class Running:
    """An OrderManager stepping on a thread."""

    def __init__(self, cfg: config.Config, lines: Lines) -> None:
        self.lines = lines
        self.om = OrderManager(cfg, logs.configure("ordermanager", lines))  # type: ignore[arg-type]
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            self.om.step()
            logs.flush()
        self.om.shutdown(time.monotonic() + 2)
        logs.flush()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(10)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.lines.records() if r.get("event") == name]


def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)
    return v


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., tuple[Running, FakeVenue]]]:
    """``start(risk=..., venue=None, om=...)``: an ordermanager (and a stand-in venue) on fresh ports."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    made: list[Any] = []
    port = free_port()

    def start(risk: dict[str, Any] | None = None, venue: FakeVenue | None = None,
              om: dict[str, Any] | None = None) -> tuple[Running, FakeVenue]:
        v = venue or FakeVenue()
        cfg = config.parse({"ordermanager": {"port": port, "token_file": str(tmp_path / "token"),
                                             "journal": str(tmp_path / "orders.jsonl"), "heartbeat_ms": 1000,
                                             **(om or {})},
                            "exchange": {"port": v.port, "heartbeat_ms": 200}, "risk": risk or {}})
        r = Running(cfg, Lines())
        made.extend([r, v])
        wait_for(lambda: r.om.router.link.up and r.om.server.sock is not None)
        return r, v

    yield start
    for m in made:
        m.stop()


def client(r: Running, cid: str = "c1", last_exec_id: int | None = None) -> tuple[OrderClient, LogonAck]:
    c = OrderClient("127.0.0.1", r.om.cfg.ordermanager.port, timeout=5)
    c.send(Logon(proto=PROTO, client_id=cid, token=TOKEN, last_exec_id=last_exec_id))
    ack = c.recv_type(LogonAck, Reject)
    assert isinstance(ack, LogonAck), ack
    return c, ack


def order(c: OrderClient, symbol: str = "AAPL", side: str = "BUY", qty: int = 10, price: float | None = 100.0,
          ord_type: str = "limit", tif: str = "day") -> str:
    oid = f"o-{next(_ids)}"
    c.send(Order(order_id=oid, symbol=symbol, side=side, qty=qty, price=price, ord_type=ord_type,  # type: ignore[arg-type]
                 tif=tif, ts_ns=1, tick_ts_ns=1))  # type: ignore[arg-type]
    return oid


def answer(c: OrderClient) -> Any:
    return c.recv_type(Ack, Reject)


def execs(c: OrderClient, n: int) -> list[Exec]:
    return [c.recv_type(Exec) for _ in range(n)]


def journaled(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in (path / "orders.jsonl.execs").read_bytes().splitlines()]


def msgs(c: OrderClient, n: int) -> list[Any]:
    """The next ``n`` messages but heartbeats."""
    out: list[Any] = []
    while len(out) < n:
        m = c.recv(timeout=5)
        if not isinstance(m, Heartbeat):
            out.append(m)
    return out


def brief(m: Any) -> tuple[Any, ...]:
    if isinstance(m, Exec):
        return ("exec", m.order_id, m.status, m.last_qty, m.cum_qty, m.leaves_qty)
    if isinstance(m, Ack):
        return ("ack", m.order_id, m.duplicate)
    return ("reject", m.order_id, m.reason)


def test_orders_are_routed_filled_journaled_and_forwarded(setup: Any, tmp_path: Path) -> None:
    r, v = setup()
    v.tick("AAPL", 100.0)  # the quote: bid 99.99, ask 100.01, 100 each
    c, ack = client(r)
    assert (ack.positions, ack.open_orders, ack.last_exec_id) == ({}, [], None)
    a = order(c, qty=30, price=100.02, ord_type="market", tif="ioc")  # a market order with a protection price
    b = order(c, side="SELL", qty=5, price=None, ord_type="market", tif="ioc")
    got = [brief(m) for m in msgs(c, 6)]
    assert got == [("ack", a, False), ("ack", b, False),
                   ("exec", a, "new", 0, 0, 30), ("exec", a, "filled", 30, 30, 0),
                   ("exec", b, "new", 0, 0, 5), ("exec", b, "filled", 5, 5, 0)]
    lines = journaled(tmp_path)
    assert [x["exec_id"] for x in lines] == [1, 2, 3, 4]
    assert lines[0]["order_qty"] == 30 and lines[0]["order_price"] == 100.02 and "order_price" not in lines[2]
    assert all(x["recv_ns"] > 0 and x["client_id"] == "c1" for x in lines)
    filled = wait_for(lambda: r.events("order_filled") if len(r.events("order_filled")) == 2 else None)
    assert [(f["order_id"], f["exec_id"], f["last_qty"], f["last_px"], f["cum_qty"], f["status"]) for f in filled] == [
        (a, 2, 30, 100.01, 30, "filled"), (b, 4, 5, 99.99, 5, "filled")]
    received = {e["order_id"]: e["msg"] for e in r.events("order_received")}
    assert received[a].endswith("BUY 30 AAPL @ 100.02") and received[b].endswith("SELL 5 AAPL @ MKT")
    c.close()
    c2, ack2 = client(r)
    assert (ack2.positions, ack2.open_orders, ack2.last_exec_id) == ({"AAPL": 25}, [], 4)
    c2.close()


def test_a_resting_order_a_partial_fill_and_a_cancel(setup: Any) -> None:
    r, v = setup()
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    a = order(c, qty=150, price=99.0)
    assert [brief(m) for m in msgs(c, 2)] == [("ack", a, False), ("exec", a, "new", 0, 0, 150)]
    v.tick("AAPL", 98.5)  # ask 98.51 at or below 99: 100 shares at its price
    assert brief(msgs(c, 1)[0]) == ("exec", a, "partially_filled", 100, 100, 50)
    c2, ack = client(r, "c1")  # a second logon takes the client over: the figures so far
    assert ack.positions == {"AAPL": 100} and ack.last_exec_id == 2
    assert [(o.order_id, o.qty, o.price, o.cum_qty, o.leaves_qty) for o in ack.open_orders] == [(a, 150, 99.0, 100, 50)]
    c2.send(Cancel(order_id="never-seen"))
    c2.send(Cancel(order_id=a))
    got = [brief(m) for m in msgs(c2, 2)]
    assert got == [("reject", "never-seen", "unknown_order"), ("exec", a, "canceled", 0, 100, 0)]
    c2.send(Cancel(order_id=a))  # ended: the ordermanager answers itself
    assert brief(msgs(c2, 1)[0]) == ("reject", a, "unknown_order")
    assert [x.order_id for x in v.cancels] == [a]
    other, _ = client(r, "c2")
    b = order(other, qty=1, price=50.0)
    assert [brief(m) for m in msgs(other, 2)] == [("ack", b, False), ("exec", b, "new", 0, 0, 1)]
    c2.send(Cancel(order_id=b))  # another client's: unknown, nothing said about it
    rj = msgs(c2, 1)[0]
    assert brief(rj) == ("reject", b, "unknown_order") and "c2" not in rj.detail
    c2.close()
    other.close()


def test_a_cancel_racing_a_fill_gets_the_venues_unknown_order(setup: Any) -> None:
    r, v = setup()
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    a = order(c, qty=10, price=99.0)
    assert [brief(m) for m in msgs(c, 2)] == [("ack", a, False), ("exec", a, "new", 0, 0, 10)]
    v.hold = True
    v.tick("AAPL", 98.0)  # filled at the venue; the exec is held back
    c.send(Cancel(order_id=a))
    wait_for(lambda: v.cancels)
    v.hold = False
    v.flush()
    got = [brief(m) for m in msgs(c, 2)]
    assert sorted(got) == sorted([("exec", a, "filled", 10, 10, 0), ("reject", a, "unknown_order")])
    assert wait_for(lambda: r.events("cancel_rejected"))[0]["by"] == "venue"
    c.close()


def test_unavailable_while_the_venue_is_away_then_routed_again_without_doubles(setup: Any, tmp_path: Path) -> None:
    r, v = setup()
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    v.deaf = True  # routes get lost with the link
    lost = [order(c, qty=5, price=99.0) for _ in range(3)]
    assert [brief(m) for m in msgs(c, 3)] == [("ack", o, False) for o in lost]
    wait_for(lambda: len(v.routes) == 3)
    port = v.port
    v.stop()
    wait_for(lambda: not r.om.router.link.up)
    refused = order(c, qty=1, price=99.0)
    rj = msgs(c, 1)[0]
    assert brief(rj) == ("reject", refused, "unavailable") and rj.detail.startswith("venue unavailable")
    c.send(Cancel(order_id=lost[0]))
    assert brief(msgs(c, 1)[0]) == ("reject", lost[0], "unavailable")
    v2 = FakeVenue(port)
    v2.engine, v2.execs = v.engine, v.execs
    try:
        wait_for(lambda: r.om.router.link.up, timeout=15)
        # The three have no exec: routed again, in order; the engine had them (deaf only dropped them here).
        got = [brief(m) for m in msgs(c, 3)]
        assert got == [("exec", o, "new", 0, 0, 5) for o in lost]
        assert [x.order_id for x in v2.routes] == lost
        assert v2.logons[-1].last_exec_id is None and v2.logons[-1].client_id == "ordermanager"  # no exec yet
        c.send(Cancel(order_id=lost[0]))
        assert brief(msgs(c, 1)[0]) == ("exec", lost[0], "canceled", 0, 0, 0)
        d = order(c, qty=1, price=99.0)
        assert [brief(m) for m in msgs(c, 2)] == [("ack", d, False), ("exec", d, "new", 0, 0, 1)]
        # The venue drops the link once more: nothing without an exec, so nothing is routed again.
        v2.drop()
        wait_for(lambda: len(v2.logons) == 2 and r.om.router.link.up)
        time.sleep(0.2)
        assert [x.order_id for x in v2.routes] == [*lost, d]
        ids = [x["exec_id"] for x in journaled(tmp_path)]
        assert ids == sorted(set(ids)) == list(range(1, len(ids) + 1))
    finally:
        v2.stop()
    c.close()


def test_a_strategy_logging_on_with_last_exec_id_gets_what_it_missed_once(setup: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import routing
    monkeypatch.setattr(routing, "EXEC_BATCH", 600)  # a replay goes out a few execs at a time
    r, v = setup()
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    rest = [order(c, qty=1, price=90.0 + i / 100) for i in range(20)]
    first = msgs(c, 40)
    assert [brief(m)[0] for m in first].count("exec") == 20
    seen = max(m.exec_id for m in first if isinstance(m, Exec))
    c.close()
    wait_for(lambda: "c1" not in r.om.clients)
    v.tick("AAPL", 80.0)  # every one fills while the strategy is away
    wait_for(lambda: r.om.router.orders.last_exec_id == 40)
    c2, ack = client(r, last_exec_id=seen)
    assert ack.last_exec_id == 40 and ack.positions == {"AAPL": 20} and ack.open_orders == []
    got = msgs(c2, 20)
    assert [(m.exec_id, m.status) for m in got] == [(21 + i, "filled") for i in range(20)]
    assert sorted(m.order_id for m in got) == sorted(rest)
    with pytest.raises(TimeoutError):  # nothing more, nothing twice
        c2.recv_type(Exec, timeout=0.5)
    c2.close()
    c3, ack3 = client(r, last_exec_id=None)  # a fresh process: the figures carry it, nothing is sent again
    with pytest.raises(TimeoutError):
        c3.recv_type(Exec, timeout=0.5)
    c3.close()
    logon = r.events("logon")[-2]
    assert (logon["client_last_exec_id"], logon["execs_again"], logon["last_exec_id"]) == (seen, 20, 40)


def test_what_a_strategy_missed_comes_once_from_rolled_exec_segments_after_a_restart(
        setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exec segments of 4096 bytes (about a dozen execs): the execs a strategy missed are in closed
    segments, which a restarted ordermanager does not read at start; its logon gets them anyway."""
    from shared import routing
    monkeypatch.setattr(routing, "EXEC_BATCH", 600)  # a replay goes out a few execs at a time
    r, v = setup(om={"journal_segment_bytes": 4096})
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    for i in range(20):
        order(c, qty=1, price=90.0 + i / 100)
    assert [brief(m)[0] for m in msgs(c, 40)].count("exec") == 20
    c.close()
    wait_for(lambda: "c1" not in r.om.clients)
    v.tick("AAPL", 80.0)  # every one fills while the strategy is away
    wait_for(lambda: r.om.router.orders.last_exec_id == 40)
    wait_for(lambda: r.om.router.execs.closed >= 2)
    r.stop()
    r2, _ = setup(venue=v, om={"journal_segment_bytes": 4096})
    loaded = r2.events("exec_journal_loaded")[0]
    assert loaded["execs"] == 40 and loaded["read"] < 20 and loaded["segments"] >= 2
    c2, ack = client(r2, last_exec_id=20)
    assert ack.last_exec_id == 40 and ack.positions == {"AAPL": 20}
    assert [(m.exec_id, m.status) for m in msgs(c2, 20)] == [(21 + i, "filled") for i in range(20)]
    with pytest.raises(TimeoutError):  # nothing more, nothing twice
        c2.recv_type(Exec, timeout=0.5)
    c2.close()
    wait_for(lambda: "c1" not in r2.om.clients)
    c3, _ = client(r2, last_exec_id=0)
    assert [m.exec_id for m in msgs(c3, 40)] == list(range(1, 41))
    c3.close()


def test_the_venues_repeats_are_journaled_and_forwarded_once(setup: Any, tmp_path: Path) -> None:
    r, v = setup()
    v.replay_all = True
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    a = order(c, qty=10, price=100.02)
    assert [brief(m) for m in msgs(c, 3)] == [("ack", a, False), ("exec", a, "new", 0, 0, 10),
                                              ("exec", a, "filled", 10, 10, 0)]
    for n in (2, 3):
        v.drop()  # each logon gets every exec again
        wait_for(lambda n=n: len(v.logons) == n and r.om.router.link.up)
    time.sleep(0.3)
    assert [x["exec_id"] for x in journaled(tmp_path)] == [1, 2]
    with pytest.raises(TimeoutError):
        c.recv_type(Exec, timeout=0.3)
    assert v.logons[-1].last_exec_id == 2
    c.close()


def test_a_restart_restores_positions_open_orders_and_what_to_route(setup: Any, tmp_path: Path) -> None:
    r, v = setup()
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    a = order(c, qty=150, price=99.0)
    msgs(c, 2)
    v.tick("AAPL", 98.0)  # 100 of 150 fill
    assert brief(msgs(c, 1)[0]) == ("exec", a, "partially_filled", 100, 100, 50)
    v.deaf = True
    b = order(c, symbol="MSFT", qty=3, price=10.0)
    assert brief(msgs(c, 1)[0]) == ("ack", b, False)
    wait_for(lambda: len(v.routes) == 2)
    c.close()
    r.stop()
    v.deaf = False
    v.tick("AAPL", 97.0)  # the rest of a fills while the ordermanager is down
    r2, _ = setup(venue=v)
    assert v.logons[-1].last_exec_id == 2
    wait_for(lambda: r2.om.router.orders.last_exec_id == 4)  # a's fill, then b's new (routed again)
    assert [x.order_id for x in v.routes] == [a, b, b]
    c2, ack = client(r2, last_exec_id=2)
    assert ack.positions == {"AAPL": 150}
    assert [(o.order_id, o.leaves_qty) for o in ack.open_orders] == [(b, 3)]
    assert [brief(m) for m in msgs(c2, 2)] == [("exec", a, "filled", 50, 150, 0), ("exec", b, "new", 0, 0, 3)]
    more = order(c2, symbol="MSFT", qty=3, price=10.0)
    assert [brief(m) for m in msgs(c2, 2)] == [("ack", more, False), ("exec", more, "new", 0, 0, 3)]
    c2.close()
    assert [x["exec_id"] for x in journaled(tmp_path)] == [1, 2, 3, 4, 5]
    loaded = r2.events("exec_journal_loaded")[0]
    assert (loaded["execs"], loaded["last_exec_id"], loaded["open_orders"]) == (2, 2, 1)
    assert r2.events("orders_to_route")[0]["orders"] == 1


def test_risk_counts_the_open_quantity_on_the_orders_side(setup: Any) -> None:
    r, v = setup(risk={"max_position": 10, "clients": {"n": {"max_notional": 1000.0}}})
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    a = order(c, qty=8, price=90.0)  # rests
    assert [brief(m) for m in msgs(c, 2)] == [("ack", a, False), ("exec", a, "new", 0, 0, 8)]
    b = order(c, qty=3, price=90.0)
    rj = msgs(c, 1)[0]
    assert brief(rj) == ("reject", b, "risk")
    assert rj.detail == "max_position: AAPL position 0 and 8 open to buy would become 11, over the limit 10"
    s = order(c, side="SELL", qty=10, price=200.0)  # the other side: its own open quantity
    assert [brief(m) for m in msgs(c, 2)] == [("ack", s, False), ("exec", s, "new", 0, 0, 10)]
    c.send(Cancel(order_id=a))
    assert brief(msgs(c, 1)[0]) == ("exec", a, "canceled", 0, 0, 0)
    ok = order(c, qty=10, price=90.0)
    assert [brief(m) for m in msgs(c, 2)] == [("ack", ok, False), ("exec", ok, "new", 0, 0, 10)]
    n, _ = client(r, "n")
    m = order(n, qty=1, price=None, ord_type="market", tif="ioc")
    rj = msgs(n, 1)[0]
    assert brief(rj) == ("reject", m, "risk") and rj.detail == "max_notional: a market order needs a price"
    c.close()
    n.close()


def test_a_venue_refusing_our_logon_leaves_orders_unavailable(setup: Any) -> None:
    r, v = setup()
    r.om.router.token = b"wrong"  # as if the venue's token had been rotated and ours not
    v.drop()
    wait_for(lambda: r.events("venue_refused"))
    assert r.events("venue_refused")[0]["reason"] == "unauthorized" and not r.om.router.link.up
    c, _ = client(r)
    o = order(c)
    rj = msgs(c, 1)[0]
    assert brief(rj) == ("reject", o, "unavailable") and rj.detail == "venue unavailable: refused: unauthorized"
    r.om.router.token = TOKEN.encode()
    wait_for(lambda: r.om.router.link.up, timeout=15)
    o2 = order(c)
    assert brief(msgs(c, 1)[0]) == ("ack", o2, False)
    c.close()


def test_a_cancel_in_the_same_write_as_its_order_reaches_the_venue_after_the_order(setup: Any) -> None:
    """Order and cancel pipelined in one write: the order is journaled and routed before the cancel
    goes to the venue, so the venue cancels it (it does not answer unknown_order)."""
    r, v = setup()
    v.tick("AAPL", 100.0)
    c, _ = client(r)
    oid = f"o-{next(_ids)}"
    c.send_raw(frame(Order(order_id=oid, symbol="AAPL", side="BUY", qty=5, price=90.0, ts_ns=1, tick_ts_ns=1))
               + frame(Cancel(order_id=oid)))
    assert [brief(m) for m in msgs(c, 3)] == [("ack", oid, False), ("exec", oid, "new", 0, 0, 5),
                                              ("exec", oid, "canceled", 0, 0, 0)]
    assert [x.order_id for x in v.routes] == [oid] and [x.order_id for x in v.cancels] == [oid]
    c.close()
