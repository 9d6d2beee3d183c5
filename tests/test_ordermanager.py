"""The ordermanager over TCP, in a live stack under supervisord: every reject
code of contract §4, logon and its positions across a restart, the journal.
The tests share one stack (a small ``max_qty`` for the risk check).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.ops.harness import Stack
from shared.ops.peer import OrderClient, Refused
from shared.protocol import TERMINAL, Ack, Exec, Heartbeat, Logon, LogonAck, Order, Reject, frame_body

MAX_QTY = 50
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def om(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # heartbeat_ms 1000: a test client idles up to 3 s between frames on a busy machine.
    s = Stack(tmp_path_factory.mktemp("om"), {"ordermanager": {"max_qty": MAX_QTY, "heartbeat_ms": 1000}})
    try:
        s.start(timeout=60)
        # RUNNING only means alive for startsecs: wait until the port answers.
        s.wait_for(lambda: connect(s), timeout=60).close()
        yield s
    finally:
        s.stop()


def client(stack: Stack) -> OrderClient:
    return OrderClient(stack.cfg.ordermanager.host, stack.cfg.ordermanager.port, timeout=10)


def connect(stack: Stack) -> OrderClient | None:
    try:
        return client(stack)
    except OSError:
        return None


def logged_on(stack: Stack, client_id: str | None = None) -> OrderClient:
    c = client(stack)
    ack = c.logon(client_id or f"om-test-{next(_ids)}", stack.token)
    assert isinstance(ack, LogonAck)
    return c


def peer_of(c: OrderClient) -> str:
    host, port = c.sock.getsockname()[:2]
    return f"{host}:{port}"


def answer(c: OrderClient) -> Any:
    """The next ack or reject (heartbeats skipped)."""
    return c.recv_type(Ack, Reject, LogonAck, timeout=10)


def assert_closed(c: OrderClient) -> None:
    """The server closes the connection; nothing but heartbeats (and execs of orders sent before) comes first."""
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            m = c.recv(timeout=10)
            assert isinstance(m, Heartbeat | Exec), m


def rejected_log(stack: Stack, peer: str) -> list[dict[str, Any]]:
    return [r for r in stack.log("ordermanager")
            if r.get("peer") == peer and r["event"] in ("order_rejected", "bad_frame")]


def order_msg(order_id: str, **fields: Any) -> bytes:
    body = {"type": "order", "order_id": order_id, "symbol": "AAPL", "side": "BUY", "qty": 1, "price": 10.5,
            "ts_ns": 1, "tick_ts_ns": 1} | fields
    return frame_body(json.dumps({k: v for k, v in body.items() if v is not None}).encode())


def utc_s(ts: str) -> float:
    """A log record's ``ts`` as seconds since the epoch."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def journal_ids(stack: Stack) -> set[str]:
    return {e["order_id"] for e in stack.journal()}


def good_order(c: OrderClient, order_id: str) -> Ack:
    c.order(order_id, "MSFT", "BUY", 1, 99.5)
    a = answer(c)
    assert isinstance(a, Ack) and a.order_id == order_id and not a.duplicate, a
    return a


@pytest.mark.parametrize("header", [b"\x00\x00\x00\x00", (65537).to_bytes(4, "big")], ids=["len0", "len65537"])
def test_bad_frame_is_rejected_and_closes(om: Stack, header: bytes) -> None:
    other = logged_on(om)
    c = logged_on(om)
    peer = peer_of(c)
    c.send_raw(header)
    r = answer(c)
    assert isinstance(r, Reject) and r.reason == "bad_frame" and r.order_id is None, r
    assert_closed(c)
    c.close()
    # The ordermanager keeps serving everyone else.
    good_order(other, f"bf-ok-{next(_ids)}")
    other.close()
    logged = om.wait_for(lambda: rejected_log(om, peer))
    assert any(x["event"] == "bad_frame" and x.get("reason") for x in logged), logged


def test_bad_frame_before_logon_is_rejected_and_closes(om: Stack) -> None:
    c = client(om)
    peer = peer_of(c)
    c.send_raw(b"\x00\x00\x00\x00")
    r = answer(c)
    assert isinstance(r, Reject) and r.reason == "bad_frame"
    assert_closed(c)
    c.close()
    om.wait_for(lambda: rejected_log(om, peer))


def test_bad_messages_are_rejected_and_the_connection_stays_open(om: Stack) -> None:
    n = next(_ids)
    cases = [
        (frame_body(b"this is not JSON"), None, None),
        (frame_body(b"[1, 2, 3]"), None, None),
        (frame_body(b'{"type": "modify", "order_id": "x"}'), "x", None),
        (order_msg(f"bm-ordtype-{n}", ord_type="stop"), f"bm-ordtype-{n}", "ord_type"),
        (order_msg(f"bm-tif-{n}", tif="gtc"), f"bm-tif-{n}", "tif"),
        (order_msg(f"bm-noprice-{n}", price=None), f"bm-noprice-{n}", "limit order needs a price"),
        (frame_body(b'{"type": "cancel"}'), None, "order_id"),
        (order_msg(f"bm-missing-{n}", qty=None), f"bm-missing-{n}", "qty"),
        (order_msg(f"bm-qtytype-{n}", qty="10"), f"bm-qtytype-{n}", "qty"),
        (order_msg(f"bm-qtyzero-{n}", qty=0), f"bm-qtyzero-{n}", "qty"),
        (order_msg(f"bm-side-{n}", side="HOLD"), f"bm-side-{n}", "side"),
        (order_msg(f"bm-price-{n}", price="cheap"), f"bm-price-{n}", "price"),
        (frame_body(b'{"type": "order", "order_id": 7, "symbol": "AAPL"}'), None, "order_id"),
    ]
    c = logged_on(om)
    peer = peer_of(c)
    for data, order_id, field in cases:
        c.send_raw(data)
        r = answer(c)
        assert isinstance(r, Reject) and r.reason == "bad_message", (data, r)
        assert r.order_id == order_id, (data, r)
        if field:
            assert field in r.detail, (data, r.detail)
    ok = f"bm-ok-{n}"
    good_order(c, ok)  # the connection is still open and in step
    c.close()
    ids = journal_ids(om)
    assert ok in ids
    assert not {oid for _, oid, _ in cases if oid} & ids
    logged = om.wait_for(lambda: (x := [r for r in rejected_log(om, peer) if r["event"] == "order_rejected"])
                         and len(x) >= len(cases) and x)
    assert len(logged) == len(cases) and all(x["reason"] == "bad_message" for x in logged)


def test_bad_message_before_logon_closes(om: Stack) -> None:
    c = client(om)
    peer = peer_of(c)
    c.send_raw(frame_body(b"{not json"))
    r = answer(c)
    assert isinstance(r, Reject) and r.reason == "bad_message"
    assert_closed(c)
    c.close()
    om.wait_for(lambda: rejected_log(om, peer))


def test_order_before_logon_is_not_logged_on_and_closes(om: Stack) -> None:
    oid = f"nlo-{next(_ids)}"
    c = client(om)
    peer = peer_of(c)
    c.order(oid, "AAPL", "BUY", 1, 10.0)
    r = answer(c)
    assert isinstance(r, Reject) and r.reason == "not_logged_on" and r.order_id == oid, r
    assert_closed(c)
    c.close()
    with logged_on(om) as other:  # an ack after the reject: the journal is up to date
        good_order(other, f"nlo-ok-{next(_ids)}")
    assert oid not in journal_ids(om)
    logged = om.wait_for(lambda: rejected_log(om, peer))
    assert logged[0]["reason"] == "not_logged_on" and logged[0]["order_id"] == oid


def test_wrong_token_is_unauthorized_and_closes(om: Stack) -> None:
    c = client(om)
    peer = peer_of(c)
    c.send(Logon(proto=1, client_id="intruder", token=om.token + "x"))
    r = answer(c)
    assert isinstance(r, Reject) and r.reason == "unauthorized", r
    assert_closed(c)
    c.close()
    logged = om.wait_for(lambda: rejected_log(om, peer))
    assert logged[0]["reason"] == "unauthorized"
    assert "intruder" not in {e["client_id"] for e in om.journal()}


def test_risk_rejects_unknown_symbol_and_qty_over_max(om: Stack) -> None:
    n = next(_ids)
    c = logged_on(om)
    peer = peer_of(c)
    c.order(f"risk-sym-{n}", "TSLA", "BUY", 1, 10.0)
    r1 = answer(c)
    c.order(f"risk-qty-{n}", "AAPL", "SELL", MAX_QTY + 1, 10.0)
    r2 = answer(c)
    for r, oid in ((r1, f"risk-sym-{n}"), (r2, f"risk-qty-{n}")):
        assert isinstance(r, Reject) and r.reason == "risk" and r.order_id == oid, r
    c.order(f"risk-max-{n}", "AAPL", "SELL", MAX_QTY, 10.0)  # at the limit is fine
    a = answer(c)
    assert isinstance(a, Ack) and a.order_id == f"risk-max-{n}"
    c.close()
    ids = journal_ids(om)
    assert f"risk-max-{n}" in ids and not {f"risk-sym-{n}", f"risk-qty-{n}"} & ids
    logged = om.wait_for(lambda: (x := rejected_log(om, peer)) and len(x) >= 2 and x)
    assert [(x["reason"], x["order_id"]) for x in logged] == [("risk", f"risk-sym-{n}"), ("risk", f"risk-qty-{n}")]


def test_second_logon_closes_the_older_connection(om: Stack) -> None:
    cid = f"twin-{next(_ids)}"
    first = logged_on(om, cid)
    good_order(first, f"{cid}-1")
    second = client(om)
    ack = second.logon(cid, om.token)
    assert ack.last_order_id == f"{cid}-1"
    assert_closed(first)
    first.close()
    good_order(second, f"{cid}-2")
    second.close()


def refused(stack: Stack, client_id: str, instance: str | None) -> Reject:
    """Log on as ``instance``; the reject it must get (then the connection closes)."""
    c = client(stack)
    with pytest.raises(Refused) as e:
        c.logon(client_id, stack.token, instance)
    assert_closed(c)
    c.close()
    return e.value.reject


def test_a_newer_instance_takes_the_client_id_over_for_good(om: Stack) -> None:
    cid = f"owned-{next(_ids)}"
    old = client(om)
    old.logon(cid, om.token, "instance-a")
    good_order(old, f"{cid}-1")
    new = client(om)
    ack = new.logon(cid, om.token, "instance-b")  # a newer process of the same client
    assert ack.last_order_id == f"{cid}-1"
    assert_closed(old)  # the older connection first, as the contract says
    old.close()
    r = refused(om, cid, "instance-a")  # the superseded process comes back: refused
    assert (r.reason, r.detail, r.order_id) == ("unauthorized", f"client_id {cid} taken over by a newer instance",
                                                None)
    good_order(new, f"{cid}-2")
    new.close()
    refused(om, cid, "instance-a")  # still refused with the owner gone
    with client(om) as back:  # the owner reconnecting is welcome
        assert back.logon(cid, om.token, "instance-b").last_order_id == f"{cid}-2"
        good_order(back, f"{cid}-3")
    assert [e["order_id"] for e in om.journal() if e["client_id"] == cid] == [f"{cid}-{i}" for i in (1, 2, 3)]
    over = om.wait_for(lambda: [r for r in om.events("ordermanager", "client_taken_over") if r["client_id"] == cid])
    assert over[0]["instance"] == "instance-b" and over[0]["level"] == "warning"
    gone = [r for r in om.events("ordermanager", "disconnected") if r.get("client_id") == cid]
    assert gone[0]["reason"] == "taken_over", gone
    rejects = om.wait_for(lambda: [r for r in om.events("ordermanager", "order_rejected")
                                   if r["detail"] == f"client_id {cid} taken over by a newer instance"])
    assert rejects[0]["reason"] == "unauthorized"


def test_a_logon_without_instance_changes_no_owner(om: Stack) -> None:
    cid = f"legacy-{next(_ids)}"
    owner = client(om)
    owner.logon(cid, om.token, "instance-a")
    with client(om) as plain:  # as before instances: it closes the older connection, nothing more
        plain.logon(cid, om.token)
        assert_closed(owner)
    owner.close()
    with client(om) as again:
        again.logon(cid, om.token, "instance-a")  # still the owner: not refused
        good_order(again, f"{cid}-1")


def test_a_strategy_taken_over_is_refused_backs_off_and_sends_nothing(om: Stack) -> None:
    cid = om.cfg.strategy.client_id
    pid = om.pids()["strategy"]
    om.wait_for(lambda: [r for r in om.log("strategy") if r["pid"] == pid and r["event"] == "logged_on"],
                timeout=60)
    with client(om) as usurper:
        usurper.logon(cid, om.token, "usurper")
        t_over = time.time()
        # The strategy reconnects, is refused, and waits longer each time.
        refusals = om.wait_for(lambda: (x := [r for r in om.log("strategy") if r["pid"] == pid
                                              and r["event"] == "logon_refused"]) and len(x) >= 3 and x,
                               timeout=60)
    assert [r["attempt"] for r in refusals[:3]] == [1, 2, 3]
    assert refusals[2]["delay_ms"] > refusals[0]["delay_ms"]
    assert {(r["reason"], r["detail"], r["level"]) for r in refusals} == \
        {("unauthorized", f"client_id {cid} taken over by a newer instance", "error")}
    late = [r for r in om.log("strategy") if r["pid"] == pid and r["event"] in ("order_sent", "logged_on")
            and utc_s(r["ts"]) > t_over]
    assert not late, late
    assert not [e for e in om.journal() if e["client_id"] == cid and e["recv_ns"] > t_over * 1e9]
    # A new strategy process is a new instance: it takes the name back.
    om.ctl("restart", "strategy", check=True)
    new = om.pids()["strategy"]
    om.wait_for(lambda: [r for r in om.log("strategy") if r["pid"] == new and r["event"] == "logged_on"],
                timeout=60)


def send(c: OrderClient, order_id: str, symbol: str, side: str, qty: int, price: float | None = None,
         ord_type: str = "market") -> None:
    """A market order (without a price unless given) or, with ``ord_type="limit"``, a limit order for the day."""
    c.send(Order(order_id=order_id, symbol=symbol, side=side, qty=qty, price=price,  # type: ignore[arg-type]
                 ord_type=ord_type, tif="ioc" if ord_type == "market" else "day",  # type: ignore[arg-type]
                 ts_ns=time.time_ns(), tick_ts_ns=time.time_ns()))


def until_ended(c: OrderClient, order_ids: set[str]) -> tuple[dict[str, Ack | Reject], dict[str, list[Exec]]]:
    """Each order's answer and its execs, read until every order has its terminal exec (a day order
    named ``…-rest`` only its ``new``)."""
    answers: dict[str, Ack | Reject] = {}
    got: dict[str, list[Exec]] = {o: [] for o in order_ids}

    def done(oid: str) -> bool:
        xs = got[oid]
        return bool(xs) and (xs[-1].status in TERMINAL or oid.endswith("-rest"))

    while len(answers) < len(order_ids) or not all(map(done, order_ids)):
        m = c.recv_type(Exec, Ack, Reject, timeout=10)
        if isinstance(m, Exec):
            got[m.order_id].append(m)
        else:
            answers[m.order_id] = m
    return answers, got


def test_positions_and_open_orders_survive_an_ordermanager_restart(om: Stack) -> None:
    """Positions are what filled (market orders well within the venue's depth fill in full at its
    quote); a limit buy far below the market rests and is listed open; both, and last_order_id and
    last_exec_id, are the same after a restart of the ordermanager."""
    cid = f"pos-{next(_ids)}"
    fills = [("AAPL", "BUY", 30), ("AAPL", "SELL", 10), ("MSFT", "BUY", 5), ("GOOGL", "BUY", 7),
             ("GOOGL", "SELL", 7)]
    with logged_on(om, cid) as c:
        for i, (sym, side, qty) in enumerate(fills, 1):
            send(c, f"{cid}-{i}", sym, side, qty)
        send(c, f"{cid}-rest", "MSFT", "BUY", 3, 0.01, "limit")
        answers, execs = until_ended(c, {f"{cid}-{i}" for i in range(1, len(fills) + 1)} | {f"{cid}-rest"})
    acks = [answers[f"{cid}-{i}"] for i in range(1, len(fills) + 1)] + [answers[f"{cid}-rest"]]
    assert all(isinstance(a, Ack) for a in acks), acks
    assert {o: [x.status for x in xs] for o, xs in execs.items()} == {
        **{f"{cid}-{i}": ["new", "filled"] for i in range(1, len(fills) + 1)}, f"{cid}-rest": ["new"]}
    last_exec = max(x.exec_id for xs in execs.values() for x in xs)
    before_no = max(a.order_no for a in acks if isinstance(a, Ack))
    old_pid = om.pids()["ordermanager"]

    out = om.ctl("restart", "ordermanager")
    assert "ordermanager: started" in out, out
    om.wait_running(timeout=60)
    assert om.pids()["ordermanager"] != old_pid

    c = om.wait_for(lambda: connect(om), timeout=60)
    with c:
        ack = c.logon(cid, om.token)
        assert ack.positions == {"AAPL": 20, "MSFT": 5}  # GOOGL is flat: not listed
        assert [(o.order_id, o.symbol, o.side, o.qty, o.price, o.cum_qty, o.leaves_qty) for o in ack.open_orders] == [
            (f"{cid}-rest", "MSFT", "BUY", 3, 0.01, 0, 3)]
        assert ack.last_order_id == f"{cid}-rest" and ack.last_exec_id == last_exec
        c.order(f"{cid}-2", "AAPL", "SELL", 10, 102.0)  # a resend: de-duplicated from the journal
        dup = answer(c)
        assert isinstance(dup, Ack) and dup.duplicate and dup.order_no == acks[1].order_no  # type: ignore[union-attr]
        new = good_order(c, f"{cid}-{len(fills) + 1}")
    assert new.order_no > before_no
    journal = om.journal()
    assert [e["order_no"] for e in journal] == list(range(1, len(journal) + 1))
    assert [e["order_id"] for e in journal if e["client_id"] == cid] == [
        *(f"{cid}-{i}" for i in range(1, len(fills) + 1)), f"{cid}-rest", f"{cid}-{len(fills) + 1}"]
    with client(om) as c2:
        ack2 = c2.logon(f"never-seen-{next(_ids)}", om.token)
        assert ack2.positions == {} and ack2.last_order_id is None and ack2.open_orders == []


def test_nothing_rejected_is_journaled(om: Stack) -> None:
    """Across every test above: no order_id that was rejected is in the journal."""
    with logged_on(om) as c:  # an ack: everything before it is journaled
        good_order(c, f"final-{next(_ids)}")
    rejected = {r["order_id"] for r in om.events("ordermanager", "order_rejected") if r.get("order_id")}
    assert rejected, "the tests above rejected orders with ids"
    journal = om.journal()
    assert not rejected & {e["order_id"] for e in journal}
    keys = [(e["client_id"], e["order_id"]) for e in journal]
    assert len(keys) == len(set(keys))
    assert [e["order_no"] for e in journal] == list(range(1, len(journal) + 1))

