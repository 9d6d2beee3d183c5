"""The config's types: one frozen dataclass per TOML table, with its defaults
(contract §3). ``shared.config`` reads a file into them and checks every value;
the rest of the stack imports them from there.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "deploy" / "stack.toml"


class ConfigError(ValueError):
    """A bad config: the message names the key."""


@dataclass(frozen=True)
class Gateway:
    """The price and news feeds."""

    host: str = "127.0.0.1"
    price_port: int = 8000
    news_port: int = 8001
    price_rate: float = 100.0
    news_rate: float = 2.0
    seed: int = 0
    heartbeat_ms: int = 250
    backlog_bytes: int = 4_194_304  # unsent bytes before a subscriber is dropped
    replay: str = ""  # CSV of symbol,price to replay instead of the random walk
    tape: str = ""  # a tape (shared/tape.py, stack-record) to serve instead of the random walk
    speed: float = 1.0  # the tape's pace: 1.0 as recorded (its ts_ns gaps), 2.0 twice as fast, 0 as fast as possible
    token_file: str = ""  # subscription token: when set, a subscriber's first frame must carry it
    state: str = ""  # the walk's last prices, so a restart continues them (shared/lastprices.py); "": none


@dataclass(frozen=True)
class OrderManager:
    """Order entry and the journal."""

    host: str = "127.0.0.1"
    port: int = 8002
    token_file: str = "deploy/order.token"
    journal: str = "logs/orders.jsonl"
    journal_sync: str = "write"  # "write": in the OS before the ack; "fsync": on disk
    journal_segment_bytes: int = 16_777_216  # the open segment (the exec journal's too) is rolled past this size
    journal_roll_at: str = ""  # "HH:MM" UTC: also roll at this session boundary each day ("": never)
    journal_window: int = 8192  # order ids kept per client for de-duplication (at least)
    heartbeat_ms: int = 250
    max_qty: int = 1_000_000
    max_clients: int = 1024
    logon_timeout_ms: int = 2000


@dataclass(frozen=True)
class Exchange:
    """``[exchange]``: the venue (contract §9): where the ordermanager reaches it, its quote, its journal."""

    host: str = "127.0.0.1"
    port: int = 8003  # ordermanager -> exchange only, with the order-entry token (and TLS off loopback)
    spread_bps: float = 2.0  # its quote around the last price p: bid = p(1 - s/2), ask = p(1 + s/2), s = bps/1e4
    depth: int = 100  # shares at its bid and at its ask, renewed with every price tick of the symbol
    journal: str = "logs/exchange.jsonl"
    journal_sync: str = "write"  # "write": in the OS before an exec is sent; "fsync": on disk
    journal_segment_bytes: int = 1_048_576  # rolled (with a checkpoint) past this size: bounds a restart's replay
    heartbeat_ms: int = 250
    logon_timeout_ms: int = 2000


@dataclass(frozen=True)
class Book:
    """The shared-memory price book."""

    segment: str = "tradestack_book"
    stale_ms: int = 500
    ring_len: int = 256  # ticks kept per symbol in the ring (contract §8)


DEFAULT_RULE = "shared.rule:MovingAverageSentiment"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")  # becomes part of a supervisord program name


@dataclass(frozen=True)
class Strategy:
    """One strategy program: ``[strategy]`` (program ``strategy``) or
    ``[strategies.<name>]`` (program ``strategy-<name>``). Its keys beyond these
    are its rule's own, checked by ``shared.decision.load_rule``."""

    client_id: str = "strategy-1"
    rule: str = DEFAULT_RULE  # "module:Class"
    symbols: tuple[str, ...] = ()  # empty: every symbol
    ord_type: str = "market"  # its orders' type when the rule does not say: "market" or "limit" (contract §9)
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # not a key: the table's name, "" for [strategy]

    @property
    def program(self) -> str:
        """Its supervisord program."""
        return f"strategy-{self.name}" if self.name else "strategy"

    @property
    def table(self) -> str:
        """Its table in the config, for messages."""
        return f"strategies.{self.name}" if self.name else "strategy"


@dataclass(frozen=True)
class Auditor:
    """Where the supervisord event listener writes."""

    log: str = "logs/audit.log"


@dataclass(frozen=True)
class Links:
    """Where clients connect, when not straight to the server ("host:port";
    empty: the server's own address). A fault proxy is placed on a link by
    pointing it here."""

    price: str = ""
    news: str = ""
    orders: str = ""
    exchange: str = ""  # the ordermanager's link to the venue


@dataclass(frozen=True)
class Metrics:
    """``[metrics]``: where the metrics program serves Prometheus text at GET /metrics (contract §8)."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class Prometheus:
    """``[prometheus]``: a real Prometheus beside the stack, the supervisord program ``prometheus``
    (off by default), scraping the metrics program with deploy/prometheus/rules.yml."""

    enabled: bool = False
    host: str = "127.0.0.1"  # its web UI and HTTP API listen here
    port: int = 9090
    binary: str = "prometheus"  # a name on PATH or a path (Debian's package: /usr/bin/prometheus)
    retention: str = "15d"  # --storage.tsdb.retention.time
    data_dir: str = "logs/prometheus"  # its rendered prometheus.yml and, under data/, its TSDB
    rules: str = "deploy/prometheus/rules.yml"  # the alerting and recording rules it evaluates
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    targets: tuple[str, ...] = ()  # other hosts' metrics programs, "host:port"; this host's is always scraped


@dataclass(frozen=True)
class Recorder:
    """``[recorder]``: the stack records all the time (off by default): the supervisord program
    ``recorder`` writes every tick it receives to a new tape at each start, ``dir``/session-<UTC
    start>-<pid>.tape, closed as .1, .2, ... past ``roll_mb`` (shared/recorder.py, contract §10)."""

    enabled: bool = False
    dir: str = "logs/tapes"
    roll_mb: float = 256.0  # 0: one file per start, however large


@dataclass(frozen=True)
class RiskLimits:
    """One client's pre-trade limits at the ordermanager; 0 = no limit."""

    max_position: int = 0  # absolute position per symbol after the order
    max_orders_per_s: int = 0  # orders accepted per second (sliding)
    max_notional: float = 0.0  # qty x price of one order


@dataclass(frozen=True)
class Risk:
    """``[risk]``: the limits of every client, and ``[risk.clients."<client_id>"]`` overrides
    (a key an override leaves out is the default's)."""

    default: RiskLimits = field(default_factory=RiskLimits)
    clients: tuple[tuple[str, RiskLimits], ...] = ()

    def limits(self, client_id: str) -> RiskLimits:
        """The limits that hold for ``client_id``."""
        return dict(self.clients).get(client_id, self.default)


@dataclass(frozen=True)
class Host:
    """Which programs this host runs: a subset of the roles (default: all, one machine)."""

    roles: tuple[str, ...] = ("market", "trader", "orders")


@dataclass(frozen=True)
class Tls:
    """Order entry over TLS, both ends verified against the fleet's CA."""

    enabled: bool = False
    ca: str = ""  # the CA certificate (deploy/certs makes it)
    cert: str = ""  # this host's certificate
    key: str = ""  # its private key, mode 0600


# Role -> the supervisord programs it brings; the auditor runs on every host.
ROLES: dict[str, tuple[str, ...]] = {
    "market": ("gateway", "exchange"),
    "trader": ("bootstrap", "orderbook", "strategy"),
    "orders": ("ordermanager",),
}


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1; any other address or name is off loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    """The whole stack's config."""

    symbols: tuple[str, ...] = ("AAPL", "MSFT", "GOOGL")
    gateway: Gateway = field(default_factory=Gateway)
    ordermanager: OrderManager = field(default_factory=OrderManager)
    exchange: Exchange = field(default_factory=Exchange)
    book: Book = field(default_factory=Book)
    strategy: Strategy = field(default_factory=Strategy)
    strategies: dict[str, Strategy] = field(default_factory=dict)  # [strategies.<name>]
    auditor: Auditor = field(default_factory=Auditor)
    links: Links = field(default_factory=Links)
    risk: Risk = field(default_factory=Risk)
    metrics: Metrics = field(default_factory=Metrics)
    prometheus: Prometheus = field(default_factory=Prometheus)
    recorder: Recorder = field(default_factory=Recorder)
    host: Host = field(default_factory=Host)
    tls: Tls = field(default_factory=Tls)
    path: str = ""  # the file it came from (not a key)

    def link(self, name: str) -> tuple[str, int]:
        """(host, port) a client of the ``price``, ``news``, ``orders`` or ``exchange`` link connects to."""
        override = getattr(self.links, name)
        if override:
            host, _, port = override.rpartition(":")
            return host, int(port)
        if name == "orders":
            return self.ordermanager.host, self.ordermanager.port
        if name == "exchange":
            return self.exchange.host, self.exchange.port
        return self.gateway.host, self.gateway.price_port if name == "price" else self.gateway.news_port

    def runs(self, program: str) -> bool:
        """Whether this host runs the supervisord ``program`` (``strategy-<name>`` counts as trader)."""
        if program in ("auditor", "metrics"):  # every host watches itself
            return True
        if program == "prometheus":
            return self.prometheus.enabled
        if program == "recorder":
            return self.recorder.enabled
        base = "strategy" if program.startswith("strategy-") else program
        return any(base in ROLES[r] for r in self.host.roles)

    def all_strategies(self) -> list[Strategy]:
        """[strategy], then each [strategies.<name>] in file order."""
        return [self.strategy, *self.strategies.values()]

    def strategy_named(self, name: str) -> Strategy:
        """The strategy of program ``strategy`` ("") or ``strategy-<name>``."""
        if not name:
            return self.strategy
        if name not in self.strategies:
            raise ConfigError(f"strategies.{name}: no such table")
        return self.strategies[name]

    def resolve(self, rel: str) -> Path:
        """A config path: relative ones are taken from the repository root."""
        p = Path(rel)
        return p if p.is_absolute() else ROOT / p
