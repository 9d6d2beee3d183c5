"""The typed config (contract §3): the shipped file, bad files, STACK_CONFIG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import config
from shared.config import ConfigError
from shared.decision import load_rule
from shared.rule import MeanReversion, MeanReversionParams, RuleParams
from shared.tape import TapeWriter

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "stack.toml") -> Path:
    """Write a config file and return its path."""
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_config_loads() -> None:
    cfg = config.load(ROOT / "deploy" / "stack.toml")
    assert cfg.symbols == ("AAPL", "MSFT", "GOOGL")
    assert (cfg.gateway.host, cfg.gateway.price_port, cfg.gateway.news_port) == ("127.0.0.1", 8000, 8001)
    assert (cfg.gateway.price_rate, cfg.gateway.news_rate) == (100.0, 2.0)
    assert (cfg.ordermanager.host, cfg.ordermanager.port) == ("127.0.0.1", 8002)
    assert cfg.ordermanager.journal == "logs/orders.jsonl"
    assert (cfg.book.segment, cfg.book.stale_ms, cfg.book.ring_len) == ("tradestack_book", 500, 256)
    st = cfg.strategy
    assert (st.client_id, st.rule, st.symbols, st.program, st.ord_type) == (
        "strategy-1", "shared.rule:MovingAverageSentiment", (), "strategy", "market")
    assert load_rule(st).params == RuleParams(short_window=5, long_window=20, bullish=60, bearish=40, qty=10)
    assert cfg.strategies == {}  # the shipped config runs the one program "strategy"
    x = cfg.exchange  # contract §9
    assert (x.host, x.port, x.spread_bps, x.depth, x.journal) == ("127.0.0.1", 8003, 2.0, 100, "logs/exchange.jsonl")
    assert cfg.link("exchange") == ("127.0.0.1", 8003)
    assert cfg.path == str(ROOT / "deploy" / "stack.toml")


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, ""))
    assert cfg.symbols == ("AAPL", "MSFT", "GOOGL")
    assert cfg.strategy == config.Strategy()


def test_config_is_frozen() -> None:
    cfg = config.load(ROOT / "deploy" / "stack.toml")
    with pytest.raises(AttributeError):
        cfg.book.stale_ms = 1  # type: ignore[misc]


def test_int_accepted_for_float_key(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[gateway]\nprice_rate = 0\n"))
    assert cfg.gateway.price_rate == 0.0 and isinstance(cfg.gateway.price_rate, float)


def test_links_override(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[links]\norders = "127.0.0.1:19999"\n'))
    assert cfg.link("orders") == ("127.0.0.1", 19999)
    assert cfg.link("price") == (cfg.gateway.host, cfg.gateway.price_port)
    assert cfg.link("news") == (cfg.gateway.host, cfg.gateway.news_port)


# (id, TOML text, text the error must contain)
BAD = [
    ("unknown_top_key", 'symbol = ["AAPL"]\n', "symbol: unknown"),
    ("unknown_section", "[gatway]\nhost = 'x'\n", "gatway"),
    ("unknown_key_in_section", "[gateway]\nprice_prot = 9000\n", "gateway.price_prot"),
    ("section_not_table", "gateway = 3\n", "gateway"),
    ("wrong_type_port", '[gateway]\nprice_port = "8000"\n', "gateway.price_port"),
    ("wrong_type_str", "[book]\nsegment = 5\n", "book.segment"),
    ("symbols_not_list", 'symbols = "AAPL"\n', "symbols"),
    ("port_0", "[ordermanager]\nport = 0\n", "ordermanager.port"),
    ("port_70000", "[gateway]\nnews_port = 70000\n", "gateway.news_port"),
    ("negative_rate", "[gateway]\nprice_rate = -1\n", "gateway.price_rate"),
    ("no_symbols", "symbols = []\n", "symbols"),
    ("symbol_too_long", 'symbols = ["ABCDEFGHIJKLMNOPQ"]\n', "symbols"),
    ("symbol_not_str", "symbols = [1]\n", "symbols"),
    ("duplicate_symbols", 'symbols = ["AAPL", "MSFT", "AAPL"]\n', "symbols"),
    ("ring_len_zero", "[book]\nring_len = 0\n", "book.ring_len"),
    ("duplicate_client_id", '[strategy]\nclient_id = "x"\n[strategies.a]\nclient_id = "x"\n',
     "strategies.a.client_id: 'x' is also the client_id of strategy"),
    ("duplicate_client_id_by_default", '[strategies.a]\n[strategies.b]\nclient_id = "a"\n',
     "strategies.b.client_id: 'a' is also the client_id of strategies.a"),
    ("client_id_with_space", '[strategies.a]\nclient_id = "a b"\n', "strategies.a.client_id"),
    ("strategies_not_tables", "strategies = 3\n", "strategies"),
    ("strategy_not_table", "[strategies]\na = 3\n", "strategies.a"),
    ("strategy_name_bad", '[strategies."a:b"]\n', "strategies.a:b"),
    ("rule_not_module_class", '[strategies.a]\nrule = "shared.rule.MeanReversion"\n', "strategies.a.rule"),
    ("rule_not_str", "[strategy]\nrule = 3\n", "strategy.rule"),
    ("strategy_symbols_unknown", '[strategies.a]\nsymbols = ["AAPL", "TSLA"]\n', "strategies.a.symbols"),
    ("strategy_symbols_empty", "[strategies.a]\nsymbols = []\n", "strategies.a.symbols"),
    ("ord_type_unknown", '[strategy]\nord_type = "stop"\n', "strategy.ord_type: must be 'market' or 'limit'"),
    ("ord_type_not_str", "[strategies.a]\nord_type = 1\n", "strategies.a.ord_type"),
    ("strategy_param_table", "[strategies.a]\n[strategies.a.x]\ny = 1\n", "strategies.a.x"),
    ("segment_with_slash", '[book]\nsegment = "a/b"\n', "book.segment"),
    ("stale_ms_zero", "[book]\nstale_ms = 0\n", "book.stale_ms"),
    ("links_no_port", '[links]\nprice = "127.0.0.1"\n', "links.price"),
    ("links_bad_port", '[links]\nnews = "127.0.0.1:99999"\n', "links.news"),
    ("links_no_host", '[links]\norders = ":8002"\n', "links.orders"),
    ("bad_journal_sync", '[ordermanager]\njournal_sync = "sometimes"\n', "ordermanager.journal_sync"),
    ("tiny_segment", "[ordermanager]\njournal_segment_bytes = 100\n", "ordermanager.journal_segment_bytes"),
    ("tiny_window", "[ordermanager]\njournal_window = 10\n", "ordermanager.journal_window"),
    ("roll_at_hour_only", '[ordermanager]\njournal_roll_at = "17"\n', "ordermanager.journal_roll_at"),
    ("roll_at_25h", '[ordermanager]\njournal_roll_at = "25:00"\n', "ordermanager.journal_roll_at"),
    ("roll_at_one_digit", '[ordermanager]\njournal_roll_at = "7:30"\n', "ordermanager.journal_roll_at"),
    ("roll_at_not_a_string", "[ordermanager]\njournal_roll_at = 1730\n", "ordermanager.journal_roll_at"),
    ("not_toml", "symbols = [AAPL\n", "not valid TOML"),
    ("tape_missing", '[gateway]\ntape = "no/such.tape"\n', "gateway.tape: " + str(ROOT / "no/such.tape")
     + ": cannot read: No such file or directory"),
    ("tape_not_a_tape", '[gateway]\ntape = "deploy/stack.toml"\n', "gateway.tape: " + str(ROOT / "deploy/stack.toml")
     + ": not a tape"),
    ("tape_and_replay", '[gateway]\ntape = "t"\nreplay = "r.csv"\n', "gateway.tape: set gateway.tape or"),
    ("tape_not_str", "[gateway]\ntape = 1\n", "gateway.tape: expected str"),
    ("speed_negative", "[gateway]\nspeed = -1\n", "gateway.speed: must not be negative"),
    ("speed_not_number", '[gateway]\nspeed = "fast"\n', "gateway.speed: expected float"),
    ("exchange_port", "[exchange]\nport = 70000\n", "exchange.port: port 70000 out of range"),
    ("exchange_port_type", '[exchange]\nport = "8003"\n', "exchange.port: expected int"),
    ("exchange_spread_negative", "[exchange]\nspread_bps = -1\n", "exchange.spread_bps: must not be negative"),
    ("exchange_spread_huge", "[exchange]\nspread_bps = 20000\n", "exchange.spread_bps: must be below 20000"),
    ("exchange_spread_nan", "[exchange]\nspread_bps = nan\n", "exchange.spread_bps"),
    ("exchange_depth_negative", "[exchange]\ndepth = -5\n", "exchange.depth: must not be negative"),
    ("exchange_depth_float", "[exchange]\ndepth = 1.5\n", "exchange.depth: expected int"),
    ("exchange_journal_empty", '[exchange]\njournal = ""\n', "exchange.journal"),
    ("exchange_sync", '[exchange]\njournal_sync = "never"\n', "exchange.journal_sync"),
    ("exchange_tiny_segment", "[exchange]\njournal_segment_bytes = 10\n", "exchange.journal_segment_bytes"),
    ("exchange_heartbeat_zero", "[exchange]\nheartbeat_ms = 0\n", "exchange.heartbeat_ms"),
    ("exchange_unknown_key", "[exchange]\nspreadbps = 1\n", "exchange.spreadbps: unknown key"),
    ("exchange_off_loopback", '[exchange]\nhost = "10.1.2.3"\n', "exchange.host: 10.1.2.3 is off loopback"),
    ("links_exchange_no_port", '[links]\nexchange = "127.0.0.1"\n', "links.exchange"),
]


@pytest.mark.parametrize(("text", "names"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert names in msg
    assert "\n" not in msg


def test_a_tape_is_checked_only_where_the_gateway_runs(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[gateway]\ntape = "no/such.tape"\nspeed = 0\n[host]\nroles = ["trader"]\n'))
    assert (cfg.gateway.tape, cfg.gateway.speed) == ("no/such.tape", 0.0)
    assert config.load(write(tmp_path, "")).gateway.speed == 1.0


def test_a_newer_tape_is_named_in_one_line(tmp_path: Path) -> None:
    TapeWriter(tmp_path / "t.tape", ["AAPL"]).close()
    with open(tmp_path / "t.tape", "r+b") as f:
        f.seek(8)
        f.write((7).to_bytes(4, "little"))
    with pytest.raises(ConfigError, match=r"^gateway.tape: .*t.tape: tape version 7 is newer than this reader's 1$"):
        config.load(write(tmp_path, f'[gateway]\ntape = "{tmp_path / "t.tape"}"\n'))


@pytest.mark.parametrize(("value", "minute"), [("", None), ("00:00", 0), ("17:30", 1050), ("23:59", 1439)])
def test_journal_roll_at(tmp_path: Path, value: str, minute: int | None) -> None:
    cfg = config.load(write(tmp_path, f'[ordermanager]\njournal_roll_at = "{value}"\n'))
    assert config.roll_at_minute(cfg.ordermanager.journal_roll_at) == minute


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        config.load(p)


def test_stack_config_env_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    write(sub, 'symbols = ["XYZ"]\n[book]\nsegment = "from_env"\n', "mine.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STACK_CONFIG", "conf/mine.toml")
    assert config.config_path() == sub / "mine.toml"
    cfg = config.load()
    assert cfg.symbols == ("XYZ",)
    assert cfg.book.segment == "from_env"
    assert cfg.path == str(sub / "mine.toml")


def test_without_stack_config_the_shipped_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACK_CONFIG", raising=False)
    assert config.config_path() == ROOT / "deploy" / "stack.toml"
    assert config.load().path == str(ROOT / "deploy" / "stack.toml")


def test_stack_config_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STACK_CONFIG", "absent.toml")
    with pytest.raises(ConfigError, match="absent.toml"):
        config.load()


@pytest.mark.parametrize(
    ("daemon", "text", "names"),
    [
        ("gateway", "[gateway]\nprice_port = 70000\nnews_port = 70001\n", "gateway.price_port"),
        ("ordermanager", "[ordermanager]\nport = 19998\nbogus = 1\n", "ordermanager.bogus"),
    ],
    ids=["gateway_port_out_of_range", "ordermanager_unknown_key"],
)
def test_daemon_with_bad_config_exits_with_one_line(tmp_path: Path, daemon: str, text: str, names: str) -> None:
    write(tmp_path, text, "bad.toml")
    env = {**os.environ, "STACK_CONFIG": "bad.toml", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "daemons" / f"{daemon}.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert names in lines[0]
    assert "Traceback" not in proc.stderr


def test_strategies_tables(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '''
[strategies.momentum]
symbols = ["AAPL", "MSFT"]
short_window = 3
[strategies.revert]
client_id = "mr-1"
rule = "shared.rule:MeanReversion"
ord_type = "limit"
window = 30
entry_z = 1.5
'''))
    assert (cfg.strategy.ord_type, cfg.strategies["momentum"].ord_type) == ("market", "market")  # contract §9
    assert cfg.strategies["revert"].ord_type == "limit" and "ord_type" not in cfg.strategies["revert"].params
    assert list(cfg.strategies) == ["momentum", "revert"]
    m, r = cfg.strategies["momentum"], cfg.strategies["revert"]
    assert (m.client_id, m.rule, m.symbols, m.program, m.table) == (
        "momentum", config.DEFAULT_RULE, ("AAPL", "MSFT"), "strategy-momentum", "strategies.momentum")
    assert load_rule(m).params == RuleParams(short_window=3)
    rule = load_rule(r)
    assert isinstance(rule, MeanReversion) and rule.name == "shared.rule:MeanReversion"
    assert rule.params == MeanReversionParams(window=30, entry_z=1.5) and rule.history == 30
    assert [s.program for s in cfg.all_strategies()] == ["strategy", "strategy-momentum", "strategy-revert"]
    assert cfg.strategy_named("revert") is r and cfg.strategy_named("") is cfg.strategy
    with pytest.raises(ConfigError, match="strategies.nope"):
        cfg.strategy_named("nope")


# A rule and its params are checked when the strategy starts (and by deploy/up's
# prepare): the other daemons never import a rule. (id, strategy table, text the error must contain)
BAD_RULES = [
    ("wrong_type_bool_for_int", "qty = true", "strategy.qty"),
    ("wrong_type_float_for_int", "qty = 1.5", "strategy.qty"),
    ("short_equals_long", "short_window = 20\nlong_window = 20", "strategy.short_window"),
    ("short_above_long", "short_window = 21", "strategy.short_window"),
    ("short_zero", "short_window = 0", "strategy.short_window"),
    ("bearish_above_bullish", "bearish = 70", "strategy.bearish"),
    ("qty_zero", "qty = 0", "strategy.qty"),
    ("unknown_param", "poll_us = 1000", "strategy.poll_us: unknown key"),
    ("param_of_another_rule", 'rule = "shared.rule:MeanReversion"\nshort_window = 3', "strategy.short_window"),
    ("mean_reversion_exit_above_entry", 'rule = "shared.rule:MeanReversion"\nexit_z = 3.0', "strategy.exit_z"),
    ("no_such_module", 'rule = "shared.nope:Rule"', "strategy.rule: cannot import 'shared.nope:Rule'"),
    ("no_such_class", 'rule = "shared.rule:Nope"', "strategy.rule: cannot import 'shared.rule:Nope'"),
    ("not_a_rule", 'rule = "shared.rule:Tick"', "strategy.rule: 'shared.rule:Tick' is not a rule"),
    ("module_fails_to_import", 'rule = "broken_rule:Rule"', "strategy.rule: cannot import 'broken_rule:Rule': Runtime"),
]


@pytest.mark.parametrize(("table", "names"), [b[1:] for b in BAD_RULES], ids=[b[0] for b in BAD_RULES])
def test_bad_rule_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, names: str) -> None:
    write(tmp_path, 'raise RuntimeError("broken on purpose")\n', "broken_rule.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config.load(write(tmp_path, f"[strategy]\n{table}\n"))
    with pytest.raises(ConfigError) as e:
        load_rule(cfg.strategy)
    msg = str(e.value)
    assert names in msg
    assert "\n" not in msg
