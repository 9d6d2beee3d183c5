"""The exchange program over TCP (contract §9), as the ordermanager sees it: logon and its
refusals, market, resting, partly filled and crossing orders, cancels, de-duplication, bad
routes; ``kill -9`` with orders resting and partly filled, then a restart that keeps them and
redelivers exactly the execs the ordermanager missed; a torn journal; ``stack-replay`` of a
session with kills in it; and an exit that leaves nothing behind.

The exchange runs as a plain process (tests/venue_helpers.py) fed by a price stream the test
drives tick by tick, so every price and fill is known; the replay test uses the real gateway.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from venue_helpers import PriceFeed, Venue, pid_alive

from shared.config import ROOT
from shared.ops.peer import Refused, VenueClient
from shared.protocol import Exec, Heartbeat, LogonAck, Reject, frame_body

_nos = itertools.count(1)


@pytest.fixture(scope="module")
def feed() -> Iterator[PriceFeed]:
    f = PriceFeed()
    yield f
    f.close()


@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory, feed: PriceFeed) -> Iterator[Venue]:
    with Venue(tmp_path_factory.mktemp("venue"), feed) as v:
        v.start()
        v.wait_for(lambda: feed.subscribers() >= 1)
        yield v


def last_exec_id(v: Venue) -> int | None:
    """The highest exec_id journaled: what an ordermanager that has everything would log on with."""
    ids = [r["exec_id"] for r in v.journal_lines() if r["k"] == "exec"]
    return max(ids) if ids else None


def client(v: Venue) -> VenueClient:
    """A link that has every exec so far: only new ones come."""
    return v.client(last_exec_id(v))


def tick(v: Venue, symbol: str, price: float) -> None:
    """One tick; the exchange has it (another socket than the test's link) after a short wait."""
    assert v.feed is not None
    v.feed.tick(symbol, price)
    time.sleep(0.2)


def order_no() -> int:
    return next(_nos)


def assert_closed(c: VenueClient) -> None:
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            m = c.recv(timeout=10)
            assert isinstance(m, Heartbeat), m


# --- logon --------------------------------------------------------------------


def test_logon_is_answered_with_the_venue_state(venue: Venue) -> None:
    c = venue.client(logon=False)
    ack = c.logon(venue.token, last_exec_id(venue))
    assert isinstance(ack, LogonAck) and ack.open_orders == [] and ack.positions == {} and ack.last_order_id is None
    assert ack.last_exec_id == last_exec_id(venue) and ack.heartbeat_ms == 2000
    rec = venue.wait_for(lambda: venue.events("exchange", "logged_on"))[-1]
    assert rec["client_id"] == "ordermanager" and rec["redelivered"] == 0
    c.close()


@pytest.mark.parametrize(("client_id", "token", "detail"), [
    ("ordermanager", "wrong", "bad token"), ("strategy-1", None, "the venue serves the ordermanager only")])
def test_anyone_but_the_ordermanager_is_refused(venue: Venue, client_id: str, token: str | None,
                                                detail: str) -> None:
    c = venue.client(logon=False)
    with pytest.raises(Refused) as e:
        c.logon(token or venue.token, client_id=client_id)
    assert e.value.reject.reason == "unauthorized" and detail in e.value.reject.detail
    assert_closed(c)


def test_a_route_before_logon_is_refused(venue: Venue) -> None:
    c = venue.client(logon=False)
    c.route(order_no(), "s1", "early", "AAPL", "BUY", 1, 1.0)
    r = c.recv_type(Reject)
    assert r.reason == "not_logged_on" and r.order_id == "early"
    assert_closed(c)


# --- orders -------------------------------------------------------------------


def test_market_order_fills_against_the_quote(venue: Venue) -> None:
    tick(venue, "AAPL", 100.0)
    c = client(venue)
    no = order_no()
    c.route(no, "s1", "m1", "AAPL", "BUY", 10, None, "market")
    new, filled = c.execs(2)
    assert (new.status, new.order_id, new.client_id, new.order_no, new.symbol, new.side) == (
        "new", "m1", "s1", no, "AAPL", "BUY")
    assert (new.cum_qty, new.leaves_qty, new.last_px, new.avg_px) == (0, 10, None, None)
    assert (filled.status, filled.last_qty, filled.last_px, filled.cum_qty, filled.leaves_qty) == (
        "filled", 10, 100.01, 10, 0)  # the ask: 100 x (1 + 2 bps / 2)
    assert filled.exec_id == new.exec_id + 1 and filled.ts_ns == new.ts_ns > 0
    c.close()


def test_limit_order_rests_and_fills_partly_on_later_ticks(venue: Venue) -> None:
    tick(venue, "MSFT", 200.0)
    c = client(venue)
    c.route(order_no(), "s1", "l1", "MSFT", "BUY", 250, 199.0)
    (new,) = c.execs(1)
    assert new.status == "new" and new.leaves_qty == 250
    with pytest.raises(TimeoutError):
        c.recv_type(Exec, timeout=0.3)  # resting: the ask 200.02 is above its price
    tick(venue, "MSFT", 198.9)  # ask 198.91: depth 100 of it
    (p1,) = c.execs(1)
    tick(venue, "MSFT", 198.8)
    (p2,) = c.execs(1)
    assert [(e.status, e.last_qty, e.last_px, e.cum_qty, e.leaves_qty) for e in (p1, p2)] == [
        ("partially_filled", 100, 199.0, 100, 150), ("partially_filled", 100, 199.0, 200, 50)]
    c.cancel("s1", "l1")
    (done,) = c.execs(1)
    assert (done.status, done.cum_qty, done.leaves_qty, done.avg_px) == ("canceled", 200, 0, 199.0)
    c.close()


def test_crossing_client_orders_trade_at_the_resting_price(venue: Venue) -> None:
    tick(venue, "GOOGL", 100.0)  # bid 99.99, ask 100.01
    c = client(venue)
    c.route(order_no(), "s2", "x-sell", "GOOGL", "SELL", 30, 100.005)  # inside the quote: rests
    (sell_new,) = c.execs(1)
    c.route(order_no(), "s3", "x-buy", "GOOGL", "BUY", 20, 100.02)
    buy_new, buy_fill, sell_fill = c.execs(3)
    assert (buy_new.status, buy_new.client_id) == ("new", "s3")
    assert (buy_fill.status, buy_fill.last_qty, buy_fill.last_px, buy_fill.client_id) == ("filled", 20, 100.005, "s3")
    assert (sell_fill.status, sell_fill.last_qty, sell_fill.last_px, sell_fill.leaves_qty, sell_fill.client_id) == (
        "partially_filled", 20, 100.005, 10, "s2")
    assert [e.exec_id for e in (sell_new, buy_new, buy_fill, sell_fill)] == list(
        range(sell_new.exec_id, sell_new.exec_id + 4))
    c.cancel("s2", "x-sell")
    assert c.execs(1)[0].status == "canceled"
    c.close()


def test_cancel_of_an_order_not_open_is_unknown_order_and_the_link_stays(venue: Venue) -> None:
    c = client(venue)
    for cid, oid in (("s1", "never-seen"), ("s1", "m1"), ("s9", "l1")):  # unknown, filled, another client's id
        c.cancel(cid, oid)
        r = c.next(Reject, Exec)
        assert isinstance(r, Reject) and (r.reason, r.order_id, r.client_id) == ("unknown_order", oid, cid), r
    c.route(order_no(), "s1", "after-cancels", "AAPL", "SELL", 1, None, "market")
    assert [e.status for e in c.execs(2)] == ["new", "filled"]
    c.close()


def test_an_order_routed_again_is_traded_once(venue: Venue) -> None:
    c = client(venue)
    no = order_no()
    c.route(no, "s1", "dup-1", "AAPL", "BUY", 5, 90.0)
    (new,) = c.execs(1)
    c.close()
    c = client(venue)  # a new link, as after a lost one: the ordermanager routes it again
    c.route(no, "s1", "dup-1", "AAPL", "BUY", 5, 90.0)
    c.route(order_no(), "s1", "dup-2", "AAPL", "BUY", 5, 90.0)
    (nxt,) = c.execs(1)
    assert (nxt.order_id, nxt.exec_id) == ("dup-2", new.exec_id + 1)
    lines = [r for r in venue.journal_lines() if r["k"] == "order" and r["order_id"] == "dup-1"]
    assert len(lines) == 1
    assert venue.wait_for(lambda: venue.events("exchange", "route_duplicate"))[-1]["order_id"] == "dup-1"
    for oid in ("dup-1", "dup-2"):
        c.cancel("s1", oid)
    assert [e.status for e in c.execs(2)] == ["canceled", "canceled"]
    c.close()


def route_body(order_id: str, **fields: Any) -> bytes:
    msg = {"type": "route", "order_no": order_no(), "client_id": "s1", "order_id": order_id, "symbol": "AAPL",
           "side": "BUY", "qty": 1, "price": 10.0} | fields
    return frame_body(json.dumps({k: v for k, v in msg.items() if v is not None}).encode())


@pytest.mark.parametrize("fields", [{"ord_type": "stop"}, {"tif": "gtc"}, {"price": None}, {"qty": 0},
                                    {"side": "HOLD"}], ids=["ord_type", "tif", "limit_no_price", "qty0", "side"])
def test_a_bad_route_is_bad_message_and_the_link_stays(venue: Venue, fields: dict[str, Any]) -> None:
    c = client(venue)
    c.send_raw(route_body("bad-1", **fields))
    r = c.next(Reject, Exec)
    assert isinstance(r, Reject) and (r.reason, r.order_id) == ("bad_message", "bad-1"), r
    c.route(order_no(), "s1", f"ok-after-{next(_nos)}", "AAPL", "BUY", 1, None, "market")
    assert [e.status for e in c.execs(2)] == ["new", "filled"]
    assert not [r for r in venue.journal_lines() if r.get("order_id") == "bad-1"]
    c.close()


# --- restart ------------------------------------------------------------------


def test_kill9_with_orders_resting_and_partly_filled_loses_and_doubles_nothing(venue: Venue) -> None:
    tick(venue, "MSFT", 300.0)
    c = client(venue)
    c.route(order_no(), "s1", "k-rest", "MSFT", "BUY", 10, 250.0)  # far below: rests untouched
    c.route(order_no(), "s2", "k-part", "MSFT", "BUY", 150, 299.0)  # fills 100 on the next tick
    c.execs(2)
    tick(venue, "MSFT", 298.9)
    (part,) = c.execs(1)
    assert (part.order_id, part.cum_qty, part.leaves_qty) == ("k-part", 100, 50)
    seen = part.exec_id  # what this "ordermanager" has; the ones below it came before
    c.route(order_no(), "s3", "k-late", "MSFT", "SELL", 5, 400.0)  # its new: journaled, maybe unread
    c.execs(1)
    before = last_exec_id(venue)
    pid = venue.procs["exchange"].pid
    venue.kill9()
    c.close()
    assert not pid_alive(pid)
    venue.start()
    restored = venue.events("exchange", "exchange_restored")[-1]
    assert restored["next_exec_id"] == before + 1 and restored["resting"] >= 3
    c = venue.client(last_exec_id=seen)
    (late,) = c.execs(1)  # exactly the one it missed
    assert (late.order_id, late.exec_id) == ("k-late", seen + 1)
    with pytest.raises(TimeoutError):
        c.recv_type(Exec, timeout=0.3)
    tick(venue, "MSFT", 298.8)  # the partly filled order goes on where it was
    (fill,) = c.execs(1)
    assert (fill.order_id, fill.exec_id, fill.cum_qty, fill.leaves_qty, fill.status) == (
        "k-part", before + 1, 150, 0, "filled")
    c.cancel("s1", "k-rest")
    assert c.execs(1)[0].status == "canceled"
    c.cancel("s3", "k-late")
    assert c.execs(1)[0].status == "canceled"
    c.close()


def test_a_restart_does_not_apply_the_last_tick_again(venue: Venue) -> None:
    tick(venue, "AAPL", 50.0)
    c = client(venue)
    c.route(order_no(), "s1", "t-rest", "AAPL", "BUY", 150, 49.0)
    c.execs(1)
    tick(venue, "AAPL", 48.9)
    assert c.execs(1)[0].cum_qty == 100
    venue.stop()
    c.close()
    venue.start()  # the feed's snapshot repeats the tick of 48.9: its depth is not there twice
    c = client(venue)
    with pytest.raises(TimeoutError):
        c.recv_type(Exec, timeout=0.5)
    tick(venue, "AAPL", 48.95)
    assert c.execs(1)[0].cum_qty == 150
    c.close()


def test_a_torn_last_line_is_repaired_at_start(venue: Venue) -> None:
    c = client(venue)
    c.route(order_no(), "s1", "torn-1", "AAPL", "BUY", 3, 1.0)
    (new,) = c.execs(1)
    venue.kill9()
    c.close()
    size = venue.journal.stat().st_size
    with open(venue.journal, "ab") as f:
        f.write(b'{"k":"order","order_no":99999,"client_id":"s1","ord')
    venue.start()
    rec = venue.events("exchange", "journal_repaired")[-1]
    assert rec["dropped_bytes"] == len(b'{"k":"order","order_no":99999,"client_id":"s1","ord')
    assert venue.journal.read_bytes().endswith(b"\n") and venue.journal.stat().st_size > size  # its start line
    c = client(venue)
    c.cancel("s1", "torn-1")
    (gone,) = c.execs(1)
    assert (gone.status, gone.exec_id) == ("canceled", new.exec_id + 1)
    c.close()


def test_exit_leaves_no_process_no_port_no_segment(venue: Venue) -> None:
    shm = set(os.listdir("/dev/shm"))
    pid = venue.procs["exchange"].pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "/dev/shm" not in maps  # it attaches to no segment
    port = venue.cfg.exchange.port
    assert venue.stop() == 0
    assert not pid_alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert set(os.listdir("/dev/shm")) <= shm
    events = [r["event"] for r in venue.log() if r.get("pid") == pid]
    last = events[len(events) - events[::-1].index("stopping"):]
    # the shutdown's roll, its checkpoint written before it stops; a link closed, an earlier roll's checkpoint
    assert last[-3:] == ["journal_rolled", "journal_checkpoint_written", "stopped"], events
    assert set(last[:-3]) <= {"disconnected", "journal_checkpoint_written"}, events
    venue.start()  # the module's later tests want it back


# --- replay -------------------------------------------------------------------


def test_replay_of_a_session_with_kills_reproduces_every_exec(tmp_path: Path) -> None:
    """The real gateway, fast prices, random orders near the market and cancels, two kill -9 of
    the exchange: every exec reaches the test's ordermanager once, and stack-replay of the
    journal reproduces each byte for byte; a tampered journal makes it fail."""
    rng = random.Random(15)
    with Venue(tmp_path / "v", exchange={"journal_segment_bytes": 8192},
               gateway={"price_rate": 300, "seed": 15}) as v:
        v.start("gateway", wait=False)
        v.start()
        got: dict[int, Exec] = {}
        prices: dict[str, float] = {}
        n = 0
        for life in range(3):
            c = v.client(max(got) if got else None)
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                n += 1
                sym = rng.choice(("AAPL", "MSFT", "GOOGL"))
                p = prices.get(sym)
                if p is None or rng.random() < 0.5:
                    c.route(n, rng.choice(("a", "b")), f"r{n}", sym, rng.choice(("BUY", "SELL")), rng.randint(1, 150),
                            None, "market")
                else:
                    c.route(n, rng.choice(("a", "b")), f"r{n}", sym, rng.choice(("BUY", "SELL")), rng.randint(1, 300),
                            round(p * (1 + rng.uniform(-0.002, 0.002)), 2), "limit", rng.choice(("day", "ioc")))
                if n > 5 and rng.random() < 0.2:
                    c.cancel(rng.choice(("a", "b")), f"r{rng.randint(1, n)}")
                for m in drain(c, 0.02):
                    if isinstance(m, Exec):
                        assert m.exec_id not in got, f"exec {m.exec_id} twice"
                        got[m.exec_id] = m
                        if m.last_px is not None:
                            prices[m.symbol] = m.last_px
            if life < 2:
                v.kill9()
                c.close()
                v.start()
        for m in drain(c, 0.5):
            if isinstance(m, Exec):
                assert m.exec_id not in got
                got[m.exec_id] = m
        c.close()
        v.stop()
        v.stop("gateway")
        journaled = [r for r in v.journal_lines() if r["k"] == "exec"]
        assert len(journaled) > 100 and sorted(got) == list(range(1, max(got) + 1))
        assert [r["exec_id"] for r in journaled] == list(range(1, len(journaled) + 1))
        assert len(journaled) >= max(got)
        assert any(r["status"] == "partially_filled" for r in journaled) and any(
            r["status"] == "canceled" for r in journaled)
        assert len([r for r in v.log() if r.get("event") == "exchange_restored"]) == 3
        r = subprocess.run([sys.executable, "-m", "shared.ops.replay", str(v.journal)], cwd=ROOT,
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        derived = r.stdout.splitlines()
        assert [json.loads(d) for d in derived] == [{k: x for k, x in j.items() if k != "k"} for j in journaled]
        # The first closed segment with a fill in it (which one depends on the prices), tampered with.
        filled = (seg for seg in sorted(v.journal.parent.glob("exchange.jsonl.[0-9]*"), key=lambda p: int(p.suffix[1:]))
                  if b'"status":"filled"' in seg.read_bytes())
        seg = next(filled)
        lines = seg.read_bytes().splitlines(keepends=True)
        i = next(i for i, ln in enumerate(lines) if b'"status":"filled"' in ln)
        lines[i] = lines[i].replace(b'"last_qty":', b'"last_qty":1', 1)
        seg.write_bytes(b"".join(lines))
        bad = subprocess.run([sys.executable, "-m", "shared.ops.replay", "-q", str(v.journal)], cwd=ROOT,
                             capture_output=True, timeout=120)
        assert bad.returncode == 1 and b"DIFFERS" in bad.stderr and f"{seg.name}:".encode() in bad.stderr, bad.stderr


def drain(c: VenueClient, seconds: float) -> list[Any]:
    """Whatever arrives within ``seconds`` (a heartbeat is sent first: the link stays up)."""
    c.beat()
    out = []
    deadline = time.monotonic() + seconds
    while True:
        try:
            out.append(c.recv(timeout=max(0.001, deadline - time.monotonic())))
        except TimeoutError:
            return out
