"""The venue's matching engine (contract §9 rules 1-3): hand-worked tables, then properties on random inputs.

With spread_bps 2 a tick at 100.0 quotes bid 99.99 / ask 100.01, 100 shares each (the default depth).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.matching import SIDES, VENUE, Engine, Exec
from shared.ops.bench import engine as enginebench

Step = tuple[Any, ...]


def O(  # noqa: E743 (O, T, C: one-letter names keep the tables readable)
        client: str, oid: str, side: str, qty: int, price: float | None, ord_type: str = "limit", tif: str = "day",
        sym: str = "X") -> Step:
    """An order step; the runner numbers orders 1, 2, ... as the ordermanager would."""
    return ("o", client, oid, sym, side, qty, price, ord_type, tif)


def T(price: float, sym: str = "X") -> Step:
    return ("t", sym, price)


def C(client: str, oid: str) -> Step:
    return ("c", client, oid)


def run(engine: Engine, steps: list[Step]) -> list[Exec | Step]:
    """Feed the steps in order (ts_ns = step number); a cancel answered None shows as ("unknown", client, oid)."""
    out: list[Exec | Step] = []
    order_no = 0
    for ts, s in enumerate(steps, 1):
        if s[0] == "o":
            order_no += 1
            out += engine.order(order_no, *s[1:], ts_ns=ts)
        elif s[0] == "t":
            out += engine.tick(s[1], s[2], ts_ns=ts)
        else:
            res = engine.cancel(s[1], s[2], ts_ns=ts)
            out += [("unknown", s[1], s[2])] if res is None else res
    return out


def show(x: Exec | Step) -> str:
    """One exec as a line of the tables: "b1 partially_filled 10@101.0 vs a cum 10 left 5"."""
    if not isinstance(x, Exec):
        return " ".join(x)
    fill = f" {x.last_qty}@{x.last_px} vs {x.contra}" if x.last_qty else ""
    return f"{x.order_id} {x.status}{fill} cum {x.cum_qty} left {x.leaves_qty}"


CASES: dict[str, tuple[list[Step], list[str], dict[str, int]]] = {
    # name: (steps, execs shown, {order_id: leaves} of the open orders after)
    "crossing client orders trade at the resting price, both sides get execs": (
        [O("a", "a1", "SELL", 10, 101.0), O("b", "b1", "BUY", 15, 102.0)],
        ["a1 new cum 0 left 10", "b1 new cum 0 left 15",
         "b1 partially_filled 10@101.0 vs a cum 10 left 5", "a1 filled 10@101.0 vs b cum 10 left 0"],
        {"b1": 5}),
    "best price first, time priority at one price": (
        [O("a", "a1", "SELL", 5, 101.0), O("c", "c1", "SELL", 5, 100.5), O("d", "d1", "SELL", 5, 100.5),
         O("b", "b1", "BUY", 12, 101.0)],
        ["a1 new cum 0 left 5", "c1 new cum 0 left 5", "d1 new cum 0 left 5", "b1 new cum 0 left 12",
         "b1 partially_filled 5@100.5 vs c cum 5 left 7", "c1 filled 5@100.5 vs b cum 5 left 0",
         "b1 partially_filled 5@100.5 vs d cum 10 left 2", "d1 filled 5@100.5 vs b cum 5 left 0",
         "b1 filled 2@101.0 vs a cum 12 left 0", "a1 partially_filled 2@101.0 vs b cum 2 left 3"],
        {"a1": 3}),
    "a limit order never trades past its price": (
        [O("a", "a1", "SELL", 5, 101.0), O("b", "b1", "BUY", 5, 100.9)],
        ["a1 new cum 0 left 5", "b1 new cum 0 left 5"],
        {"a1": 5, "b1": 5}),
    "partial fills across ticks, at the resting order's own price": (
        [T(100.0), O("a", "a1", "BUY", 150, 100.0), T(99.98), T(99.98)],  # ask 99.989998
        ["a1 new cum 0 left 150", "a1 partially_filled 100@100.0 vs venue cum 100 left 50",
         "a1 filled 50@100.0 vs venue cum 150 left 0"],
        {}),
    "a tick's depth goes to resting orders best price first, then in time order": (
        [O("a", "a1", "BUY", 80, 100.0), O("b", "b1", "BUY", 80, 100.0), O("c", "c1", "BUY", 30, 100.5),
         T(99.9), T(99.9)],
        ["a1 new cum 0 left 80", "b1 new cum 0 left 80", "c1 new cum 0 left 30",
         "c1 filled 30@100.5 vs venue cum 30 left 0", "a1 partially_filled 70@100.0 vs venue cum 70 left 10",
         "a1 filled 10@100.0 vs venue cum 80 left 0", "b1 filled 80@100.0 vs venue cum 80 left 0"],
        {}),
    "a resting buy at exactly the new ask trades; one a cent below does not": (
        [O("a", "a1", "BUY", 10, 100.01), O("b", "b1", "BUY", 10, 100.0), T(100.0)],
        ["a1 new cum 0 left 10", "b1 new cum 0 left 10", "a1 filled 10@100.01 vs venue cum 10 left 0"],
        {"b1": 10}),
    "a resting sell trades when a tick's bid reaches it": (
        [O("a", "a1", "SELL", 10, 100.0), T(100.0), T(100.05)],  # bids 99.99, then 100.039995
        ["a1 new cum 0 left 10", "a1 filled 10@100.0 vs venue cum 10 left 0"],
        {}),
    "an ioc order expires what the quote's depth leaves": (
        [T(100.0), O("a", "a1", "BUY", 150, 100.02, tif="ioc")],
        ["a1 new cum 0 left 150", "a1 partially_filled 100@100.01 vs venue cum 100 left 50",
         "a1 expired cum 100 left 0"],
        {}),
    "an ioc order that does not cross expires at once": (
        [T(100.0), O("a", "a1", "SELL", 10, 100.0, tif="ioc")],
        ["a1 new cum 0 left 10", "a1 expired cum 0 left 0"],
        {}),
    "incoming orders use the quote's depth up until the next tick": (
        [T(100.0), O("a", "a1", "BUY", 60, None, "market"), O("b", "b1", "BUY", 60, None, "market"), T(100.0),
         O("c", "c1", "BUY", 60, None, "market")],
        ["a1 new cum 0 left 60", "a1 filled 60@100.01 vs venue cum 60 left 0",
         "b1 new cum 0 left 60", "b1 partially_filled 40@100.01 vs venue cum 40 left 20", "b1 expired cum 40 left 0",
         "c1 new cum 0 left 60", "c1 filled 60@100.01 vs venue cum 60 left 0"],
        {}),
    "a market order before the symbol's first tick just expires": (
        [O("a", "a1", "SELL", 5, 100.0), O("b", "b1", "BUY", 10, None, "market")],
        ["a1 new cum 0 left 5", "b1 new cum 0 left 10", "b1 expired cum 0 left 0"],
        {"a1": 5}),
    "a market order's price is a protection limit": (
        [T(100.0), O("a", "a1", "BUY", 10, 100.0, "market"), O("b", "b1", "BUY", 10, 100.01, "market")],
        ["a1 new cum 0 left 10", "a1 expired cum 0 left 0",
         "b1 new cum 0 left 10", "b1 filled 10@100.01 vs venue cum 10 left 0"],
        {}),
    "a market order takes a client order before the quote at an equal price, then the next price": (
        [T(100.0), O("a", "a1", "SELL", 10, 100.01), O("c", "c1", "SELL", 10, 100.5),
         O("b", "b1", "BUY", 130, None, "market", "day")],  # a market order is ioc whatever its tif
        ["a1 new cum 0 left 10", "c1 new cum 0 left 10", "b1 new cum 0 left 130",
         "b1 partially_filled 10@100.01 vs a cum 10 left 120", "a1 filled 10@100.01 vs b cum 10 left 0",
         "b1 partially_filled 100@100.01 vs venue cum 110 left 20",
         "b1 partially_filled 10@100.5 vs c cum 120 left 10", "c1 filled 10@100.5 vs b cum 10 left 0",
         "b1 expired cum 120 left 0"],
        {}),
    "a sell takes a better client bid, then the quote's bid, rests the rest, and the next tick fills it": (
        [T(100.0), O("a", "a1", "BUY", 10, 100.0), O("b", "b1", "SELL", 120, 99.0), T(100.0)],
        ["a1 new cum 0 left 10", "b1 new cum 0 left 120",
         "b1 partially_filled 10@100.0 vs a cum 10 left 110", "a1 filled 10@100.0 vs b cum 10 left 0",
         "b1 partially_filled 100@99.99 vs venue cum 110 left 10", "b1 filled 10@99.0 vs venue cum 120 left 0"],
        {}),
    "a cancel after a partial fill keeps cum_qty; a second cancel is unknown": (
        [O("a", "a1", "BUY", 150, 100.0), T(99.98), C("a", "a1"), C("a", "a1")],
        ["a1 new cum 0 left 150", "a1 partially_filled 100@100.0 vs venue cum 100 left 50",
         "a1 canceled cum 100 left 0", "unknown a a1"],
        {}),
    "a canceled order no longer trades": (
        [O("a", "a1", "BUY", 10, 100.0), C("a", "a1"), T(99.0)],
        ["a1 new cum 0 left 10", "a1 canceled cum 0 left 0"],
        {}),
    "a cancel of a filled order is unknown": (
        [O("a", "a1", "SELL", 10, 100.0), T(100.05), C("a", "a1")],
        ["a1 new cum 0 left 10", "a1 filled 10@100.0 vs venue cum 10 left 0", "unknown a a1"],
        {}),
    "a cancel of an expired order is unknown": (
        [T(100.0), O("a", "a1", "BUY", 10, 99.0, tif="ioc"), C("a", "a1")],
        ["a1 new cum 0 left 10", "a1 expired cum 0 left 0", "unknown a a1"],
        {}),
    "a cancel of another client's order is unknown, and the order rests on": (
        [O("a", "x1", "BUY", 10, 99.0), C("b", "x1"), C("b", "never")],
        ["x1 new cum 0 left 10", "unknown b x1", "unknown b never"],
        {"x1": 10}),
    "an order routed again is ignored, resting or ended; another client's same order_id is its own": (
        [O("a", "a1", "BUY", 10, 99.0), O("a", "a1", "BUY", 10, 99.0), O("b", "a1", "BUY", 5, 99.0),
         C("a", "a1"), O("a", "a1", "BUY", 10, 99.0)],
        ["a1 new cum 0 left 10", "a1 new cum 0 left 5", "a1 canceled cum 0 left 0"],
        {"a1": 5}),
}


@pytest.mark.parametrize("name", CASES)
def test_table(name: str) -> None:
    steps, want, want_open = CASES[name]
    engine = Engine()
    assert [show(x) for x in run(engine, steps)] == want
    assert {r.order_id: r.leaves_qty for r in engine.open_orders()} == want_open


def test_exec_fields_avg_px_ts_and_ids() -> None:
    engine = Engine(next_exec_id=41)
    out = run(engine, CASES["best price first, time priority at one price"][0])
    execs = [x for x in out if isinstance(x, Exec)]
    assert [x.exec_id for x in execs] == list(range(41, 51)) and engine.next_exec_id == 51
    b1 = [x for x in execs if x.order_id == "b1"]
    assert b1[-1].avg_px == pytest.approx((10 * 100.5 + 2 * 101.0) / 12)
    assert b1[0].avg_px is None and b1[0].last_px is None and b1[0].contra == ""
    assert {(x.client_id, x.symbol, x.side, x.order_no) for x in b1} == {("b", "X", "BUY", 4)}
    assert [x.ts_ns for x in b1] == [4, 4, 4, 4]  # the ts_ns of the input that caused them
    canceled = run(Engine(), [O("a", "a1", "BUY", 150, 100.0), T(99.98), C("a", "a1")])[-1]
    assert isinstance(canceled, Exec) and canceled.avg_px == 100.0 and canceled.ts_ns == 3


def test_quote_is_rounded_and_renewed() -> None:
    engine = Engine(spread_bps=2.0, depth=7)
    assert engine.quote("AAPL") is None
    engine.tick("AAPL", 173.2)
    assert engine.quote("AAPL") == (173.18268, 7, 173.21732, 7)  # 173.2 x (1 -+ 0.0001), rounded to 6 places
    engine.order(1, "a", "a1", "AAPL", "BUY", 5, None, "market")
    assert engine.quote("AAPL") == (173.18268, 7, 173.21732, 2)
    engine.tick("AAPL", 173.2)
    assert engine.quote("AAPL") == (173.18268, 7, 173.21732, 7)
    flat = Engine(spread_bps=0.0)
    flat.tick("X", 50)
    assert flat.quote("X") == (50.0, 100, 50.0, 100)


def test_open_orders_by_order_no_and_by_client() -> None:
    engine = Engine()
    engine.order(7, "b", "b1", "Y", "SELL", 4, 101.0)
    engine.order(3, "a", "a1", "X", "BUY", 9, 99.0)
    engine.order(5, "a", "a2", "X", "SELL", 2, 102.0)
    assert [r.order_no for r in engine.open_orders()] == [3, 5, 7]
    assert [r.order_id for r in engine.open_orders("a")] == ["a1", "a2"]
    (r,) = engine.open_orders("b")
    assert (r.symbol, r.side, r.qty, r.price, r.cum_qty, r.leaves_qty) == ("Y", "SELL", 4, 101.0, 0, 4)


def test_many_cancels_behind_an_old_order_at_one_price() -> None:
    """Canceled entries are dropped lazily; the level keeps its time order through the compaction."""
    engine = Engine()
    engine.order(1, "a", "head", "X", "BUY", 1, 100.0)
    for i in range(2, 200):
        engine.order(i, "a", f"o{i}", "X", "BUY", 1, 100.0)
    for i in range(2, 198):
        assert engine.cancel("a", f"o{i}") is not None
    execs = engine.tick("X", 99.0)
    assert [(x.order_id, x.status) for x in execs] == [("head", "filled"), ("o198", "filled"), ("o199", "filled")]
    assert engine.open_orders() == []


BAD_ORDERS = {
    "side": {"side": "buy"}, "ord_type": {"ord_type": "stop"}, "tif": {"tif": "gtc"},
    "limit without price": {"price": None}, "qty 0": {"qty": 0}, "qty < 0": {"qty": -5}, "qty float": {"qty": 1.5},
    "qty bool": {"qty": True}, "price 0": {"price": 0.0}, "price < 0": {"price": -1.0},
    "price nan": {"price": math.nan}, "price inf": {"price": math.inf}, "price str": {"price": "100"},
}


@pytest.mark.parametrize("bad", BAD_ORDERS)
def test_bad_order_raises_and_is_not_remembered(bad: str) -> None:
    engine = Engine()
    good: dict[str, Any] = dict(order_no=1, client_id="a", order_id="a1", symbol="X", side="BUY", qty=10, price=99.0)
    with pytest.raises(ValueError):
        engine.order(**{**good, **BAD_ORDERS[bad]})
    assert engine.next_exec_id == 1
    assert [x.status for x in engine.order(**good)] == ["new"]  # the same order_id, good this time


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf])
def test_bad_tick_raises(price: float) -> None:
    with pytest.raises(ValueError):
        Engine().tick("X", price)


def test_enginebench_runs_small() -> None:
    r = enginebench.run(n_events=2000, resting=50, symbols=2)
    assert r["events"] == 2000 and r["events_per_s"] > 0 and 0 < r["p50_us"] <= r["p99_us"] and r["execs"] > 0
    assert 0 < r["resting_end"] < 200  # the bench keeps the book near its size


# Properties, on random sequences of orders, cancels and ticks over two symbols and three clients.

CLIENTS = ("a", "b", "c")
GRID = sorted((c / 100 for c in range(9990, 10011)), key=lambda p: abs(p - 100))  # ticks and orders meet; 100.0 first
SPREADS = st.sampled_from([2.0, 0.0])  # at 0 the quote sits on the grid: equal prices, ties to break
FIELDS: tuple[Sequence[Any], ...] = (  # of one step; each field's first choice is its simplest, where shrinking goes
    "ooootc",  # mostly orders (o), some ticks (t) and cancels (c)
    [(c, str(i)) for c in CLIENTS for i in range(9)],  # few order ids: cancels and re-routes hit
    [(sym, side) for sym in ("X", "Y") for side in SIDES],
    range(1, 61),  # qty
    [*GRID, None],  # an order's price (None: a market order without protection) or a tick's
    [("limit", "day")] * 4 + [("limit", "ioc"), ("market", "ioc"), ("market", "day")],  # mostly resting limits
)


def step(row: bytes) -> Step:
    """One drawn row, a byte per field of FIELDS, as an order, a tick or a cancel. Drawing bytes, not one
    value per field, makes hypothesis (the main cost here) several times faster, and they come out uniform."""
    kind, who, (sym, side), qty, price, (ord_type, tif) = (f[b % len(f)] for f, b in zip(FIELDS, row, strict=True))
    if kind == "t":
        return ("t", sym, price or 100.0)
    if kind == "c":
        return ("c", *who)
    return ("o", *who, sym, side, qty, price, "market" if price is None else ord_type, tif)


STEPS = st.lists(st.binary(min_size=len(FIELDS), max_size=len(FIELDS)).map(step), min_size=20, max_size=80)
PROPERTY = settings(max_examples=200, deadline=None)


def fresh(spread_bps: float) -> Engine:
    return Engine(spread_bps=spread_bps, depth=50)  # a small depth, so partial fills are common


def check_lifecycle(steps: list[Step], execs: list[Exec], engine: Engine) -> None:
    """Each order: one ``new`` first, fills within its price and qty, at most one terminal, last; ids by 1."""
    assert [x.exec_id for x in execs] == list(range(1, len(execs) + 1)) and engine.next_exec_id == len(execs) + 1
    orders: dict[tuple[str, str], Step] = {}
    for s in steps:
        if s[0] == "o":
            orders.setdefault((s[1], s[2]), s)
    by_order: dict[tuple[str, str], list[Exec]] = defaultdict(list)
    for x in execs:
        by_order[x.client_id, x.order_id].append(x)
    assert set(by_order) == set(orders)  # every order accepted once, re-routed ones not again
    open_left = {(r.client_id, r.order_id): r.leaves_qty for r in engine.open_orders()}
    for key, xs in by_order.items():
        side, qty, price = orders[key][4:7]
        assert xs[0].status == "new" and xs[0].cum_qty == 0 and xs[0].leaves_qty == qty
        terminal = [i for i, x in enumerate(xs) if x.status in ("filled", "canceled", "expired")]
        assert terminal in ([], [len(xs) - 1])
        assert (not terminal) == (key in open_left)
        cum = 0
        for x in xs[1:]:
            assert x.status != "new"
            cum += x.last_qty
            assert x.cum_qty == cum <= qty
            assert x.leaves_qty == (0 if x.status in ("canceled", "expired") else qty - cum)
            assert (x.last_qty > 0) == (x.status in ("partially_filled", "filled")) == (x.last_px is not None)
            if x.last_px is not None and price is not None:
                assert x.last_px <= price if side == "BUY" else x.last_px >= price
        if not terminal:
            assert open_left[key] == qty - cum


def check_netting(execs: list[Exec]) -> None:
    """The clients' net fills equal what the venue's quote sold them: client-against-client fills cancel out."""
    fills = [x for x in execs if x.last_qty]
    net = sum(x.last_qty if x.side == "BUY" else -x.last_qty for x in fills)
    venue_sold = sum(x.last_qty if x.side == "BUY" else -x.last_qty for x in fills if x.contra == VENUE)
    assert net == venue_sold
    pairs = [x for x in fills if x.contra != VENUE]
    assert len(pairs) % 2 == 0 and all(x.contra in CLIENTS for x in pairs)


class Reference:
    """The rules written the slow, obvious way: every resting order in one list, the best found by min()."""

    def __init__(self, spread_bps: float, depth: int) -> None:
        self.spread_bps, self.depth = spread_bps, depth
        self.resting: list[dict[str, Any]] = []  # in arrival order, so min() breaks price ties by time
        self.quotes: dict[str, list[Any]] = {}  # symbol -> [bid, bid_left, ask, ask_left]
        self.seen: set[tuple[str, str]] = set()
        self.out: list[tuple[Any, ...]] = []

    def ex(self, o: dict[str, Any], status: str, q: int = 0, px: float | None = None, contra: str = "") -> None:
        if q:
            o["cum"] += q
            o["notional"] += q * px  # type: ignore[operator]
            status = "filled" if o["cum"] == o["qty"] else "partially_filled"
        left = 0 if status in ("canceled", "expired") else o["qty"] - o["cum"]
        avg = o["notional"] / o["cum"] if o["cum"] else None
        self.out.append((o["client"], o["oid"], status, q, px, o["cum"], left, avg, contra))
        if status == "filled":
            self.resting = [r for r in self.resting if r is not o]

    def order(self, client: str, oid: str, sym: str, side: str, qty: int, price: float | None,
              ord_type: str, tif: str) -> None:
        if (client, oid) in self.seen:
            return
        self.seen.add((client, oid))
        o = dict(client=client, oid=oid, sym=sym, side=side, qty=qty, price=price, cum=0, notional=0.0)
        self.ex(o, "new")
        buy, quote = side == "BUY", self.quotes.get(sym)
        while o["cum"] < qty and not (ord_type == "market" and quote is None):
            cands = [(r["price"], 0, r) for r in self.resting if r["sym"] == sym and r["side"] != side]
            if quote and quote[3 if buy else 1]:
                cands.append((quote[2 if buy else 0], 1, None))
            cands = [c for c in cands if price is None or (c[0] <= price if buy else c[0] >= price)]
            if not cands:
                break
            px, _, r = min(cands, key=lambda c: (c[0] if buy else -c[0], c[1]))
            if r is None:
                assert quote is not None
                q = min(qty - o["cum"], quote[3 if buy else 1])
                quote[3 if buy else 1] -= q
                self.ex(o, "", q, px, VENUE)
            else:
                q = min(qty - o["cum"], r["qty"] - r["cum"])
                self.ex(o, "", q, px, r["client"])
                self.ex(r, "", q, px, client)
        if o["cum"] < qty:
            if ord_type == "market" or tif == "ioc":
                self.ex(o, "expired")
            else:
                self.resting.append(o)

    def cancel(self, client: str, oid: str) -> None:
        for r in self.resting:
            if (r["client"], r["oid"]) == (client, oid):
                self.resting = [x for x in self.resting if x is not r]
                self.ex(r, "canceled")
                return

    def tick(self, sym: str, p: float) -> None:
        half = self.spread_bps / 1e4 / 2
        bid, ask = round(p * (1 - half), 6), round(p * (1 + half), 6)
        quote = self.quotes[sym] = [bid, self.depth, ask, self.depth]
        for side, i in (("BUY", 3), ("SELL", 1)):
            while quote[i]:
                cands = [r for r in self.resting if r["sym"] == sym and r["side"] == side
                         and (r["price"] >= ask if side == "BUY" else r["price"] <= bid)]
                if not cands:
                    break
                r = min(cands, key=lambda r: -r["price"] if side == "BUY" else r["price"])
                q = min(r["qty"] - r["cum"], quote[i])
                quote[i] -= q
                self.ex(r, "", q, r["price"], VENUE)


    def run(self, steps: list[Step]) -> list[tuple[Any, ...]]:
        for s in steps:
            {"o": self.order, "t": self.tick, "c": self.cancel}[s[0]](*s[1:])
        return self.out


@PROPERTY
@given(STEPS, SPREADS)
def test_random_inputs(steps: list[Step], spread_bps: float) -> None:
    """Every property on one draw (drawing the inputs costs hypothesis far more than the engine's work)."""
    engine = fresh(spread_bps)
    out = run(engine, steps)
    execs = [x for x in out if isinstance(x, Exec)]
    check_lifecycle(steps, execs, engine)
    check_netting(execs)
    again = run(fresh(spread_bps), steps)  # replay: a fresh engine, the same inputs, the same execs to the byte
    assert again == out and msgspec.json.encode(again) == msgspec.json.encode(out)
    assert [(x.client_id, x.order_id, x.status, x.last_qty, x.last_px, x.cum_qty, x.leaves_qty, x.avg_px, x.contra)
            for x in execs] == Reference(spread_bps, 50).run(steps)
