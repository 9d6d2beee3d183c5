"""Off loopback, safely (issue 11): roles choose a host's programs; order entry
over TLS with both ends verified; market data behind a subscription token; a
bad certificate or token is a clear, logged refusal. Loopback stays the default
and needs none of it.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shared import config, tls
from shared.execjournal import read_lines
from shared.ops import ctl
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient, Peer
from shared.protocol import PROTO, Hello, Reject, Subscribe

ROOT = Path(__file__).resolve().parents[1]


def certs(d: Path, *hosts: str) -> Path:
    """deploy/certs into ``d``: a CA, the hosts' certificates, the two tokens."""
    subprocess.run([str(ROOT / "deploy" / "certs"), "--dir", str(d), *hosts], check=True, capture_output=True)
    return d


@pytest.mark.parametrize("raw, error", [
    ({"ordermanager": {"host": "10.231.2.31"}}, "ordermanager.host: 10.231.2.31 is off loopback"),
    ({"ordermanager": {"host": "0.0.0.0"}}, "ordermanager.host: 0.0.0.0 is off loopback"),
    ({"ordermanager": {"host": "orders.example"}}, "ordermanager.host: orders.example is off loopback"),
    ({"gateway": {"host": "10.231.1.11"}}, "gateway.host: 10.231.1.11 is off loopback"),
    ({"tls": {"enabled": True, "ca": "a", "cert": "b"}}, "tls.key: needed"),
    ({"host": {"roles": ["market", "quant"]}}, "host.roles: unknown role 'quant'"),
    ({"host": {"roles": []}}, "host.roles: at least one role"),
    ({"host": {"roles": "trader"}}, "host.roles: expected a list of strings"),
])
def test_config_off_loopback_needs_tls_and_a_token(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(config.ConfigError, match=error):
        config.parse(raw)


def test_config_loopback_needs_nothing_and_off_loopback_with_both_is_good() -> None:
    assert config.parse({}).tls.enabled is False
    assert config.parse({"ordermanager": {"host": "127.0.0.2"}, "gateway": {"host": "localhost"}})
    cfg = config.parse({"ordermanager": {"host": "10.231.2.31"}, "gateway": {"host": "10.231.1.11",
                        "token_file": "md.token"}, "tls": {"enabled": True, "ca": "a", "cert": "b", "key": "c"}})
    assert cfg.tls.enabled and cfg.gateway.token_file == "md.token"


@pytest.mark.parametrize("roles, programs", [
    (["market", "trader", "orders"], {"bootstrap", "exchange", "gateway", "orderbook", "ordermanager", "strategy"}),
    (["market"], {"exchange", "gateway"}),
    (["trader"], {"bootstrap", "orderbook", "strategy"}),
    (["orders"], {"ordermanager"}),
    (["market", "orders"], {"exchange", "gateway", "ordermanager"}),
])
def test_roles_choose_the_supervisord_programs(roles: list[str], programs: set[str]) -> None:
    programs = programs | {"auditor", "metrics"}  # every host watches itself
    cfg = config.parse({"host": {"roles": roles}})
    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    out = ctl.render(cfg, text, "/srv/x/deploy")
    got = {line.split(":", 1)[1].rstrip("]\n") for line in out.splitlines()
           if line.startswith(("[program:", "[eventlistener:"))}
    assert got == programs
    assert "%(here)s" not in out and "/srv/x/deploy/../daemons/" in out
    assert "[supervisorctl]" in out and "[unix_http_server]" in out
    assert cfg.runs("strategy-momentum") == ("trader" in roles)


def test_default_render_is_the_shipped_config() -> None:
    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    assert ctl.render(config.parse({}), text, "/d") == text.replace("%(here)s", "/d")


def test_render_writes_the_strategies_programs_in_place_of_the_include() -> None:
    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    cfg = config.parse({"strategies": {"revert": {"rule": "shared.rule:MeanReversion"}}})
    out = ctl.render(cfg, text, "/d")
    assert "[program:strategy-revert]" in out and "[include]" not in out
    assert "/d/../daemons/strategy.py revert" in out
    market = config.parse({"host": {"roles": ["market"]}, "strategies": {"revert": {}}})
    assert "[program:strategy-revert]" not in ctl.render(market, text, "/d")


def test_certs_are_made_once_with_private_keys_0600(tmp_path: Path) -> None:
    d = certs(tmp_path / "pki", "orders=127.0.0.1,10.231.2.31", "trader1")
    for name in ("ca.key", "orders.key", "trader1.key", "order.token", "md.token"):
        assert (d / name).stat().st_mode & 0o777 == 0o600, name
    before = (d / "orders.crt").read_bytes()
    certs(d, "orders=127.0.0.1")
    assert (d / "orders.crt").read_bytes() == before
    r = subprocess.run(["openssl", "x509", "-in", str(d / "orders.crt"), "-noout", "-ext", "subjectAltName"],
                       capture_output=True, text=True, check=True)
    assert "IP Address:10.231.2.31" in r.stdout and "DNS:orders" in r.stdout
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "deploy/pki/" in gitignore and "deploy/order.token" in gitignore


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    d = certs(tmp_path / "pki", "orders=127.0.0.1")
    cfg = config.parse({"tls": {"enabled": True, "ca": str(d / "ca.crt"), "cert": str(d / "orders.crt"),
                                "key": str(d / "orders.key")}})
    assert tls.server_context(cfg) is not None
    os.chmod(d / "orders.key", 0o644)
    with pytest.raises(tls.TlsError, match=r"tls.key: .* mode 0644; a private key must be 0600"):
        tls.server_context(cfg)
    bad = config.parse({"tls": {"enabled": True, "ca": str(d / "nope.crt"), "cert": "x", "key": "y"}})
    with pytest.raises(tls.TlsError, match="tls.ca: .*nope.crt not found"):
        tls.client_context(bad)


def _client_ctx(d: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / f"{name}.crt"), str(d / f"{name}.key"))
    return ctx


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One stack on loopback with everything off loopback would need: TLS order entry, a token."""
    base = tmp_path_factory.mktemp("secure")
    d = certs(base / "pki", "orders=127.0.0.1", "trader")
    # The strategy presents the trader's certificate; the ordermanager its own: one file set per
    # host in a fleet, here both on one machine, so the server side gets the orders pair.
    # Heartbeats of 1 s (a 3 s timeout): the strategy's order link is checked never to drop, and a
    # 750 ms timeout could drop it by chance on a loaded machine.
    overrides = {
        "gateway": {"token_file": str(d / "md.token"), "news_rate": 20, "heartbeat_ms": 1000},
        "ordermanager": {"heartbeat_ms": 1000},
        "tls": {"enabled": True, "ca": str(d / "ca.crt"), "cert": str(d / "orders.crt"),
                "key": str(d / "orders.key")},
        "strategy": {"bullish": 50, "bearish": 50, "short_window": 2, "long_window": 4},
    }
    s = Stack(base / "stack", overrides)
    try:
        s.start(timeout=60)
        yield s, d
    finally:
        s.stop()


def test_tls_order_entry_and_token_market_data_trade(secure: Any) -> None:
    s, _ = secure
    s.wait_for(lambda: len(s.journal()) >= 3, timeout=60)
    assert [r["tls"] for r in s.events("ordermanager", "listening")] == [True]
    est = s.events("ordermanager", "tls_established")
    assert est and est[0]["version"] in ("TLSv1.3", "TLSv1.2") and est[0]["peer_cn"] == "orders"
    assert s.events("strategy", "tls_established")[0]["peer_cn"] == "orders"
    assert s.events("strategy", "logged_on")
    assert not s.events("gateway", "subscription_refused")
    assert {r["stream"] for r in s.events("gateway", "connected")} == {"price", "news"}
    # The ordermanager reaches the venue over TLS too, and the strategy's orders fill through it.
    assert [r["tls"] for r in s.events("exchange", "listening") if r.get("stream") != "price"] == [True]
    venue = [r for r in s.events("ordermanager", "tls_established") if r["stream"] == "exchange"]
    assert venue and venue[0]["peer_cn"] == "orders"
    journal = s.cfg.resolve(s.cfg.ordermanager.journal)
    s.wait_for(lambda: any(x.last_qty for x in read_lines(journal)), timeout=60)


def test_a_certificate_from_another_ca_is_refused_and_logged(secure: Any, tmp_path: Path) -> None:
    s, d = secure
    other = certs(tmp_path / "other", "mallory")
    port = s.cfg.ordermanager.port
    n0 = len(s.events("ordermanager", "tls_refused"))
    with pytest.raises((ssl.SSLError, OSError, EOFError)):
        # TLS 1.3: the client's handshake ends before the server judges its certificate,
        # so the refusal arrives as an alert on the first read.
        with OrderClient("127.0.0.1", port, tls=_client_ctx_with_ca(other, d, "mallory")) as c:
            c.logon("mallory", s.token)
    s.wait_for(lambda: len(s.events("ordermanager", "tls_refused")) > n0, timeout=20)
    refused = s.events("ordermanager", "tls_refused")[-1]
    assert "certificate" in refused["reason"] and refused["stream"] == "orders"
    # a plain TCP client speaking the protocol in clear is refused too
    with Peer("127.0.0.1", port) as p:
        p.send_raw(b"\x00\x00\x00\x05hello")
        with pytest.raises((EOFError, ConnectionError, TimeoutError)):
            p.recv(timeout=10)
    s.wait_for(lambda: len(s.events("ordermanager", "tls_refused")) > n0 + 1, timeout=20)
    # a good certificate still logs on, and the strategy never lost its link
    with OrderClient("127.0.0.1", port, tls=_client_ctx(d, "trader")) as c:
        ack = c.logon("probe", s.token)
        assert ack.session
    assert s.status()["ordermanager"] == "RUNNING"
    assert not [r for r in s.events("strategy", "disconnected") if r["stream"] == "orders"]


def _client_ctx_with_ca(own: Path, server_ca: Path, name: str) -> ssl.SSLContext:
    """Trusts the real server, but shows a certificate of another CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(server_ca / "ca.crt"))
    ctx.load_cert_chain(str(own / f"{name}.crt"), str(own / f"{name}.key"))
    return ctx


def test_a_bad_or_missing_subscription_token_is_refused_and_logged(secure: Any) -> None:
    s, d = secure
    port = s.cfg.gateway.price_port
    with Peer("127.0.0.1", port) as p:
        p.send(Subscribe(proto=PROTO, token="not-the-token"))
        r = p.recv_type(Reject, Hello, timeout=10)
        assert isinstance(r, Reject) and r.reason == "unauthorized" and "token" in r.detail
    t0 = time.monotonic()
    with Peer("127.0.0.1", port) as p:  # says nothing: refused after the subscribe timeout
        r = p.recv_type(Reject, Hello, timeout=15)
        assert isinstance(r, Reject) and "no subscribe frame" in r.detail
        assert time.monotonic() - t0 >= 1.5
    refused = s.wait_for(lambda: len(s.events("gateway", "subscription_refused")) >= 2 and
                         s.events("gateway", "subscription_refused"), timeout=20)
    assert {r["detail"].split(" in ")[0] for r in refused} >= {"bad subscription token", "no subscribe frame"}
    with Peer("127.0.0.1", port) as p:  # the right token: hello
        p.send(Subscribe(proto=PROTO, token=(d / "md.token").read_text().strip()))
        assert isinstance(p.recv(timeout=10), Hello)
    assert s.status()["gateway"] == "RUNNING"


def test_a_subscriber_with_a_wrong_token_backs_off_and_says_why(secure: Any) -> None:
    """The gateway read its token at start; subscribers read theirs at each connect."""
    s, d = secure
    tok = d / "md.token"
    good = tok.read_text()
    try:
        tok.write_text("nope\n")
        s.ctl("restart", "orderbook", check=True)
        # Four refusals: the three reconnections after the first (each refusal closes, the next connect is one).
        s.wait_for(lambda: len(s.events("orderbook", "subscription_refused")) >= 4, timeout=30)
        r = s.events("orderbook", "subscription_refused")[0]
        assert r["reason"] == "unauthorized" and r["detail"] == "bad subscription token"
        tries = s.wait_for(lambda: [r["attempts"] for r in s.events("orderbook", "reconnected")][:3]
                           if len(s.events("orderbook", "reconnected")) >= 3 else None, timeout=30)
        assert tries[:3] == sorted(tries[:3]) and tries[2] >= 3, tries  # the backoff went on
    finally:
        tok.write_text(good)
    n = len([r for r in s.events("gateway", "connected") if r["stream"] == "price"])
    s.wait_for(lambda: len([r for r in s.events("gateway", "connected") if r["stream"] == "price"]) > n,
               timeout=30)  # with the right token again, it is served


def test_plain_loopback_default_has_no_tls_and_no_token(stack: Stack) -> None:
    stack.wait_for(lambda: stack.events("strategy", "logged_on"), timeout=30)
    assert [r["tls"] for r in stack.events("ordermanager", "listening")] == [False]
    assert not stack.events("ordermanager", "tls_established")
    with socket.create_connection(("127.0.0.1", stack.cfg.gateway.news_port), timeout=5) as sock:
        sock.settimeout(5)
        assert b'"type":"hello"' in sock.recv(4096)  # at once, unasked
