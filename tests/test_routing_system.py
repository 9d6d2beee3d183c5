"""The ordermanager's side of the venue on a private stack under the real supervisord, through the
contract only: orders routed and filled end to end, cancels, ``unavailable`` while the exchange is
stopped, orders accepted but lost on their way routed again after the exchange is back (never
twice), and ``kill -9`` of the ordermanager with fills in flight: every exec reaches its client
exactly once, as the exchange sent it.

The gateway replays constant prices (AAPL 60, MSFT 200, GOOGL 150): the venue's quote is known
(spread 2 bps: AAPL 59.994 / 60.006, MSFT 199.98 / 200.02, GOOGL 149.985 / 150.015; 100 shares a
side, renewed with every tick), and the strategy, on flat averages, never trades.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from shared.execjournal import read_lines
from shared.ops.chaos import faults
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.protocol import PROTO, TERMINAL, Ack, Cancel, Exec, Heartbeat, Logon, LogonAck, Order, Reject, frame
from shared.venuerecords import exec_bodies_after

MARKS = {"AAPL": 60.0, "MSFT": 200.0, "GOOGL": 150.0}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("routing")
    replay = d / "prices.csv"
    replay.write_text("".join(f"{s},{p}\n" for s, p in MARKS.items()))
    # heartbeat_ms 5000: a test client waits for the exchange to come back without a word; segments of
    # 64 KiB: the journals roll every few hundred orders and execs, kill -9 included
    s = Stack(d, {"gateway": {"replay": str(replay), "price_rate": 30.0},
                  "ordermanager": {"heartbeat_ms": 5000, "journal_segment_bytes": 65536}})
    try:
        s.start(timeout=60)
        s.wait_for(venue_up(s), timeout=60)
        yield s
    finally:
        s.stop()


def venue_up(stack: Stack, not_pid: int = 0) -> Any:
    """A predicate: the ordermanager (not ``not_pid``) has logged on to the venue since its last link loss."""
    def up() -> bool:
        recs = [r for r in stack.log("ordermanager") if r.get("event") in ("venue_logged_on", "venue_unavailable")
                and r.get("pid") != not_pid]
        return bool(recs) and recs[-1]["event"] == "venue_logged_on"
    return up


class Client:
    """A strategy's order link, by hand: it keeps every ack, reject and exec it reads."""

    def __init__(self, stack: Stack, cid: str, last_exec_id: int | None = None) -> None:
        self.stack, self.cid = stack, cid
        self.c = OrderClient(stack.cfg.ordermanager.host, stack.cfg.ordermanager.port, timeout=10)
        self.c.send(Logon(proto=PROTO, client_id=cid, token=stack.token, last_exec_id=last_exec_id))
        self.ack: LogonAck = self.c.recv_type(LogonAck, timeout=10)
        self.answers: dict[str, Ack | Reject] = {}
        self.execs: list[Exec] = []
        self.done: set[str] = set()  # orders whose terminal exec came
        self.other: list[Reject] = []

    def order(self, symbol: str, side: str, qty: int, price: float | None = None, ord_type: str = "limit",
              tif: str = "day") -> str:
        oid = f"{self.cid}-{next(_ids)}"
        self.c.send(Order(order_id=oid, symbol=symbol, side=side, qty=qty, price=price,  # type: ignore[arg-type]
                          ord_type=ord_type, tif=tif, ts_ns=time.time_ns(), tick_ts_ns=time.time_ns()))  # type: ignore[arg-type]
        return oid

    def market(self, symbol: str, side: str, qty: int) -> str:
        return self.order(symbol, side, qty, None, "market", "ioc")

    def read(self, timeout: float = 10.0) -> Any:
        m = self.c.recv(timeout=timeout)
        if isinstance(m, Exec):
            self.execs.append(m)
            if m.status in TERMINAL:
                self.done.add(m.order_id)
        elif isinstance(m, Ack | Reject) and m.order_id in self.answers and isinstance(m, Reject):
            self.other.append(m)  # a cancel's reject
        elif isinstance(m, Ack | Reject) and m.order_id is not None:
            self.answers[m.order_id] = m
        return m

    def until(self, pred: Any, timeout: float = 20.0) -> None:
        """Read until ``pred()``; a heartbeat every second meanwhile (a long read is no word to the server)."""
        deadline = time.monotonic() + timeout
        beat = 0.0
        while not pred():
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"not met; {len(self.answers)} answers, {len(self.execs)} execs, the last "
                                   f"{self.execs[-1:]}")
            if now >= beat:
                self.c.send(Heartbeat(ts_ns=time.time_ns()))
                beat = now + 1.0
            try:
                self.read(min(deadline - now, 0.5))
            except TimeoutError:
                continue

    def of(self, oid: str) -> list[tuple[str, int, float | None, int, int]]:
        return [(x.status, x.last_qty, x.last_px, x.cum_qty, x.leaves_qty) for x in self.execs if x.order_id == oid]

    def ended(self, *oids: str) -> bool:
        return self.done.issuperset(oids)

    def close(self) -> None:
        self.c.close()


def test_orders_are_routed_filled_and_forwarded_end_to_end(stack: Stack) -> None:
    c = Client(stack, "rt-fill")
    a = c.market("AAPL", "BUY", 150)  # the ask shows 100: 100 fill, the rest expires
    b = c.order("MSFT", "BUY", 10, 201.0)  # a limit above the ask: fills at the ask
    c.until(lambda: c.ended(a, b))
    assert isinstance(c.answers[a], Ack) and isinstance(c.answers[b], Ack)
    assert c.of(a) == [("new", 0, None, 0, 150), ("partially_filled", 100, 60.006, 100, 50),
                       ("expired", 0, None, 100, 0)]
    assert c.of(b) == [("new", 0, None, 0, 10), ("filled", 10, 200.02, 10, 0)]
    ids = [x.exec_id for x in c.execs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    c.close()
    # The ordermanager's log and journal, and a second logon's figures.
    filled = stack.wait_for(lambda: (f := [r for r in stack.events("ordermanager", "order_filled")
                                           if r["client_id"] == "rt-fill"]) and len(f) == 2 and f)
    assert [(f["order_id"], f["last_qty"], f["last_px"], f["cum_qty"], f["status"]) for f in filled] == [
        (a, 100, 60.006, 100, "partially_filled"), (b, 10, 200.02, 10, "filled")]
    received = {r["order_id"]: r["msg"] for r in stack.events("ordermanager", "order_received")}
    assert received[a].endswith("BUY 150 AAPL @ MKT") and received[b].endswith("BUY 10 MSFT @ 201.00")
    journaled = [x for x in read_lines(stack.cfg.resolve(stack.cfg.ordermanager.journal)) if x.client_id == "rt-fill"]
    assert [x.exec_id for x in journaled] == ids
    again = Client(stack, "rt-fill")
    assert again.ack.positions == {"AAPL": 100, "MSFT": 10} and again.ack.open_orders == []
    assert again.ack.last_exec_id == ids[-1]
    again.close()
    doc = json.loads(subprocess.run([sys.executable, "-m", "shared.ops.audit", "--logs", str(stack.logs), "--json",
                                     "--segment", stack.segment], capture_output=True, text=True, timeout=120,
                                    check=True).stdout)
    pos = {s: v["position"] for s, v in doc["clients"]["rt-fill"]["symbols"].items()}
    assert pos == {"AAPL": 100, "MSFT": 10} and doc["clients"]["rt-fill"]["open_orders"] == 0


def test_a_cancel_end_to_end(stack: Stack) -> None:
    c = Client(stack, "rt-cancel")
    rest = c.order("GOOGL", "BUY", 5, 100.0)  # far below the bid: rests
    c.until(lambda: c.of(rest))
    c.close()
    c = Client(stack, "rt-cancel")  # a new connection: the order is listed open
    assert [(o.order_id, o.qty, o.price, o.leaves_qty) for o in c.ack.open_orders] == [(rest, 5, 100.0, 5)]
    other = Client(stack, "rt-other")
    other.c.send(Cancel(order_id=rest))  # not its order: unknown, nothing said about whose it is
    other.until(lambda: rest in other.answers)
    r = other.answers[rest]
    assert isinstance(r, Reject) and r.reason == "unknown_order"
    assert r.detail == f"{rest} is not an open order of rt-other"
    c.c.send(Cancel(order_id=rest))
    c.until(lambda: c.ended(rest))
    assert c.of(rest) == [("canceled", 0, None, 0, 0)]
    c.c.send(Cancel(order_id=rest))  # ended: the ordermanager answers itself
    c.c.send(Cancel(order_id="rt-never-seen"))
    c.until(lambda: len(c.answers) == 2)
    assert {(k, v.reason) for k, v in c.answers.items() if isinstance(v, Reject)} == {
        (rest, "unknown_order"), ("rt-never-seen", "unknown_order")}
    again = Client(stack, "rt-cancel")
    assert again.ack.open_orders == [] and again.ack.positions == {}
    for x in (c, other, again):
        x.close()


def test_unavailable_while_the_exchange_is_stopped(stack: Stack) -> None:
    c = Client(stack, "rt-down")
    rest = c.order("GOOGL", "SELL", 2, 500.0)  # rests far above the ask
    c.until(lambda: c.of(rest))
    stack.ctl("stop", "exchange", check=True)
    stack.wait_for(lambda: not venue_up(stack)(), timeout=30)
    refused = c.order("AAPL", "BUY", 1, 61.0)
    c.c.send(Cancel(order_id=rest))
    c.until(lambda: refused in c.answers and len(c.other) + len([a for a in c.answers.values()
                                                                if isinstance(a, Reject)]) >= 2)
    rj = c.answers[refused]
    assert isinstance(rj, Reject) and rj.reason == "unavailable" and rj.detail.startswith("venue unavailable")
    cancel_rj = c.other[0] if c.other else c.answers[rest]
    assert isinstance(cancel_rj, Reject) and cancel_rj.reason == "unavailable"
    assert refused not in {e["order_id"] for e in stack.journal()}  # not journaled, not acked
    stack.ctl("start", "exchange", check=True)
    stack.wait_for(venue_up(stack), timeout=60)
    ok = c.order("AAPL", "BUY", 1, 61.0)
    c.c.send(Cancel(order_id=rest))  # the resting order survived the exchange's stop
    c.until(lambda: c.ended(ok, rest))
    assert c.of(ok)[-1][0] == "filled" and c.of(rest)[-1][0] == "canceled"
    c.close()


def test_orders_lost_on_their_way_are_routed_again_once_the_exchange_is_back(stack: Stack) -> None:
    """The exchange frozen: the ordermanager accepts and routes three orders into the link before it
    sees the silence; the exchange is killed without having read them; once it is back, the three
    (no exec yet) are routed again after its logon_ack, and each gets one ``new`` and one fill."""
    c = Client(stack, "rt-lost")
    with faults.frozen(stack, "exchange") as pid:
        lost = [c.order(sym, "BUY", 1, px) for sym, px in (("AAPL", 61.0), ("MSFT", 201.0), ("GOOGL", 151.0))]
        c.until(lambda: all(o in c.answers for o in lost))
        assert all(isinstance(c.answers[o], Ack) for o in lost)
        faults.kill(stack, "exchange", signal.SIGKILL)
        faults.wait_dead(pid)
    c.until(lambda: c.ended(*lost), timeout=60)
    for o in lost:
        assert [s for s, *_ in c.of(o)] == ["new", "filled"], c.of(o)
    # (supervisord writes the log from the daemon's pipe: the line may come a moment after the execs)
    stack.wait_for(lambda: [r for r in stack.events("ordermanager", "venue_logged_on") if r["routed"] >= 3])
    journal = stack.cfg.resolve(stack.cfg.ordermanager.journal)
    news = Counter(x.order_id for x in read_lines(journal) if x.status == "new")
    assert all(news[o] == 1 for o in lost)
    routed = [json.loads(line) for line in _exchange_lines(stack) if b'"k":"order"' in line]
    assert Counter(r["order_id"] for r in routed if r["order_id"] in lost) == {o: 1 for o in lost}
    c.close()


def _exchange_lines(stack: Stack) -> list[bytes]:
    from shared.journal import segments
    out: list[bytes] = []
    for seg in segments(stack.exchange_journal()):
        out += seg.read_bytes().splitlines()
    return out


def test_execs_for_a_client_away_are_sent_once_after_its_logon_with_last_exec_id(stack: Stack) -> None:
    """A client sends orders and leaves at once: they are journaled and filled while it is away; it
    logs on again with the highest exec_id it saw and gets exactly the execs it missed, in order."""
    cid = "rt-away"
    c = Client(stack, cid)
    first = c.market("AAPL", "BUY", 1)
    c.until(lambda: c.ended(first))
    seen = max(x.exec_id for x in c.execs)
    gone = [Order(order_id=f"{cid}-g{i}", symbol="MSFT", side="SELL", qty=1, ord_type="market", tif="ioc",
                  ts_ns=time.time_ns(), tick_ts_ns=time.time_ns()) for i in range(5)]
    c.c.send_raw(b"".join(frame(o) for o in gone))
    c.close()
    journal = stack.cfg.resolve(stack.cfg.ordermanager.journal)
    stack.wait_for(lambda: sum(x.status == "filled" and x.client_id == cid for x in read_lines(journal)) == 6)
    again = Client(stack, cid, last_exec_id=seen)
    assert again.ack.last_exec_id is not None and again.ack.last_exec_id > seen
    assert again.ack.positions == {"AAPL": 1, "MSFT": -5} and again.ack.last_order_id == f"{cid}-g4"
    again.until(lambda: again.ended(*(o.order_id for o in gone)))
    assert [x.exec_id for x in again.execs] == [x.exec_id for x in read_lines(journal)
                                                if x.client_id == cid and x.exec_id > seen]
    assert [(x.order_id, x.status) for x in again.execs] == [(o.order_id, s) for o in gone for s in ("new", "filled")]
    with pytest.raises(TimeoutError):  # and nothing more
        again.c.recv_type(Exec, timeout=0.5)
    logon = stack.wait_for(lambda: [r for r in stack.events("ordermanager", "logon") if r["client_id"] == cid
                                    and r["client_last_exec_id"] == seen])[-1]
    assert (logon["client_last_exec_id"], logon["execs_again"]) == (seen, 10)
    again.close()


def test_kill9_of_the_ordermanager_with_fills_in_flight_every_exec_reaches_its_client_once(stack: Stack) -> None:
    """A burst of market orders in one write (the ordermanager takes a few turns over it, routing as it
    goes); at the first ack it is frozen (the venue's execs of what it routed last wait unread), then
    killed; the client logs on again with the highest exec_id it saw and sends again what was not
    acked (same ids). Every exec the exchange sent for the client reaches it exactly once, in exec_id
    order per connection, and every order ends once."""
    cid, n = "rt-kill", 1500
    orders = [Order(order_id=f"{cid}-b{i}", symbol=("AAPL", "MSFT", "GOOGL")[i % 3], side="BUY" if i % 2 else "SELL",
                    qty=1, ord_type="market", tif="ioc", ts_ns=time.time_ns(), tick_ts_ns=time.time_ns())
              for i in range(n)]
    c = Client(stack, cid)
    seen: list[int] = []
    old = stack.pids()["ordermanager"]
    killed = False
    c.c.send_raw(b"".join(frame(o) for o in orders))
    try:
        while True:
            m = c.read(timeout=10)
            if isinstance(m, Exec):
                seen.append(m.exec_id)
            if not killed and isinstance(m, Ack):
                os.kill(old, signal.SIGSTOP)
                time.sleep(0.3)
                os.kill(old, signal.SIGKILL)
                killed = True
    except (EOFError, ConnectionError, TimeoutError):
        pass
    finally:
        c.close()
    assert killed, "the ordermanager was never killed"
    acked_before = {o for o, a in c.answers.items() if isinstance(a, Ack)}
    assert len(acked_before) < n, "the burst ended before the kill"
    assert seen == sorted(seen)
    stack.wait_for(venue_up(stack, not_pid=old), timeout=60)
    again = Client(stack, cid, last_exec_id=max(seen, default=0))  # 0: not a new process, it has seen none
    again.c.send_raw(b"".join(frame(o) for o in orders if o.order_id not in acked_before))
    resent = [o.order_id for o in orders if o.order_id not in acked_before]
    left = [o.order_id for o in orders if o.order_id not in c.done]
    again.until(lambda: len(again.answers) >= len(resent) and again.ended(*left), timeout=120)
    assert set(resent) <= set(again.answers)
    assert not [a for a in again.answers.values() if isinstance(a, Reject)], again.answers
    replayed = [x.exec_id for x in again.execs]
    assert replayed == sorted(replayed)
    got = seen + replayed
    assert len(got) == len(set(got)), Counter(got).most_common(3)  # nothing twice
    journaled = [x.exec_id for x in read_lines(stack.cfg.resolve(stack.cfg.ordermanager.journal))
                 if x.client_id == cid]
    sent = [i for i, body in exec_bodies_after(stack.exchange_journal(), 0)
            if msgspec.json.decode(body).get("client_id") == cid]
    assert sorted(got) == journaled == sent  # every exec the venue sent, journaled once, delivered once
    statuses: dict[str, list[str]] = {}
    for x in c.execs + again.execs:
        statuses.setdefault(x.order_id, []).append(x.status)
    assert sorted(statuses) == sorted(o.order_id for o in orders)
    assert all(s[0] == "new" and sum(t in TERMINAL for t in s) == 1 and s[-1] in TERMINAL for s in statuses.values())
    logon = stack.wait_for(lambda: [r for r in stack.events("ordermanager", "logon") if r["client_id"] == cid
                                    and r["pid"] != old])
    assert logon and logon[0]["client_last_exec_id"] == max(seen, default=0)
    venue = [r for r in stack.events("ordermanager", "venue_logged_on") if r["pid"] != old][0]
    by_venue = (venue["venue_last_exec_id"] or 0) - (venue["last_exec_id"] or 0)
    print(f"KILL9 acked before {len(acked_before)}/{n}, execs seen before {len(seen)}, sent again by the "
          f"ordermanager {logon[0]['execs_again']}, by the venue {by_venue}")
    again.close()
