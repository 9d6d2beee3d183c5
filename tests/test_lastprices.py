"""The market does not jump when the gateway restarts (issue 15 item 9): the
last-prices file (shared/lastprices.py) byte by byte, then kill -9 of the
gateway under the real supervisord, mid-walk, seen by a subscriber."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from shared import lastprices
from shared.gateway import RandomWalk
from shared.ops.chaos import faults
from shared.ops.harness import Stack
from shared.ops.peer import Peer
from shared.protocol import Hello, Price

SYMBOLS = ("AAPL", "MSFT", "GOOGL")


def test_saved_prices_read_back(tmp_path: Path) -> None:
    path = tmp_path / "gw.state"
    w = lastprices.LastPrices(path, SYMBOLS, [100, 200, 300])
    assert lastprices.read(path) == {"AAPL": 100, "MSFT": 200, "GOOGL": 300}
    for i in range(5):  # both slots in turn
        w.save([101 + i, 201, 301])
        assert lastprices.read(path)["AAPL"] == 101 + i
    w.close()
    assert lastprices.read(path)["AAPL"] == 105


def test_a_torn_slot_leaves_the_other(tmp_path: Path) -> None:
    """A writer killed mid-save: the slot it was writing fails its CRC; the older one is read."""
    path = tmp_path / "gw.state"
    w = lastprices.LastPrices(path, SYMBOLS, [100, 200, 300])  # generation 1
    w.save([111, 222, 333])  # generation 2, the other slot
    w.close()
    raw = bytearray(path.read_bytes())
    base, size = lastprices._layout(3)
    raw[base + 0 * size + 8] ^= 0xFF  # generation 2 lives in slot 0: its first price torn
    path.write_bytes(bytes(raw))
    assert lastprices.read(path) == {"AAPL": 100, "MSFT": 200, "GOOGL": 300}
    raw[base + 1 * size + 8] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(lastprices.LastPricesError, match="no whole slot"):
        lastprices.read(path)


@pytest.mark.parametrize("content, why", [(None, "no such file"), (b"hello", "not a last-prices file"),
                                          (lastprices.MAGIC + b"\2\0\0\0" + bytes(60), "version 2"),
                                          (lastprices.MAGIC + b"\1\0\0\0\3\0\0\0" + bytes(52), "cut short")])
def test_no_prices_to_trust(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "gw.state"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(lastprices.LastPricesError, match=why):
        lastprices.read(path)


def test_the_walk_starts_from_saved_prices_and_draws_the_rest() -> None:
    import random

    fresh = RandomWalk(SYMBOLS, random.Random(7))
    resumed = RandomWalk(SYMBOLS, random.Random(7), {"MSFT": 12345, "TSLA": 1})
    assert resumed.cents == [fresh.cents[0], 12345, fresh.cents[2]]  # the seed's other draws unchanged


def _last_prices(sub: Peer, seconds: float) -> dict[str, float]:
    """Every price frame for ``seconds`` (or until the gateway goes): the last per symbol."""
    last: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            m = sub.recv(timeout=max(0.01, deadline - time.monotonic()))
        except (TimeoutError, EOFError, ConnectionError):
            if deadline - time.monotonic() <= 0:
                break
            return last  # the gateway died: everything it sent has been read
        if isinstance(m, Price):
            last[m.symbol] = m.price
    return last


def _subscribe(stack: Stack, timeout: float = 20.0) -> Peer:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sub = Peer("127.0.0.1", stack.cfg.gateway.price_port)
            assert isinstance(sub.recv_type(Hello), Hello)
            return sub
        except (OSError, EOFError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.faults
def test_kill9_of_the_gateway_mid_walk_continues_the_prices(tmp_path: Path) -> None:
    """A subscriber reads every price the gateway sent until its kill -9; the restarted
    gateway's walk starts there (its ``walk_resumed`` prices: the next tick moves one of
    them a cent), and a new subscriber sees prices a few steps from there, not a new market."""
    with Stack(tmp_path, {"gateway": {"price_rate": 300}}) as stack:
        for round_ in range(1, 3):
            sub = _subscribe(stack)
            seen = _last_prices(sub, 0.5)  # mid-walk
            pid = faults.kill(stack, "gateway", signal.SIGKILL)
            seen.update(_last_prices(sub, 5.0))  # the rest of what it sent before it died
            sub.close()
            faults.wait_dead(pid)
            assert set(seen) == set(SYMBOLS), seen
            resumed = stack.wait_for(lambda n=round_: stack.events("gateway", "walk_resumed")[n - 1:], timeout=30)
            start = resumed[0]["prices"]
            jumps = {s: round(abs(start[s] - seen[s]), 2) for s in SYMBOLS}
            # exact, unless the kill fell between the write of a batch's prices and its send (microseconds)
            assert all(j <= 0.01 for j in jumps.values()), (round_, seen, start)
            sub = _subscribe(stack)
            later = _last_prices(sub, 0.3)
            sub.close()
            drift = {s: round(abs(later[s] - seen[s]), 2) for s in later}
            assert all(d <= 1.0 for d in drift.values()), (round_, seen, later)  # a fresh walk is $50..$300
