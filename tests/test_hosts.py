"""The stack across hosts (issue 11): four simulated hosts (market, two traders,
orders), each in its own network and mount namespaces with sshd, deployed by
the Ansible playbook over ssh; order entry over TLS and market data behind a
token, across veth links. Partitions are links set down; a lost host is every
process killed and every link down, brought back by the playbook. The fault
suite's invariants are checked per host after each scenario.

One cluster for the module, the scenarios in file order, each starting from a
healthy fleet and leaving one.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.ops import hostbench
from shared.ops.hosts import Cluster, Host, fleet_problems, netns_pids, wheelhouse

pytestmark = pytest.mark.timeout(600)  # the first test's share includes deploying the fleet

LAYOUT = {"md1": ("market",), "trader1": ("trader",), "trader2": ("trader",), "om1": ("orders",)}
QTY = 10
HB_TIMEOUT_S = 0.75  # 3 x heartbeat_ms (250) on both links


def ts(record: dict[str, Any]) -> float:
    """A log record's time, in seconds since the epoch."""
    return dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def orders_from(c: Cluster, client: str, after: float = 0.0) -> list[dict[str, Any]]:
    return [e for e in c["om1"].journal() if e["client_id"] == client and e["recv_ns"] / 1e9 > after]


def events_since(h: Host, program: str, event: str, t: float, **match: Any) -> list[dict[str, Any]]:
    return [r for r in h.events(program, event) if ts(r) >= t and all(r.get(k) == v for k, v in match.items())]


def check(c: Cluster) -> None:
    """Every host runs exactly its programs; the invariants hold."""
    for h in c.hosts.values():
        assert all(v == "RUNNING" for v in h.status().values()), (h.name, h.status())
    problems = fleet_problems(c["om1"], [c["trader1"], c["trader2"]], QTY)
    assert not problems, "\n".join(problems)


def trading(c: Cluster, client: str, after: float, timeout: float = 60) -> float:
    """Wait for a new order of ``client`` journaled after ``after``; when it was received."""
    c.wait_for(lambda: orders_from(c, client, after), timeout, f"{client} trading after {after}")
    return orders_from(c, client, after)[0]["recv_ns"] / 1e9


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    d = tmp_path_factory.mktemp("fleet")
    c = Cluster(d, LAYOUT)
    try:
        c.start()
        wheelhouse(d / "wheels")
        c.inventory(tradestack_wheels=d / "wheels", tradestack_news_rate=20, tradestack_price_rate=200,
                    tradestack_strategy={"bullish": 50, "bearish": 50, "short_window": 2,
                                         "long_window": 4, "qty": QTY})
        t0 = time.monotonic()
        c.playbook()
        print(f"\nplaybook: 4 hosts deployed from scratch in {time.monotonic() - t0:.1f} s")
        for name in ("trader1", "trader2"):
            trading(c, name, 0)
        yield c
    finally:
        c.close()
    for h in c.hosts.values():
        assert not netns_pids(h.netns)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert c.prefix not in names


def test_four_hosts_trade_each_running_only_its_roles(fleet: Cluster) -> None:
    c = fleet
    watch = {"auditor", "metrics"}  # on every host
    assert set(c["md1"].status()) == {"gateway"} | watch
    assert set(c["trader1"].status()) == {"bootstrap", "orderbook", "strategy"} | watch
    assert set(c["om1"].status()) == {"ordermanager"} | watch
    # over the md and oe links, with the token and TLS the playbook set up
    subs = {r["peer"].split(":")[0] for r in c["md1"].events("gateway", "connected")}
    assert subs == {c["trader1"].addr("md"), c["trader2"].addr("md")}
    assert {r["peer_cn"] for r in c["om1"].events("ordermanager", "tls_established")} == {"trader1", "trader2"}
    assert c["om1"].events("ordermanager", "listening")[-1]["host"] == c["om1"].addr("oe")
    for t in ("trader1", "trader2"):
        assert c[t].book_age_ms() < 500 and c[t].events("strategy", "logged_on")
    assert not c["md1"].events("gateway", "subscription_refused")
    check(c)
    # each host's metrics program sees that host's supervisord and programs (stack-top's view too)
    for h in c.hosts.values():
        r = h.run(sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                  "'http://127.0.0.1:9108/metrics', timeout=20).read().decode())", timeout=60, mounts=False)
        up = {line.split('"')[1] for line in r.stdout.splitlines()
              if line.startswith("tradestack_program_up{") and line.rstrip().endswith(" 1.0")}
        assert up == set(h.status()), (h.name, up)
    # stack-audit on each host reads what that host runs
    for h in c.hosts.values():
        r = subprocess.run([sys.executable, "-m", "shared.ops.audit", "--logs", str(h.project / "logs"), "--json"],
                           capture_output=True, text=True, timeout=60, check=True)
        assert set(json.loads(r.stdout)["programs"]) >= set(h.status()) - {"auditor", "metrics"}, h.name


def test_bench_hosts_measures_the_floor_and_the_stack_across_the_veths(fleet: Cluster) -> None:
    """deploy/bench --hosts, small: the bare chain over the same hops, and a window of the stack."""
    c = fleet
    lat = hostbench.floor(c, c["md1"], c["trader1"], c["om1"], rate=100, count=200)
    assert len(lat) == 200 and 0 < min(lat) and max(lat) < 5_000_000
    row = hostbench.window(c, [c["trader1"], c["trader2"]], seconds=3)
    assert row["hosts"] == 2 and row["orders"] > 0 and 0 < row["p50"] < 5_000_000
    assert 0 < row["gateway_cpu_pct"] < 200
    text = hostbench.report(lat, [row])
    assert "tick-to-trade p99" in text and "| 2 |" in text
    check(c)


def test_partition_trader_from_orders_heals_with_nothing_lost_or_doubled(fleet: Cluster) -> None:
    c = fleet
    t1, om = c["trader1"], c["om1"]
    t0 = time.time()
    t1.link("oe", False)
    cut = c.wait_for(lambda: events_since(t1, "strategy", "disconnected", t0, stream="orders"), 20,
                     "trader1 sees the cut")
    c.wait_for(lambda: events_since(om, "ordermanager", "disconnected", t0, client_id="trader1"), 20,
               "om1 sees the cut")
    time.sleep(max(0.0, t0 + 3 * HB_TIMEOUT_S - time.time()))  # well past the heartbeat timeout
    during = trading(c, "trader2", t0 + HB_TIMEOUT_S)  # the other trader goes on
    healed_at = time.time()
    t1.link("oe", True)
    logon = c.wait_for(lambda: events_since(t1, "strategy", "logged_on", healed_at), 30, "trader1 logs on again")
    first = trading(c, "trader1", healed_at)
    print(f"\npartition trader1<->om1 for {healed_at - t0:.1f} s: logged on {ts(logon[0]) - healed_at:.2f} s "
          f"and trading {first - healed_at:.2f} s after the heal")
    assert during > t0
    assert not events_since(c["trader2"], "strategy", "disconnected", t0)
    assert not events_since(om, "ordermanager", "disconnected", t0, client_id="trader2")
    assert cut[0]["reason"] == "heartbeat_timeout"
    assert not [r for r in events_since(t1, "strategy", "order_sent", ts(cut[0])) if ts(r) < ts(logon[0])]
    # every order trader1 sent is journaled once (the pending ones resent under the same ids)
    sent = {r["order_id"] for r in t1.events("strategy", "order_sent")}
    c.wait_for(lambda: sent <= {e["order_id"] for e in orders_from(c, "trader1")}, 30, "every sent order journaled")
    check(c)


def test_partition_market_from_trader_trips_its_kill_switch_then_it_resyncs(fleet: Cluster) -> None:
    c = fleet
    t2 = c["trader2"]
    t0 = time.time()
    t2.link("md", False)
    stale = c.wait_for(lambda: events_since(t2, "strategy", "book_stale", t0), 20, "trader2's kill switch")
    tripped = ts(stale[0]) - t0
    time.sleep(1.0)
    assert not [r for r in events_since(t2, "strategy", "order_sent", ts(stale[0])) if ts(r) > ts(stale[0])]
    trading(c, "trader1", ts(stale[0]))  # the other trader goes on
    healed_at = time.time()
    t2.link("md", True)
    fresh = c.wait_for(lambda: events_since(t2, "strategy", "book_fresh", healed_at), 30, "trader2's book fresh")
    first = trading(c, "trader2", healed_at)
    print(f"\npartition md1<->trader2: kill switch tripped {tripped:.2f} s after the cut; "
          f"book fresh {ts(fresh[0]) - healed_at:.2f} s and trading {first - healed_at:.2f} s after the heal")
    assert events_since(t2, "orderbook", "reconnected", healed_at, stream="price")
    assert not events_since(c["trader1"], "strategy", "book_stale", t0)
    assert not events_since(t2, "strategy", "disconnected", t0, stream="orders")  # its order link held
    check(c)


def test_trader_host_lost_then_brought_back_by_the_playbook(fleet: Cluster) -> None:
    c = fleet
    t1, om = c["trader1"], c["om1"]
    before = orders_from(c, "trader1")
    t0 = time.time()
    t1.lose()
    assert not netns_pids(t1.netns)
    c.wait_for(lambda: events_since(om, "ordermanager", "disconnected", t0, client_id="trader1"), 20,
               "om1 sees trader1 gone")
    trading(c, "trader2", t0 + HB_TIMEOUT_S)  # the other trader goes on
    back = time.time()
    t1.boot()  # power on: links up, empty /tmp and /dev/shm, sshd; nothing of ours runs
    assert t1.status() == {}
    r = c.playbook("-l", "trader1", "-e", "restart=strategy")
    assert "trader1" in r.stdout and "failed=0" in r.stdout
    assert set(t1.status()) == {"auditor", "metrics", "bootstrap", "orderbook", "strategy"}
    first = trading(c, "trader1", back)
    logon = events_since(t1, "strategy", "logged_on", back)[-1]
    print(f"\ntrader1 lost for {back - t0:.1f} s, back and trading {first - back:.1f} s after power-on "
          "(boot, the playbook over ssh, supervisord, a restart through supervisorctl)")
    # it took its positions and order ids from the ordermanager: none reused
    assert logon["last_order_id"] is not None
    ids = [e["order_id"] for e in orders_from(c, "trader1")]
    assert len(ids) == len(set(ids)) and len(ids) > len(before)
    check(c)
