"""The life of every order from accepted orders and exec lines (shared/execstate.py), by hand-worked cases."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared.execstate import ExecLine, ExecState, build, decode_line
from shared.protocol import Exec, OpenOrder


def x(exec_id: int, order_no: int, status: str, cum: int, leaves: int, last_qty: int = 0, last_px: float | None = None,
      cid: str = "c1", symbol: str = "AAPL", side: str = "BUY", **kw: Any) -> ExecLine:
    """An exec line of order ``<cid>-<order_no>``."""
    return ExecLine(f"{cid}-{order_no}", exec_id, status, last_qty, last_px, cum, leaves,
                    last_px if cum else None, 1000 + exec_id, symbol, side, cid, order_no, 2000 + exec_id, **kw)


def accepted(st: ExecState, order_no: int, qty: int, price: float | None = 100.0, cid: str = "c1",
             symbol: str = "AAPL", side: str = "BUY") -> None:
    assert st.accept(order_no, cid, f"{cid}-{order_no}", symbol, side, qty, price) is not None


def test_an_order_from_accepted_to_filled_in_parts() -> None:
    st = ExecState()
    accepted(st, 1, 10)
    assert [o.order_no for o in st.unrouted()] == [1] and not st.routed(1)
    assert st.open_qty("c1", "AAPL", "BUY") == 10 and st.open_qty("c1", "AAPL", "SELL") == 0
    assert st.position("c1", "AAPL") == 0
    assert st.apply(x(1, 1, "new", 0, 10))
    assert not st.unrouted() and st.routed(1)
    assert st.apply(x(2, 1, "partially_filled", 4, 6, 4, 99.5))
    assert (st.position("c1", "AAPL"), st.open_qty("c1", "AAPL", "BUY")) == (4, 6)
    assert st.open_orders("c1") == [OpenOrder("c1-1", "AAPL", "BUY", 10, 100.0, 4, 6)]
    assert st.apply(x(3, 1, "filled", 10, 0, 6, 99.75))
    assert (st.position("c1", "AAPL"), st.open_qty("c1", "AAPL", "BUY")) == (10, 0)
    assert st.open_orders("c1") == [] and not st.by_no and not st.open
    assert (st.last_exec_id, st.client_last, st.fills) == (3, {"c1": 3}, 2)


def test_a_cancel_after_a_partial_fill_keeps_the_fill_and_frees_the_rest() -> None:
    st = ExecState()
    accepted(st, 1, 10, side="SELL")
    for line in (x(1, 1, "new", 0, 10, side="SELL"), x(2, 1, "partially_filled", 3, 7, 3, 101.0, side="SELL"),
                 x(3, 1, "canceled", 3, 0, side="SELL")):
        st.apply(line)
    assert st.nonzero_positions("c1") == {"AAPL": -3}
    assert st.open_qty("c1", "AAPL", "SELL") == 0 and st.open_order("c1", "c1-1") is None


def test_an_exec_not_above_the_highest_changes_nothing() -> None:
    st = ExecState()
    accepted(st, 1, 10)
    st.apply(x(1, 1, "new", 0, 10))
    st.apply(x(2, 1, "partially_filled", 5, 5, 5, 100.0))
    assert not st.apply(x(2, 1, "partially_filled", 5, 5, 5, 100.0))
    assert not st.apply(x(1, 1, "new", 0, 10))
    assert (st.position("c1", "AAPL"), st.open_qty("c1", "AAPL", "BUY"), st.fills) == (5, 5, 1)


def test_open_quantity_per_client_symbol_and_side() -> None:
    st = ExecState()
    accepted(st, 1, 10)
    accepted(st, 2, 5)
    accepted(st, 3, 7, side="SELL")
    accepted(st, 4, 3, cid="c2")
    accepted(st, 5, 2, symbol="MSFT")
    assert st.open_qty("c1", "AAPL", "BUY") == 15
    assert st.open_qty("c1", "AAPL", "SELL") == 7
    assert st.open_qty("c2", "AAPL", "BUY") == 3
    assert st.open_qty("c1", "MSFT", "BUY") == 2
    assert [o.order_id for o in st.open_orders("c1")] == ["c1-1", "c1-2", "c1-3", "c1-5"]


def test_restored_from_exec_lines_alone() -> None:
    """A restart: the ``new`` line carries the order's qty and price; an order whose ``new`` line is
    older than what is read (or lacks them) is known by cum + leaves, without a price."""
    st = ExecState()
    st.apply(x(1, 1, "new", 0, 10, order_qty=10, order_price=99.0))
    st.apply(x(2, 1, "partially_filled", 4, 6, 4, 99.0))
    st.apply(x(3, 2, "partially_filled", 2, 3, 2, 50.0, cid="c2", side="SELL"))
    assert st.open_orders("c1") == [OpenOrder("c1-1", "AAPL", "BUY", 10, 99.0, 4, 6)]
    assert st.open_orders("c2") == [OpenOrder("c2-2", "AAPL", "SELL", 5, None, 2, 3)]
    assert st.open_qty("c2", "AAPL", "SELL") == 3
    assert st.nonzero_positions("c2") == {"AAPL": -2}
    assert st.routed(1) and st.routed(2) and st.routed_upto == 2


def test_routed_upto_follows_execs_in_any_order() -> None:
    st = ExecState(routed_upto=3)  # 1..3 predate the venue
    assert st.accept(2, "c1", "c1-2", "AAPL", "BUY", 1, 1.0) is None
    for no in (4, 5, 6, 7):
        accepted(st, no, 1)
    st.apply(x(1, 6, "new", 0, 1))
    st.apply(x(2, 4, "new", 0, 1))
    assert st.routed_upto == 4 and st.routed(6) and not st.routed(5)
    assert [o.order_no for o in st.unrouted()] == [5, 7]
    st.apply(x(3, 5, "new", 0, 1))
    assert st.routed_upto == 6 and [o.order_no for o in st.unrouted()] == [7]
    assert st.accept(6, "c1", "c1-6", "AAPL", "BUY", 1, 1.0) is None  # it has an exec: not accepted again


def test_forget_takes_an_unjournaled_order_back() -> None:
    st = ExecState()
    accepted(st, 1, 10)
    accepted(st, 2, 4)
    st.forget(2)
    assert st.open_qty("c1", "AAPL", "BUY") == 10 and [o.order_no for o in st.unrouted()] == [1]
    assert [o.order_id for o in st.open_orders("c1")] == ["c1-1"]
    st.forget(1)
    assert not st.open and not st.by_no and st.open_qty("c1", "AAPL", "BUY") == 0


def test_build_from_a_journal_and_execs_skips_the_orders_before_the_venue() -> None:
    entries: list[dict[str, Any]] = [
        {"order_no": n, "order_id": f"c1-{n}", "client_id": "c1", "symbol": "AAPL", "side": "BUY", "qty": 10,
         "price": 100.0, "ts_ns": 1, "tick_ts_ns": 1, "recv_ns": 1} for n in (1, 2, 3, 4)]
    entries[3] |= {"price": None, "ord_type": "market", "tif": "ioc"}
    st = build(entries, [x(1, 3, "new", 0, 10), x(2, 3, "filled", 10, 0, 10, 99.0)], routed_upto=2)
    assert st.nonzero_positions("c1") == {"AAPL": 10}
    [o] = st.open_orders("c1")  # 1 and 2 are history; 3 filled; 4 accepted, never routed
    assert (o.order_id, o.price, o.leaves_qty) == ("c1-4", None, 10)
    [u] = st.unrouted()
    assert (u.order_no, u.ord_type, u.tif) == (4, "market", "ioc")


def test_an_exec_line_is_the_exec_frame_body_plus_ours() -> None:
    """The journal's line decodes as the wire's exec (the extra fields are ignored), so it is
    forwarded as it is; ``order_qty``/``order_price`` are written only when given."""
    line = msgspec.json.encode(x(7, 3, "new", 0, 10, order_qty=10, order_price=None))
    wire = msgspec.json.decode(line, type=Exec)
    assert (wire.exec_id, wire.status, wire.client_id, wire.order_no, wire.last_px) == (7, "new", "c1", 3, None)
    obj = msgspec.json.decode(line)
    assert obj["type"] == "exec" and obj["recv_ns"] == 2007 and obj["order_qty"] == 10
    assert "order_price" not in obj
    assert "order_qty" not in msgspec.json.decode(msgspec.json.encode(x(8, 3, "new", 0, 1)))
    assert decode_line(line) == x(7, 3, "new", 0, 10, order_qty=10)


@pytest.mark.parametrize("bad", [b"{}", b'{"type":"exec"}', b"[1]", b"not json", b'{"type":"order","order_id":"a"}'])
def test_a_line_that_is_not_an_exec_is_refused(bad: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_line(bad)
