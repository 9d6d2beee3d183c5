"""The stack's one typed config, loaded from TOML (contract §3).

``STACK_CONFIG`` names the file (relative to the current directory), else
``deploy/stack.toml``. Defaults live only in the dataclasses of shared.configtypes; every
error names the key it is about.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

from shared import tape as tape_mod
from shared.configtypes import (
    _NAME,
    DEFAULT_PATH,
    DEFAULT_RULE,
    ROLES,
    ROOT,
    Auditor,
    Book,
    Config,
    ConfigError,
    Exchange,
    Gateway,
    Host,
    Links,
    Metrics,
    OrderManager,
    Prometheus,
    Recorder,
    Risk,
    RiskLimits,
    Strategy,
    Tls,
    is_loopback,
)

# The types are the config's too: every module names them config.<Type>.
__all__ = [
    "Auditor",
    "Book",
    "Config",
    "ConfigError",
    "DEFAULT_PATH",
    "DEFAULT_RULE",
    "Exchange",
    "Gateway",
    "Host",
    "Links",
    "Metrics",
    "OrderManager",
    "Prometheus",
    "Recorder",
    "ROLES",
    "ROOT",
    "Risk",
    "RiskLimits",
    "Strategy",
    "Tls",
    "is_loopback",
    "load",
    "load_or_exit",
    "parse",
    "replace",
]

_PORTS = {"price_port", "news_port", "port"}


def _check(section: str, key: str, value: Any, typ: Any, signed: bool = False) -> Any:
    name = f"{section}.{key}" if section else key
    origin = get_origin(typ)
    if origin is tuple:  # a list of strings in TOML
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        return tuple(value)
    if origin is list:  # a list of the TOML file; its items unchecked
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        return value
    if typ is Any:
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is bool or isinstance(value, bool):
        ok = typ is bool and isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise ConfigError(f"{name}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    if key in _PORTS and not 1 <= value <= 65535:
        raise ConfigError(f"{name}: port {value} out of range 1..65535")
    if not signed and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{name}: must not be negative, got {value}")
    return value


def _keys(name: str, cls: type, raw: Any, signed: bool = False) -> dict[str, Any]:
    """A table's keys, each checked against ``cls``'s fields and types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key")
    for key, f in known.items():
        if key not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name}.{key}: required")
    return {k: _check(name, k, v, hints[k], signed) for k, v in raw.items()}


def section(name: str, cls: type, raw: Any, signed: bool = False) -> Any:
    """A table as ``cls``, each key checked against its fields and types."""
    return cls(**_keys(name, cls, raw, signed))


def _risk(raw: Any) -> Risk:
    """``[risk]`` with its ``[risk.clients."<client_id>"]`` tables."""
    if not isinstance(raw, dict):
        raise ConfigError("risk: expected a table")
    raw = dict(raw)
    clients = raw.pop("clients", {})
    default = section("risk", RiskLimits, raw)
    if not isinstance(clients, dict):
        raise ConfigError("risk.clients: expected a table of client_id tables")
    out = []
    for cid, table in clients.items():
        name = f"risk.clients.{json.dumps(cid)}"
        if not 1 <= len(cid) <= 128 or not all(" " <= c <= "~" for c in cid):
            raise ConfigError(f"{name}: a client_id is 1..128 printable ASCII characters")
        out.append((cid, dataclasses.replace(default, **_keys(name, RiskLimits, table))))
    return Risk(default, tuple(out))


_TOML_SCALARS = (str, int, float, bool)


def _strategy(table: str, name: str, raw: Any, symbols: tuple[str, ...]) -> Strategy:
    """A strategy table: its own keys typed, the rest kept for its rule."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{table}: expected a table")
    own = {k: raw[k] for k in ("client_id", "rule", "symbols", "ord_type") if k in raw}
    params = {k: v for k, v in raw.items() if k not in own}
    for k, v in params.items():
        if not isinstance(v, _TOML_SCALARS) and not (isinstance(v, list) and all(
                isinstance(x, _TOML_SCALARS) for x in v)):
            raise ConfigError(f"{table}.{k}: expected a number, string, bool or list of them")
    kw: dict[str, Any] = {"name": name, "params": params}
    if name:
        kw["client_id"] = name
    for k in ("client_id", "rule", "ord_type"):
        if k in own:
            kw[k] = _check(table, k, own[k], str)
    if kw.get("ord_type", "market") not in ("market", "limit"):
        raise ConfigError(f"{table}.ord_type: must be 'market' or 'limit', got {kw['ord_type']!r}")
    if "symbols" in own:
        syms = own["symbols"]
        if not isinstance(syms, list) or not syms or not all(isinstance(x, str) for x in syms):
            raise ConfigError(f"{table}.symbols: expected a non-empty list of symbols")
        unknown = [x for x in syms if x not in symbols]
        if unknown:
            raise ConfigError(f"{table}.symbols: {unknown} not among the config's symbols")
        kw["symbols"] = tuple(syms)
    st = Strategy(**kw)
    if not re.fullmatch(r"[\x21-\x7e]{1,100}", st.client_id):
        raise ConfigError(f"{table}.client_id: 1..100 printable ASCII characters without spaces, "
                          f"got {st.client_id!r}")
    mod, _, cls = st.rule.partition(":")
    if not (mod and cls and all(p.isidentifier() for p in [*mod.split("."), *cls.split(".")])):
        raise ConfigError(f"{table}.rule: expected 'module:Class', got {st.rule!r}")
    return st


def _validate(cfg: Config) -> None:
    if not cfg.symbols:
        raise ConfigError("symbols: at least one symbol is needed")
    for s in cfg.symbols:
        if not isinstance(s, str) or not s or len(s.encode()) > 16 or not s.isascii():
            raise ConfigError(f"symbols: {s!r} is not 1..16 ASCII characters")
    if len(set(cfg.symbols)) != len(cfg.symbols):
        raise ConfigError("symbols: duplicates")
    owner: dict[str, str] = {}
    for st in cfg.all_strategies():
        if st.client_id in owner:
            raise ConfigError(f"{st.table}.client_id: {st.client_id!r} is also the client_id of "
                              f"{owner[st.client_id]}; each strategy needs its own")
        owner[st.client_id] = st.table
    if cfg.book.ring_len < 1:
        raise ConfigError("book.ring_len: must be >= 1")
    if not cfg.book.segment or "/" in cfg.book.segment:
        raise ConfigError("book.segment: must be a plain name")
    for sec, key in (("gateway", "heartbeat_ms"), ("ordermanager", "heartbeat_ms"), ("exchange", "heartbeat_ms"),
                     ("book", "stale_ms")):
        if getattr(getattr(cfg, sec), key) < 1:
            raise ConfigError(f"{sec}.{key}: must be >= 1")
    for name in ("price", "news", "orders", "exchange"):
        v = getattr(cfg.links, name)
        host, _, port = v.rpartition(":")
        if v and not (host and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"links.{name}: expected 'host:port', got {v!r}")
    _validate_hosts(cfg)
    _validate_tape(cfg)
    _validate_prometheus(cfg)
    if cfg.recorder.roll_mb < 0:
        raise ConfigError(f"recorder.roll_mb: must be >= 0 (0: one tape per start), got {cfg.recorder.roll_mb}")
    if cfg.recorder.enabled and not cfg.recorder.dir:
        raise ConfigError("recorder.dir: must name the directory of the session tapes")
    om = cfg.ordermanager
    if om.journal_sync not in ("write", "fsync"):
        raise ConfigError("ordermanager.journal_sync: must be 'write' or 'fsync'")
    if om.journal_segment_bytes < 4096:
        raise ConfigError("ordermanager.journal_segment_bytes: must be >= 4096")
    if om.journal_window < 64:
        raise ConfigError("ordermanager.journal_window: must be >= 64")
    roll_at_minute(om.journal_roll_at)
    _validate_exchange(cfg.exchange)


def _validate_exchange(x: Exchange) -> None:
    """The venue's keys the types alone do not check."""
    if not x.spread_bps < 20_000:
        raise ConfigError(f"exchange.spread_bps: must be below 20000 (a bid above 0), got {x.spread_bps}")
    if not x.journal:
        raise ConfigError("exchange.journal: a path is needed")
    if x.journal_sync not in ("write", "fsync"):
        raise ConfigError("exchange.journal_sync: must be 'write' or 'fsync'")
    if x.journal_segment_bytes < 4096:
        raise ConfigError("exchange.journal_segment_bytes: must be >= 4096")
    if x.logon_timeout_ms < 1:
        raise ConfigError("exchange.logon_timeout_ms: must be >= 1")


def _validate_tape(cfg: Config) -> None:
    """``gateway.tape``: not with ``gateway.replay``; on the host that runs the gateway, each of
    its files has a tape's header (the records' values are checked when the gateway loads them)."""
    g = cfg.gateway
    if not g.tape:
        return
    if g.replay:
        raise ConfigError("gateway.tape: set gateway.tape or gateway.replay, not both")
    if cfg.runs("gateway"):
        try:
            for path in tape_mod.files(cfg.resolve(g.tape)):
                tape_mod.read_header(path)
        except tape_mod.TapeError as e:
            raise ConfigError(f"gateway.tape: {e}") from None


def roll_at_minute(value: str) -> int | None:
    """``ordermanager.journal_roll_at`` ("HH:MM" UTC, or empty) as minutes after midnight, or None."""
    if not value:
        return None
    hh, sep, mm = value.partition(":")
    if not (sep and len(hh) == len(mm) == 2 and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        raise ConfigError(f"ordermanager.journal_roll_at: expected 'HH:MM' (UTC) or '', got {value!r}")
    return int(hh) * 60 + int(mm)


# A Prometheus duration: units from years down to milliseconds, each at most once, in this order.
_DURATION = re.compile(r"^(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


def _validate_prometheus(cfg: Config) -> None:
    """Durations Prometheus takes, ``host:port`` targets, its port not the metrics program's."""
    p = cfg.prometheus
    for key in ("retention", "scrape_interval", "evaluation_interval"):
        v = getattr(p, key)
        if not _DURATION.match(v) or not any(c.isdigit() and c != "0" for c in v):
            raise ConfigError(f"prometheus.{key}: expected a Prometheus duration like '15d', '5s' or '500ms', "
                              f"got {v!r}")
    if not p.binary:
        raise ConfigError("prometheus.binary: must name the prometheus program")
    if not p.rules:
        raise ConfigError("prometheus.rules: must name a rules file")
    for t in p.targets:
        host, _, port = t.rpartition(":")
        if not (host and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"prometheus.targets: expected 'host:port', got {t!r}")
    if p.port == cfg.metrics.port and (p.host == cfg.metrics.host or "0.0.0.0" in (p.host, cfg.metrics.host)):
        raise ConfigError(f"prometheus.port: {p.port} is also metrics.port; each needs its own")


def _validate_hosts(cfg: Config) -> None:
    """Roles are known; off loopback needs TLS for order entry and a token for market data."""
    for r in cfg.host.roles:
        if r not in ROLES:
            raise ConfigError(f"host.roles: unknown role {r!r}; known: {', '.join(ROLES)}")
    if not cfg.host.roles:
        raise ConfigError("host.roles: at least one role is needed")
    t = cfg.tls
    if t.enabled:
        for key in ("ca", "cert", "key"):
            if not getattr(t, key):
                raise ConfigError(f"tls.{key}: needed when tls.enabled = true")
    om, g = cfg.ordermanager, cfg.gateway
    for sec, host in (("ordermanager", om.host), ("exchange", cfg.exchange.host)):
        if not is_loopback(host) and not t.enabled:
            raise ConfigError(f"{sec}.host: {host} is off loopback; order entry there needs "
                              "[tls] enabled = true with ca, cert and key (deploy/certs makes them)")
    if not is_loopback(g.host) and not g.token_file:
        raise ConfigError(f"gateway.host: {g.host} is off loopback; market data there needs "
                          "gateway.token_file, the subscription token")


def parse(raw: dict[str, Any], path: str = "") -> Config:
    """Build and validate a Config from a TOML document's dict."""
    kwargs: dict[str, Any] = {}
    sections = {f.name: f for f in fields(Config) if f.name not in ("symbols", "path", "strategy", "strategies")}
    symbols = raw.get("symbols", Config.symbols)
    if not isinstance(symbols, list | tuple):
        raise ConfigError("symbols: expected a list of strings")
    for key, value in raw.items():
        if key == "symbols":
            kwargs["symbols"] = tuple(value)
        elif key == "risk":
            kwargs["risk"] = _risk(value)
        elif key == "strategy":
            kwargs["strategy"] = _strategy("strategy", "", value, tuple(symbols))
        elif key == "strategies":
            if not isinstance(value, dict):
                raise ConfigError("strategies: expected tables [strategies.<name>]")
            for name in value:
                if not _NAME.match(name):
                    raise ConfigError(f"strategies.{name}: a name of letters, digits, '_' and '-' is needed")
            kwargs["strategies"] = {n: _strategy(f"strategies.{n}", n, v, tuple(symbols)) for n, v in value.items()}
        elif key in sections:
            cls = get_type_hints(Config)[key]
            kwargs[key] = section(key, cls, value)
        else:
            raise ConfigError(f"{key}: unknown key")
    cfg = Config(**kwargs, path=path)
    _validate(cfg)
    return cfg


def config_path() -> Path:
    """The config file in force: $STACK_CONFIG or deploy/stack.toml."""
    env = os.environ.get("STACK_CONFIG")
    return Path(env).resolve() if env else DEFAULT_PATH


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config from ``path`` or the one in force."""
    p = Path(path) if path else config_path()
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse(raw, str(p))


def load_or_exit(program: str) -> Config:
    """Load the config; a bad one is one clear line on stderr and exit 2. Each daemon calls it
    first, before its heavy imports (about 1 s on a busy machine): a start bound to fail then
    exits well within supervisord's ``startsecs``, so it is never RUNNING and a crash loop ends
    in FATAL."""
    try:
        return load()
    except ConfigError as e:
        print(f"{program}: bad config: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy with some keys of some sections changed (tests, bench)."""
    return dataclasses.replace(
        cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()}
    )
