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

from shared.execjournal import read_lines
from shared.ops.bench import hosts as bench_hosts
from shared.ops.fleet.hosts import Cluster, Host, fleet_problems, netns_pids, recap, source_copy, wheelhouse
from shared.ops.harness import read_jsonl

pytestmark = pytest.mark.timeout(600)  # the first test's share includes deploying the fleet

LAYOUT = {"md1": ("market",), "trader1": ("trader",), "trader2": ("trader",), "om1": ("orders",)}
QTY = 10
STRATEGY = {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 4, "qty": QTY}
# Heartbeats and the book's staleness as a loaded machine can keep: a host starved for a moment
# must not look dead (a link that "never disconnected" is checked); how short they can be is the
# bench's question, not this module's.
HB_MS, STALE_MS = 1000, 2000
HB_TIMEOUT_S = 3 * HB_MS / 1000  # on both links


def ts(record: dict[str, Any]) -> float:
    """A log record's time, in seconds since the epoch."""
    return dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def orders_from(c: Cluster, client: str, after: float = 0.0) -> list[dict[str, Any]]:
    return [e for e in c["om1"].journal() if e["client_id"] == client and e["recv_ns"] / 1e9 > after]


def events_since(h: Host, program: str, event: str, t: float, **match: Any) -> list[dict[str, Any]]:
    return [r for r in h.events(program, event) if ts(r) >= t and all(r.get(k) == v for k, v in match.items())]


def exits(h: Host) -> list[str]:
    """Why a host's programs left RUNNING, from its audit log and each one's stderr: for a message."""
    out = [f"{r['ts']} {r['process']} {r.get('from_state')} -> {r['to_state']} (expected {r.get('expected')})"
           for r in read_jsonl(h.project / "logs" / "audit.log")
           if r.get("event") == "process_state" and r.get("from_state") == "RUNNING"]
    for err in sorted((h.project / "logs").glob("*.err")):
        if text := err.read_text(errors="replace").strip():
            out.append(f"{err.name}: {text[-500:]}")
    return out


def running(c: Cluster, timeout: float = 30) -> None:
    """Wait until every host's every program is RUNNING (a program supervisord has just started is
    STARTING for startsecs); else fail naming what left RUNNING, and why."""
    try:
        c.wait_for(lambda: all(h.status() and all(v == "RUNNING" for v in h.status().values())
                               for h in c.hosts.values()), timeout, "every program RUNNING")
    except TimeoutError:
        pytest.fail("\n".join(f"{h.name}: {h.status()}; {exits(h)}" for h in c.hosts.values()))


def check(c: Cluster) -> None:
    """Every host runs exactly its programs; the invariants hold."""
    running(c)
    problems = fleet_problems(c["om1"], [c["trader1"], c["trader2"]], QTY)
    assert not problems, "\n".join(problems)


def fills(c: Cluster, client: str) -> list[Any]:
    """The fills of ``client``'s orders in the ordermanager's exec journal on the orders host."""
    return [x for x in read_lines(c["om1"].project / "logs" / "orders.jsonl") if x.client_id == client and x.last_qty]


def venue_cuts(c: Cluster, t: float) -> list[dict[str, Any]]:
    """The exchange on the market host losing the ordermanager's link since ``t``."""
    return events_since(c["md1"], "exchange", "disconnected", t, stream="venue")


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
        c.inventory(tradestack_src=source_copy(d / "src"), tradestack_wheels=d / "wheels",
                    tradestack_news_rate=20, tradestack_price_rate=200, tradestack_strategy=STRATEGY,
                    tradestack_heartbeat_ms=HB_MS, tradestack_stale_ms=STALE_MS)
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
    assert set(c["md1"].status()) == {"gateway", "exchange"} | watch
    assert set(c["trader1"].status()) == {"bootstrap", "orderbook", "strategy"} | watch
    assert set(c["om1"].status()) == {"ordermanager"} | watch
    # over the md and oe links, with the token and TLS the playbook set up
    subs = {r["peer"].split(":")[0] for r in c["md1"].events("gateway", "connected")}
    assert subs == {c["trader1"].addr("md"), c["trader2"].addr("md"), c["md1"].addr("md")}  # md1's: its exchange
    assert {r["peer_cn"] for r in c["om1"].events("ordermanager", "tls_established")
            if r.get("stream") == "orders"} == {"trader1", "trader2"}
    assert c["om1"].events("ordermanager", "listening")[-1]["host"] == c["om1"].addr("oe")
    # the orders host reaches the exchange on the market host, over oe with TLS and the order-entry token
    venue = [r for r in c["md1"].events("exchange", "listening") if r.get("stream") == "venue"][-1]
    assert (venue["host"], venue["tls"]) == (c["md1"].addr("oe"), True)
    assert {r["peer"].split(":")[0] for r in c["md1"].events("exchange", "connected") if r.get("stream") == "venue"
            } == {c["om1"].addr("oe")}
    assert c["md1"].events("exchange", "logged_on")
    assert {r["peer_cn"] for r in c["md1"].events("exchange", "tls_established") if r.get("stream") == "venue"
            } == {"om1"}
    assert {r["peer_cn"] for r in c["om1"].events("ordermanager", "tls_established")
            if r.get("stream") == "exchange"} == {"md1"}
    # and trading goes through it: each trader's orders are filled there, the fills journaled on the
    # orders host and received by the trader's strategy
    for t in ("trader1", "trader2"):
        got = c.wait_for(lambda t=t: fills(c, t), 60, f"{t}'s orders filled")  # type: ignore[misc]
        c.wait_for(lambda t=t, x=got[0]: [r for r in c[t].events("strategy", "exec_received")  # type: ignore[misc]
                                          if r["exec_id"] == x.exec_id and r["last_qty"] == x.last_qty],
                   30, f"{t} receives its fill")
    assert not c["om1"].events("ordermanager", "venue_refused")
    for t in ("trader1", "trader2"):
        c.wait_for(lambda t=t: c[t].book_age_ms() < STALE_MS, 30, f"{t}'s book fresh")  # type: ignore[misc]
        assert c[t].events("strategy", "logged_on")
    assert not c["md1"].events("gateway", "subscription_refused")
    check(c)
    # Nothing restarted since the deploy: a program that did names its exit here.
    assert not [e for h in c.hosts.values() for e in exits(h) if " -> " in e], {h.name: exits(h) for h in
                                                                                 c.hosts.values()}
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


def processes(c: Cluster) -> dict[str, dict[str, int]]:
    """Host -> program -> pid, supervisord's among them."""
    return {n: {**h.pids(), "supervisord": int(h.rpc.getPID())} for n, h in c.hosts.items()}


def converge(c: Cluster) -> tuple[set[str], list[str]]:
    """Run the playbook on the whole fleet; the hosts it changed, and its changed tasks (for a message)."""
    r = c.playbook()
    rc = recap(r.stdout)
    assert set(rc) == set(c.hosts) and all(x["failed"] == 0 and x["unreachable"] == 0 for x in rc.values()), rc
    task, changed = "", []
    for line in r.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: "):
            changed.append(f"{task}: {line}")
    return {n for n, x in rc.items() if x["changed"]}, changed


def test_playbook_converges_and_a_hosts_change_restarts_that_host_alone(fleet: Cluster) -> None:
    c = fleet
    before = processes(c)
    changed, tasks = converge(c)
    assert changed == set(), tasks  # changed=0 on every host
    assert processes(c) == before  # and nothing restarted

    # One host's config: trader2 alone changes, and its programs alone restart.
    c.host_vars("trader2", tradestack_strategy={**STRATEGY, "long_window": 5})
    t = time.time()
    changed, tasks = converge(c)
    assert changed == {"trader2"}, tasks
    after = processes(c)
    assert {n: p for n, p in after.items() if n != "trader2"} == {n: p for n, p in before.items() if n != "trader2"}
    assert after["trader2"]["supervisord"] == before["trader2"]["supervisord"]
    assert all(after["trader2"][p] not in (0, before["trader2"][p]) for p in after["trader2"] if p != "supervisord")
    assert 'long_window = 5' in (c["trader2"].project / "deploy" / "host.toml").read_text()
    trading(c, "trader2", t)

    # One host's secret: its certificate and key made anew, which only its secrets carry.
    for ext in ("crt", "key"):
        (c.dir / "pki" / f"trader2.{ext}").unlink()
    before, t = after, time.time()
    changed, tasks = converge(c)
    assert changed == {"trader2"}, tasks
    after = processes(c)
    assert {n: p for n, p in after.items() if n != "trader2"} == {n: p for n, p in before.items() if n != "trader2"}
    assert all(after["trader2"][p] not in (0, before["trader2"][p]) for p in after["trader2"] if p != "supervisord")
    shipped = c["trader2"].project / "deploy" / "pki" / "trader2.crt"
    assert (c.dir / "pki" / "trader2.crt").read_bytes() == shipped.read_bytes()
    trading(c, "trader2", t)
    check(c)


def test_bench_hosts_measures_the_floor_and_the_stack_across_the_veths(fleet: Cluster) -> None:
    """deploy/bench --hosts, small: the bare chain over the same hops, and a window of the stack."""
    c = fleet
    lat = bench_hosts.floor(c, c["md1"], c["trader1"], c["om1"], rate=100, count=200)
    assert len(lat) == 200 and 0 < min(lat) and max(lat) < 5_000_000
    row = bench_hosts.window(c, [c["trader1"], c["trader2"]], seconds=3)
    assert row["hosts"] == 2 and row["orders"] > 0 and 0 < row["p50"] < 5_000_000
    assert 0 < row["gateway_cpu_pct"] < 200
    text = bench_hosts.report(lat, [row])
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
    during = trading(c, "trader2", ts(cut[0]))  # the other trader goes on, past trader1's timeout
    healed_at = time.time()
    t1.link("oe", True)
    logon = c.wait_for(lambda: events_since(t1, "strategy", "logged_on", healed_at), 30, "trader1 logs on again")
    first = trading(c, "trader1", healed_at)
    print(f"\npartition trader1<->om1 for {healed_at - t0:.1f} s: logged on {ts(logon[0]) - healed_at:.2f} s "
          f"and trading {first - healed_at:.2f} s after the heal")
    assert during > t0
    assert not events_since(c["trader2"], "strategy", "disconnected", t0)
    assert not events_since(om, "ordermanager", "disconnected", t0, client_id="trader2")
    assert not venue_cuts(c, t0)  # om1's link to the exchange on md1 is another: it held
    assert cut[0]["reason"] == "heartbeat_timeout"
    assert not [r for r in events_since(t1, "strategy", "order_sent", ts(cut[0])) if ts(r) < ts(logon[0])]
    # every order trader1 sent is journaled once (the pending ones resent under the same ids), but those the
    # ordermanager refused, with a reject the strategy logged (unavailable while the venue link came up at start)
    refused = {r["order_id"]: r["reason"] for r in t1.events("strategy", "order_refused")}
    sent = {r["order_id"] for r in t1.events("strategy", "order_sent")} - set(refused)
    try:
        c.wait_for(lambda: sent <= {e["order_id"] for e in orders_from(c, "trader1")}, 30, "every sent order journaled")
    except TimeoutError:
        missing = sorted(sent - {e["order_id"] for e in orders_from(c, "trader1")})
        raise AssertionError(f"sent, never refused, not journaled: {missing[:10]}; refused: {refused}") from None
    check(c)


def test_partition_market_from_trader_trips_its_kill_switch_then_it_resyncs(fleet: Cluster) -> None:
    c = fleet
    t2 = c["trader2"]
    t0 = time.time()
    t2.link("md", False)
    stale = c.wait_for(lambda: events_since(t2, "strategy", "book_stale", t0), 20, "trader2's kill switch")
    tripped = ts(stale[0]) - t0
    trading(c, "trader1", ts(stale[0]))  # the other trader goes on
    healed_at = time.time()
    t2.link("md", True)
    fresh = c.wait_for(lambda: events_since(t2, "strategy", "book_fresh", healed_at), 30, "trader2's book fresh")
    first = trading(c, "trader2", healed_at)
    print(f"\npartition md1<->trader2: kill switch tripped {tripped:.2f} s after the cut; "
          f"book fresh {ts(fresh[0]) - healed_at:.2f} s and trading {first - healed_at:.2f} s after the heal")
    # No order between the kill switch and the fresh book, in the order trader2's strategy logged them.
    log = [r for r in t2.log("strategy") if ts(r) >= t0]
    i = next(n for n, r in enumerate(log) if r.get("event") == "book_stale")
    j = next(n for n, r in enumerate(log) if n > i and r.get("event") == "book_fresh")
    assert not [r for r in log[i:j] if r.get("event") == "order_sent"]
    assert events_since(t2, "orderbook", "reconnected", healed_at, stream="price")
    assert not events_since(c["trader1"], "strategy", "book_stale", t0)
    assert not events_since(t2, "strategy", "disconnected", t0, stream="orders")  # its order link held
    assert not venue_cuts(c, t0)  # and om1's link to the exchange on md1, not on the cut md link
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
