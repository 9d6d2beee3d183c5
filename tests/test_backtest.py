"""stack-backtest (shared/ops/research/): a tiny tape worked by hand, the same
run as a naive every-record loop (market and resting orders, across chunk
edges), determinism, the JSON's shape, the plot, the shipped sample tape, and
bad input, through the command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared import config
from shared import tape as tape_mod
from shared.matching import Engine
from shared.ops.research import backtest, report, sampletape
from shared.ops.research.feed import Feed
from shared.ops.research.sim import NewsTick, OpenView, Sim
from shared.risk import Risk
from shared.rule import Rule, Tick

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "deploy" / "tapes" / "sample.tape"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.ops.research.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def write_config(path: Path, strategy: str = "", extra: str = "") -> Path:
    path.write_text(f'symbols = ["AAA", "AAPL", "MSFT", "GOOGL"]\n[strategy]\n{strategy}\n{extra}')
    return path


# --- a tape worked by hand ------------------------------------------------------


def tiny(path: Path) -> Path:
    """One symbol: the 1/2-tick averages cross up, good news buys 10; they cross down, bad news
    sells 20 (from +10 to -10); a last tick marks the short."""
    w = tape_mod.TapeWriter(path, ["AAA"])
    w.price(1, 1_000, "AAA", 100.0)
    w.price(2, 2_000, "AAA", 101.0)
    w.news(1, 2_500, "AAA", 80)
    w.price(3, 3_000, "AAA", 100.0)
    w.news(2, 3_500, "AAA", 20)
    w.price(4, 4_000, "AAA", 99.0)
    w.close()
    return path


def test_a_tiny_tape_by_hand(tmp_path: Path) -> None:
    cfg = config.load(write_config(tmp_path / "c.toml", "short_window = 1\nlong_window = 2"))
    res = backtest.run(Feed(tiny(tmp_path / "t.tape")), backtest.Setup(cfg))
    doc = report.document(res, "t.tape")
    # market orders at the protection price 1 % through the last tick; filled at the venue's quote
    # (spread 2 bps: ask 101 x 1.0001, bid 100 x 0.9999)
    assert [(o["order_id"], o["side"], o["qty"], o["price"], o["ord_type"], o["status"], o["news_seq"], o["tick_seq"])
            for o in doc["orders"]] == [("strategy-1-1", "BUY", 10, 102.01, "market", "filled", 1, 2),
                                        ("strategy-1-2", "SELL", 20, 99.0, "market", "filled", 2, 3)]
    assert [(f["exec_id"], f["last_qty"], f["last_px"], f["contra"]) for f in doc["fills"]] == [
        (2, 10, 101.0101, "venue"), (4, 20, 99.99, "venue")]
    # closing 10 bought at 101.0101 at 99.99: -10.201; short 10 at 99.99 marked at 99: +9.9
    sym = doc["clients"]["strategy-1"]["symbols"]["AAA"]
    assert sym == {"position": -10, "avg_price": 99.99, "realized": -10.201, "unrealized": 9.9, "total": -0.301,
                   "mark": 99.0, "open_buy": 0, "open_sell": 0}
    sm = doc["summary"]
    # P&L after each record: 0, 0, -0.101 (bought at the ask), -10.101, -10.301 (sold at the bid), -0.301
    assert sm["max_drawdown"] == 10.301
    assert sm["turnover"] == 3009.901 and sm["shares"] == 30 and sm["fills"] == 2


def test_an_empty_tape_and_news_never_priced(tmp_path: Path) -> None:
    cfg = config.load(write_config(tmp_path / "c.toml"))
    tape_mod.TapeWriter(tmp_path / "empty.tape", ["AAA"]).close()
    w = tape_mod.TapeWriter(tmp_path / "news.tape", ["AAA"])
    w.news(1, 1, "AAA", 90)  # one record: a chunk whose columns are views of the mapping
    w.close()
    for name in ("empty.tape", "news.tape"):
        res = backtest.run(Feed(tmp_path / name), backtest.Setup(cfg), sample=True)
        doc = report.document(res, name)
        assert doc["orders"] == [] and doc["summary"]["max_drawdown"] == 0.0
        assert doc["clients"]["strategy-1"]["total"] == 0.0


# --- the same as a naive loop over every record -------------------------------


def naive(path: Path, setup: backtest.Setup) -> tuple[Sim, float, float]:
    """Every record in Python: each tick to the venue and the window, each news tick to the strategy,
    P&L marked after every record."""
    rule, spec = setup.rule(), setup.spec()
    sim = Sim(rule, spec.client_id, Engine(*setup.venue()), Risk(setup.cfg.risk), setup.cfg.ordermanager.max_qty)
    tapes = tape_mod.read_all(path)
    syms = tapes[-1].symbols
    hist: dict[str, deque[Tick]] = {s: deque(maxlen=rule.history) for s in syms}
    marks: dict[str, float] = {}
    peak = max_dd = eq = 0.0
    i = 0
    for t in tapes:
        for kind, sym, _pad, seq, ts, value in t.records.tolist():
            name = syms[sym]
            if kind == tape_mod.PRICE:
                sim.tick(name, value, ts, i)
                hist[name].append(Tick(value, ts, seq))
                marks[name] = value
            elif not spec.symbols or name in spec.symbols:
                sim.news(NewsTick(name, int(value), ts, seq), list(hist[name]), i)
            eq = sum(p.realized + (p.unrealized(marks.get(s)) or 0.0) for s, p in sim.positions.items())
            peak = max(peak, eq)
            max_dd = max(max_dd, peak - eq)
            i += 1
    return sim, eq, max_dd


@dataclass(frozen=True)
class RestingParams:
    offset_bps: float = 1.0
    max_age: int = 3
    qty: int = 150  # above the venue's depth: partial fills


class Resting(Rule):
    """Rests a limit order a little inside the price on each news tick, cancels it after a few."""

    Params = RestingParams  # type: ignore[assignment]
    params: RestingParams
    history = 3

    def cancels(self, ticks: Any, news: Any, open_orders: list[OpenView]) -> list[str]:
        return [o.order_id for o in open_orders if o.age >= self.params.max_age]

    def decide(self, ticks: Any, news: Any, position: int, open_orders: Any) -> Any:  # type: ignore[override]
        if open_orders:
            return None
        last, o = ticks[-1].price, self.params.offset_bps / 1e4
        if news.sentiment > 50 and position < 300:
            return ("BUY", self.params.qty, round(last * (1 - o), 2), "limit", "day")
        if news.sentiment < 50 and position > -300:
            return ("SELL", self.params.qty, round(last * (1 + o), 2), "limit", "day")
        return None


@pytest.mark.parametrize("rule, chunk, cells", [("shared.rule:MovingAverageSentiment", 1000, 1 << 18),
                                                ("shared.rule:MovingAverageSentiment", 1 << 19, 64),
                                                ("shared.rule:MeanReversion", 333, 1 << 18),
                                                (f"{__name__}:Resting", 777, 7)])
def test_the_same_as_every_record_in_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str, chunk: int,
                                            cells: int) -> None:
    """``chunk``: records read at a time; ``cells``: window ticks gathered at a time (a few news' worth)."""
    monkeypatch.setattr(backtest._Windows, "CELLS", cells)
    cfg = config.load(write_config(tmp_path / "c.toml", f'rule = "{rule}"\nsymbols = ["AAPL", "GOOGL"]'))
    setup = backtest.Setup(cfg)
    res = backtest.run(Feed(SAMPLE, chunk=chunk), setup)
    sim, eq, max_dd = naive(SAMPLE, setup)
    assert len(sim.orders) > 10 and res.sim.orders == sim.orders and res.sim.fills == sim.fills
    assert res.equity.total == pytest.approx(eq, abs=1e-6)
    assert res.equity.max_dd == pytest.approx(max_dd, abs=1e-6)
    if rule.endswith("Resting"):
        statuses = {f["status"] for f in sim.fills} | {o["status"] for o in sim.orders}
        assert {"partially_filled", "canceled"} <= statuses


# --- the command line -----------------------------------------------------------


def test_the_same_run_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    runs = [cli("--tape", str(SAMPLE), *extra) for extra in ([], [], ["--json"], ["--json"])]
    assert all(r.returncode == 0 and not r.stderr for r in runs), runs
    assert runs[0].stdout == runs[1].stdout and runs[2].stdout == runs[3].stdout
    assert "max drawdown" in runs[0].stdout and "turnover" in runs[0].stdout


def test_json_is_shaped_as_the_audit(tmp_path: Path) -> None:
    r = cli("--tape", str(SAMPLE), "--json")
    doc = json.loads(r.stdout)
    assert {"orders", "fills", "clients", "summary"} <= set(doc)
    assert doc["orders"] and doc["fills"]
    client = doc["clients"]["strategy-1"]
    assert set(client) == {"realized", "unrealized", "total", "open_orders", "symbols"}
    for sym in client["symbols"].values():
        assert set(sym) == {"position", "avg_price", "realized", "unrealized", "total", "mark", "open_buy",
                            "open_sell"}
    fills = sum(f["last_qty"] * (1 if f["side"] == "BUY" else -1) for f in doc["fills"] if f["symbol"] == "AAPL")
    assert fills == client["symbols"]["AAPL"]["position"]
    assert {"exec_id", "order_id", "status", "last_qty", "last_px", "cum_qty", "leaves_qty", "ts_ns"} <= set(
        doc["fills"][0])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    r = cli("--tape", str(SAMPLE), "--plot", str(tmp_path / "pnl.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pnl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stdout == cli("--tape", str(SAMPLE)).stdout  # the plot changes nothing printed


def test_the_shipped_sample_is_made_again_byte_for_byte(tmp_path: Path) -> None:
    sampletape.write(tmp_path / "s.tape", **sampletape.SAMPLE)  # type: ignore[arg-type]
    assert (tmp_path / "s.tape").read_bytes() == SAMPLE.read_bytes()
    assert SAMPLE.stat().st_size < 300_000


def test_a_cut_tape_is_read_to_its_last_whole_record(tmp_path: Path) -> None:
    cut = tmp_path / "cut.tape"
    data = SAMPLE.read_bytes()
    cut.write_bytes(data[: len(data) - 32 - 13])  # the last record gone, the one before cut
    whole = tmp_path / "whole.tape"
    whole.write_bytes(data[: len(data) - 64])
    r = cli("--tape", str(cut), "--json")
    assert r.returncode == 0
    assert r.stderr.count("\n") == 1 and "1 record dropped" in r.stderr and "19 of 32 bytes" in r.stderr
    a, b = json.loads(r.stdout), json.loads(cli("--tape", str(whole), "--json").stdout)
    assert a["tape"]["dropped_bytes"] == 19 and {**a, "tape": None} == {**b, "tape": None}


def test_not_a_tape_or_a_newer_one_is_one_line(tmp_path: Path) -> None:
    newer = tmp_path / "newer.tape"
    data = bytearray(SAMPLE.read_bytes())
    data[8:12] = (2).to_bytes(4, "little")
    newer.write_bytes(bytes(data))
    for path, words in ((ROOT / "setup.cfg", "not a tape"), (newer, "newer than"), (tmp_path / "none", "cannot read")):
        r = cli("--tape", str(path))
        assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1 and words in r.stderr, r


@pytest.mark.parametrize("args, words", [
    (["--strategy", "nope"], "--strategy nope: no [strategies.nope]"),
    (["--strategy", "bad"], "strategies.bad.foo: unknown key"),
    (["--sweep", "foo=1,2"], "strategy.foo: unknown key"),
    (["--sweep", "short_window=3,x"], "strategy.short_window: expected int, got str 'x'"),
    (["--sweep", "short_window=2.5"], "strategy.short_window: expected int, got float 2.5"),
    (["--sweep", "short_window"], "expected key=v1,v2"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler runs a --sweep"),
])
def test_bad_input_is_one_line_naming_it(tmp_path: Path, args: list[str], words: str) -> None:
    conf = write_config(tmp_path / "c.toml", extra="[strategies.bad]\nfoo = 1\n")
    r = cli("--tape", str(SAMPLE), "--config", str(conf), *args)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and words in r.stderr, r


def test_a_bad_record_stops_it_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tape"
    data = bytearray(SAMPLE.read_bytes())
    at = tape_mod.RECORDS_OFFSET + 100 * tape_mod.RECORD_SIZE
    assert data[at] == tape_mod.PRICE
    data[at + 24: at + 32] = bytes(8)  # a price of 0.0
    bad.write_bytes(bytes(data))
    r = cli("--tape", str(bad))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "record 100 has a price not > 0" in r.stderr, r
