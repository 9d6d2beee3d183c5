"""stack-backtest --as-live (shared/ops/research/aslive.py): a live order's journal line and a tape
worked by hand, compared with what the rule decides again (reproduced, or why not); then a live
stack running the §7 rule and the mean-reversion example beside stack-record, through a kill -9 of a
strategy, of the orderbook and of the other strategy, every live order of both reproduced."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from shared import config
from shared import tape as tape_mod
from shared.decision import runs, seqs_of
from shared.journal import Entry
from shared.ops import haltcmd
from shared.ops.chaos import faults
from shared.ops.harness import Stack
from shared.ops.research import aslive
from shared.protocol import DecisionContext, SeenOrder

ROOT = Path(__file__).resolve().parents[1]

CONFIG = '''symbols = ["AAA", "BBB"]
[strategy]
short_window = 1
long_window = 2
bullish = 60
bearish = 40
[strategies.revert]
rule = "shared.rule:MeanReversion"
window = 3
entry_z = 1.0
exit_z = 0.2
qty = 5
max_age = 2
'''


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.ops.research.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def hand_tape(path: Path) -> Path:
    """AAA rises 100, 101, 102 then dips to 95; BBB is priced once; three news ticks (seq 1..3) and,
    after a gateway restart, a second session whose price seq 2 repeats the first's."""
    w = tape_mod.TapeWriter(path, ["AAA", "BBB"])
    w.price(1, 1_000, "AAA", 100.0)
    w.price(2, 2_000, "AAA", 101.0)
    w.price(3, 3_000, "BBB", 50.0)
    w.news(1, 3_500, "AAA", 80)  # §7: the 1/2 averages cross up, good news: buy 10
    w.price(4, 4_000, "AAA", 102.0)
    w.price(5, 5_000, "AAA", 95.0)
    w.news(2, 5_500, "AAA", 50)  # mean reversion over 101, 102, 95: z = -1.4, buy 5 at 95
    w.news(3, 6_000, "AAA", 20)
    w.price(2, 9_000, "AAA", 200.0)  # the next session
    w.news(1, 9_500, "AAA", 50)
    w.close()
    return path


def line(no: int, cid: str, side: str, qty: int, price: float, tick_ts_ns: int, ctx: DecisionContext | None,
         ord_type: str = "market", tif: str = "ioc", symbol: str = "AAA") -> bytes:
    e = Entry(no, f"{cid}-{no}", cid, symbol, side, qty, price, tick_ts_ns + 100, tick_ts_ns, tick_ts_ns + 200,
              ord_type, tif, msgspec.UNSET if ctx is None else ctx)
    return msgspec.json.encode(e) + b"\n"


def ctx(news_seq: int, seqs: list[int], position: int = 0, opens: list[SeenOrder] | None = None,
        cancels: list[str] | None = None) -> DecisionContext:
    return DecisionContext(news_seq=news_seq, window=runs(seqs), position=position, open_orders=opens or [],
                           cancels=cancels or [])


def write(tmp_path: Path, *lines: bytes) -> tuple[Path, Path, Path]:
    (tmp_path / "c.toml").write_text(CONFIG)
    (tmp_path / "orders.jsonl").write_bytes(b"".join(lines))
    return tmp_path / "c.toml", tmp_path / "orders.jsonl", hand_tape(tmp_path / "t.tape")


def verdicts(tmp_path: Path, *lines: bytes) -> dict[str, list[tuple[str, str | None]]]:
    c, j, t = write(tmp_path, *lines)
    cfg = config.load(c)
    out = aslive.replay(cfg, aslive.TapeIndex(str(t)), [json.loads(x) for x in j.read_bytes().splitlines()],
                        ["", "revert"])
    return {r.spec.client_id: [(v.order_id, v.why) for v in r.verdicts] for r in out}


RESTING = SeenOrder("revert-1", "BUY", 5, 95.0, 0, 5, 2)  # two news ticks old: stale for max_age 2


def test_orders_the_rule_decides_again_are_reproduced(tmp_path: Path) -> None:
    got = verdicts(tmp_path,
                   line(1, "strategy-1", "BUY", 10, 102.01, 3_500, ctx(1, [1, 2])),  # market: 101 x 1.01
                   line(2, "revert", "BUY", 5, 95.0, 5_500, ctx(2, [2, 4, 5]), "limit", "day"),
                   # a short of 10 covered and turned: the bad news sells 20 against the averages falling
                   line(3, "strategy-1", "SELL", 20, 94.05, 6_000, ctx(3, [4, 5], position=10)))
    assert got == {"strategy-1": [("strategy-1-1", None), ("strategy-1-3", None)], "revert": [("revert-2", None)]}


def test_a_window_is_kept_as_runs_of_seqs() -> None:
    assert runs([]) == [] and seqs_of([]) == []
    assert runs([5, 6, 7, 8]) == [(5, 8)]  # a whole window: one run
    assert runs([2, 4, 5, 9]) == [(2, 2), (4, 5), (9, 9)]  # holes the ring had show
    for seqs in ([1], [3, 4, 10, 11, 12], list(range(100, 356))):
        assert seqs_of(runs(seqs)) == seqs


def test_a_journal_line_holds_the_context_as_it_came_and_none_without(tmp_path: Path) -> None:
    c = ctx(2, [2, 4, 5], opens=[RESTING], cancels=["revert-1"])
    assert json.loads(line(1, "revert", "BUY", 5, 95.0, 5_500, c))["ctx"] == json.loads(msgspec.json.encode(c))
    assert b'"ctx"' not in line(1, "strategy-1", "BUY", 10, 102.01, 3_500, None)  # a line as before


def test_each_order_not_reproduced_says_why(tmp_path: Path) -> None:
    got = verdicts(tmp_path,
                   line(1, "strategy-1", "SELL", 10, 102.01, 3_500, ctx(1, [1, 2])),
                   line(2, "strategy-1", "BUY", 10, 103.0, 3_500, ctx(1, [1, 2])),
                   line(3, "strategy-1", "BUY", 10, 102.01, 3_500, ctx(1, [1, 7])),
                   line(4, "strategy-1", "BUY", 10, 102.01, 3_600, ctx(1, [1, 2])),
                   line(5, "strategy-1", "BUY", 10, 102.01, 3_500, None),
                   line(6, "strategy-1", "BUY", 10, 102.01, 3_500, ctx(1, [1, 2], position=10)),
                   line(7, "revert", "BUY", 5, 95.0, 5_500, ctx(2, [2, 4, 5], opens=[RESTING]), "limit", "day"),
                   line(8, "revert", "BUY", 5, 95.0, 5_500, ctx(2, [2, 4, 5], opens=[RESTING],
                                                                   cancels=["revert-1"]), "limit", "day"),
                   line(9, "revert", "BUY", 5, 95.0, 3_500, ctx(1, [1, 2, 3]), "limit", "day"))
    assert got["strategy-1"] == [
        ("strategy-1-1", "side 'BUY', live 'SELL'"),
        ("strategy-1-2", "price 102.01, live 103.0"),
        ("strategy-1-3", "window: 1 of 2 ticks not on the tape (seq 7)"),
        ("strategy-1-4", "news tick seq 1 not on the tape"),  # the same seq at another time: another tick
        ("strategy-1-5", "no decision context in its journal line (sent by a strategy without one)"),
        ("strategy-1-6", "the rule decides no order"),  # already long 10
    ]
    assert got["revert"] == [
        ("revert-7", "it asks to cancel ['revert-1'], live it asked []"),
        ("revert-8", "the rule decides no order"),  # one order at a time: it waits for the cancel
        ("revert-9", "window: 1 of 3 ticks not on the tape (seq 3)"),  # seq 3 is BBB's, not AAA's
    ]


def test_a_seq_of_two_gateway_sessions_is_taken_from_its_news_ticks(tmp_path: Path) -> None:
    _, _, t = write(tmp_path)
    index = aslive.TapeIndex(str(t))
    assert index.news_tick(1, 9_500) == ("AAA", 50, 1) and index.news_tick(1, 3_500) == ("AAA", 80, 0)
    assert [x.price for x in index.window("AAA", [2], session=1)[0]] == [200.0]
    assert [x.price for x in index.window("AAA", [1, 2], session=0)[0]] == [100.0, 101.0]
    assert index.window("AAA", [1, 2], session=1)[1] == [1]
    assert index.window("CCC", [1], session=0) == ([], [1])


def test_a_rule_that_keeps_state_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Counting:
        """Buys 10 at every call, and counts its calls: state --as-live cannot rebuild."""

        history, params, name = 2, None, "counting"

        def __init__(self) -> None:
            self.calls = 0

        def decide(self, ticks: Any, news: Any, position: int, open_orders: Any) -> Any:
            self.calls += 1
            return ("BUY", 10)

    c, j, t = write(tmp_path, line(1, "strategy-1", "BUY", 10, 102.01, 3_500, ctx(1, [1, 2])))
    monkeypatch.setattr(aslive, "rule_for", lambda cfg, spec: Counting())
    [r] = aslive.replay(config.load(c), aslive.TapeIndex(str(t)), [json.loads(j.read_bytes())], [""])
    assert r.reproduced == 1 and r.stateful
    assert "it keeps state" in aslive.text([r], str(j), str(t), aslive.TapeIndex(str(t)))


def test_the_command_line_text_json_and_exit_status(tmp_path: Path) -> None:
    c, j, t = write(tmp_path, line(1, "strategy-1", "BUY", 10, 102.01, 3_500, ctx(1, [1, 2])),
                    line(2, "revert", "SELL", 5, 95.0, 5_500, ctx(2, [2, 4, 5]), "limit", "day"))
    r = cli("--as-live", "--tape", str(t), "--journal", str(j), "--config", str(c))
    assert r.returncode == 1, r.stderr
    assert re.search(r"\[strategy\] +strategy-1 +shared.rule:MovingAverageSentiment +1 +1\n", r.stdout), r.stdout
    assert re.search(r"\[strategies.revert\] +revert +shared.rule:MeanReversion +1 +0\n", r.stdout)
    assert "not reproduced: 1" in r.stdout
    assert "revert-2 (order 2, AAA, news seq 2): side 'BUY', live 'SELL'" in r.stdout
    r = cli("--as-live", "--tape", str(t), "--journal", str(j), "--config", str(c), "--strategy", "", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(s["strategy"], s["live"], s["reproduced"]) for s in doc["strategies"]] == [("strategy", 1, 1)]
    assert doc["strategies"][0]["orders"][0] == {"order_id": "strategy-1-1", "order_no": 1, "symbol": "AAA",
                                                 "news_seq": 1, "reproduced": True, "why": None}
    r = cli("--as-live", "--tape", str(t), "--journal", str(tmp_path / "none.jsonl"), "--config", str(c))
    assert r.returncode == 2 and "no such journal" in r.stderr
    r = cli("--as-live", "--tape", str(tmp_path / "missing.tape"), "--journal", str(j), "--config", str(c))
    assert r.returncode == 1 and "cannot read" in r.stderr


# --- live and backtest agree: a live stack, recorded, killed, replayed ------------

HB_MS = 100
# Windows of about half a second of a symbol's ticks, so orders decided soon after the orderbook's
# restart see the ticks it missed as a hole in their window.
LIVE: dict[str, Any] = {
    "gateway": {"news_rate": 20, "heartbeat_ms": HB_MS, "price_rate": 100},
    "ordermanager": {"heartbeat_ms": HB_MS},
    "strategy": {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 10},  # §7, on any tilt
    "strategies": {  # limit orders 30 bps inside the price, cancelled after two news ticks
        "revert": {"rule": "shared.rule:MeanReversion", "window": 20, "entry_z": 0.8, "exit_z": 0.3, "qty": 7,
                   "offset_bps": 30.0, "max_age": 2},
    },
}


def holes(tape: Path, orders: list[dict[str, Any]]) -> int:
    """How many orders' windows are not a run of their symbol's ticks on the tape."""
    index = aslive.TapeIndex(str(tape))
    n = 0
    for e in orders:
        window = e.get("ctx", {}).get("window", [])
        pos = np.searchsorted(index.prices[e["symbol"]].key, seqs_of(window))  # one gateway session: key = seq
        n += bool(len(pos) and (np.diff(pos) != 1).any())
    return n


def kill9(s: Stack, program: str) -> None:
    """kill -9 a program and wait until supervisord has it running again."""
    old = faults.kill(s, program, signal.SIGKILL)
    s.wait_for(lambda: s.pids().get(program) not in (0, old) and s.status().get(program) == "RUNNING", timeout=20)


def test_as_live_reproduces_every_live_order_through_kill9_of_a_strategy_and_the_orderbook(tmp_path: Path) -> None:
    s = Stack(tmp_path / "stack", LIVE)
    journal = str(s.cfg.resolve(s.cfg.ordermanager.journal))
    clients = [st.client_id for st in s.strategies]
    for cid in clients:  # halted until the tape holds their windows: no order decided on ticks before it
        haltcmd.change(journal, cid, stop=True, timeout=0)
    tape = tmp_path / "live.tape"
    rec: subprocess.Popen[bytes] | None = None
    try:
        s.start()
        rec = subprocess.Popen([sys.executable, "-m", "shared.recorder", "--seconds", "120", "--out", str(tape),
                                "--config", str(s.config_path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        s.wait_for(lambda: tape.exists() and tape.stat().st_size > tape_mod.RECORDS_OFFSET + 300 * 32, timeout=15)
        for cid in clients:
            assert haltcmd.change(journal, cid, stop=False, timeout=10)[0] == 0
        time.sleep(2)
        kill9(s, "strategy-revert")
        time.sleep(1.5)
        kill9(s, "orderbook")  # the ring misses the ticks of its restart: windows with a hole follow
        time.sleep(1.5)
        kill9(s, "strategy")
        time.sleep(1.5)
        s.ctl("stop", "strategy", "strategy-revert", check=True)
        time.sleep(0.3)  # the recorder has every news tick the strategies had
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=10) == 0
        orders = s.journal()
        live = {cid: sum(e["client_id"] == cid for e in orders) for cid in clients}
        r = cli("--as-live", "--tape", str(tape), "--config", str(s.config_path), "--json")
        print(cli("--as-live", "--tape", str(tape), "--config", str(s.config_path)).stdout)
        print("orders whose window skips ticks of the tape (the ring missed them):", holes(tape, orders))
    finally:
        if rec is not None and rec.poll() is None:
            rec.kill()
            rec.wait()
        s.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    doc = json.loads(r.stdout)
    got = {x["client_id"]: (x["live"], x["reproduced"]) for x in doc["strategies"]}
    assert got == {cid: (live[cid], live[cid]) for cid in clients} and all(n > 0 for n in live.values()), got
