"""The bench's small parts (issue 17): the byte scan of the order-entry client,
py-spy's stacks tallied, the fan-out floor and the outside client on bare
loopback processes. No timings are judged: speed is the full bench's."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shared.ops.bench import fanout, omprofile, workfloor
from shared.ops.bench.orderentry import ACK, REJECT, _Scan, bare_outside, orders
from shared.protocol import Ack, Reject, frame

STREAM = b"".join([frame(Ack(order_id=f"c-{i}", order_no=i, duplicate=False)) for i in range(1, 6)]
                  + [frame(Reject(order_id="c-9", reason="risk", detail="qty")), frame(Ack(order_id="c-7", order_no=7,
                                                                                          duplicate=True))])


@pytest.mark.parametrize("cut", range(0, len(STREAM) + 1, 3))
def test_scan_counts_tags_cut_anywhere(cut: int) -> None:
    acks, rejects = _Scan(ACK), _Scan(REJECT)
    for part in (STREAM[:cut], STREAM[cut:]):
        acks.feed(part)
        rejects.feed(part)
    assert (acks.count, rejects.count) == (6, 1)


def test_scan_byte_by_byte() -> None:
    scan = _Scan(ACK)
    for i in range(len(STREAM)):
        scan.feed(STREAM[i : i + 1])
    assert scan.count == 6


def test_orders_are_distinct_frames() -> None:
    data = orders("c", "AAPL", 3)
    assert data.count(b'"type":"order"') == 3 and b'"order_id":"c-3"' in data and b'"order_id":"c-4"' not in data


@pytest.mark.parametrize(("frame_text", "name"), [
    ("OrderManager._commit (shared/ordermanager.py:236)", "ordermanager.py:OrderManager._commit"),
    ("<module> (ordermanager.py:13)", "ordermanager.py:<module>"),
    ("select (/usr/lib/python3.11/selectors.py)", "selectors.py:select"),
    ("weird frame", "weird frame"),
])
def test_frame_name_folds_lines(frame_text: str, name: str) -> None:
    assert omprofile.frame_name(frame_text) == name


def test_tally_own_and_inclusive() -> None:
    raw = "\n".join([
        "main (a.py:1);step (a.py:5);_commit (b.py:10) 6",
        "main (a.py:1);step (a.py:5);_commit (b.py:11);hot (logs.py:3) 3",
        "main (a.py:1);step (a.py:6) 1",
        "garbage",
    ])
    own, incl, total = omprofile.tally(raw)
    assert total == 10
    assert own["b.py:_commit"] == 6 and own["logs.py:hot"] == 3 and own["a.py:step"] == 1
    assert incl["b.py:_commit"] == 9 and incl["a.py:main"] == 10
    text = omprofile.render(own, incl, total, us_per_order=10.0, top=2)
    assert "| `b.py:_commit` | 60.0 | 6.00 |" in text and "| `a.py:main` | 100.0 | 10.00 |" in text


@pytest.mark.parametrize("n", [1, 3])
def test_fanout_floor_every_order(n: int) -> None:
    """Each news tick reaches the sink once through every relay."""
    lat = fanout.fanout(n, rate=200, count=20)
    assert len(lat) == 20 * n and all(x > 0 for x in lat)


def test_outside_client_on_bare_acks() -> None:
    r = bare_outside(conns=2, n=500)
    assert (r["acked"], r["rejected"], r["complete"]) == (1000, 0, True) and r["rate"] > 0


def test_work_floor_runs_every_stage() -> None:
    """The work floor (a CLI of its own: it configures the process's logging) prints each stage's CPU per
    order and the ceiling; every order was matched (an order's new, and a fill or a rest)."""
    out = subprocess.run([sys.executable, "-m", "shared.ops.bench.workfloor", "--orders", "300"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    for stage in workfloor.STAGES:
        assert re.search(rf"^\| {re.escape(stage)} \| \d+\.\d \|$", out, re.M), out
    assert re.search(r"^\| all \([12]\.\d\d execs per order\) \| \d+\.\d \|$", out, re.M), out
    assert re.search(r"^Ceiling on \d+ cores, with no I/O and no loop: [\d,]+ orders/s .*; the ordermanager alone, "
                     r"one process: [\d,]+ orders/s\.$", out, re.M), out
