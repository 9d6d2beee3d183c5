"""Off loopback, safely: order entry over TLS (the standard library's ``ssl``:
the contexts, a connection that handshakes without blocking, a reconnecting
client) and the market-data subscription frame.

Both ends present a certificate signed by the fleet's CA and verify the
other's (mutual TLS); the client also checks the server's name or address.
A private key readable by anyone but its owner is refused, as ssh does.
"""

from __future__ import annotations

import socket
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import config as config_mod
from shared.net import READ, WRITE, Client, Conn, Loop, tune
from shared.protocol import PROTO, Subscribe, frame


class TlsError(ValueError):
    """The TLS files are missing, unreadable, too open or invalid: the message names the key."""


def _files(cfg: config_mod.Config) -> tuple[Path, Path, Path]:
    t = cfg.tls
    paths = []
    for key in ("ca", "cert", "key"):
        p = cfg.resolve(getattr(t, key))
        if not p.is_file():
            raise TlsError(f"tls.{key}: {p} not found")
        paths.append(p)
    key_path = paths[2]
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise TlsError(f"tls.key: {key_path} has mode {mode:04o}; a private key must be 0600 (chmod 600 it)")
    return paths[0], paths[1], paths[2]


def _load(ctx: ssl.SSLContext, cfg: config_mod.Config) -> ssl.SSLContext:
    ca, cert, key = _files(cfg)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"tls.ca: {ca}: {e}") from None
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"tls.cert/tls.key: {cert}, {key}: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cfg: config_mod.Config) -> ssl.SSLContext | None:
    """The ordermanager's context (clients must show a CA-signed certificate), or None without TLS."""
    if not cfg.tls.enabled:
        return None
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cfg)


def client_context(cfg: config_mod.Config) -> ssl.SSLContext | None:
    """A strategy's context (checks the ordermanager's certificate and name), or None without TLS."""
    if not cfg.tls.enabled:
        return None
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cfg)


class TlsConn(Conn):
    """A Conn over TLS: a non-blocking handshake first (a refusal is logged as
    ``tls_refused``), then each event reads what OpenSSL has already decrypted
    too, which select() cannot see. ``on_ready(conn)`` runs once it is up."""

    def __init__(self, *args: Any, on_ready: Callable[[Conn], None] | None = None, **kw: Any) -> None:
        self.ready = False
        self.on_ready = on_ready
        super().__init__(*args, **kw)
        self.loop.modify(self.sock, self._on_event, READ | WRITE)  # whoever speaks first may

    def _on_event(self, mask: int) -> None:
        if not self.ready:
            self._handshake()
            return
        super()._on_event(mask)
        while not self.closed and self.sock.pending():  # type: ignore[attr-defined]
            self._read()

    def _handshake(self) -> None:
        sock: ssl.SSLSocket = self.sock  # type: ignore[assignment]
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.modify(sock, self._on_event, READ)
            return
        except ssl.SSLWantWriteError:
            self.loop.modify(sock, self._on_event, READ | WRITE)
            return
        except OSError as e:  # ssl.SSLError and its certificate errors are OSErrors
            self.log.warning("tls_refused", peer=self.peer, stream=self.stream,
                             reason=getattr(e, "verify_message", None) or e.strerror or str(e))
            self.close("tls_refused")
            return
        self.ready = True
        self.log.info("tls_established", peer=self.peer, stream=self.stream, version=sock.version(),
                      peer_cn=peer_name(sock))
        self.loop.modify(sock, self._on_event, READ | WRITE if self.out else READ)
        if self.on_ready is not None:
            self.on_ready(self)
        if not self.closed and sock.pending():
            self._read()

    def write(self, data: bytes | bytearray) -> None:
        """Queue until the handshake is done, then as Conn."""
        if self.ready:
            super().write(data)
        elif not self.closed:
            self.out += data


def peer_name(sock: ssl.SSLSocket) -> str | None:
    """The commonName of the peer's verified certificate, if it showed one."""
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return None


def connection(loop: Loop, log: Any, sock: socket.socket, peer: str, stream: str,
               on_message: Callable[[Conn, Any], None], on_close: Callable[[Conn, str], None],
               decoder: Any = None) -> Conn:
    """A Conn for an accepted socket: a TlsConn if the Server wrapped it in TLS."""
    cls = TlsConn if isinstance(sock, ssl.SSLSocket) else Conn
    return cls(loop, log, sock, peer, stream, on_message, on_close, decoder)


class TlsClient(Client):
    """A Client whose link is up once the TLS handshake with the server is done."""

    def __init__(self, *args: Any, tls: ssl.SSLContext, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tls = tls

    def _established(self, sock: socket.socket) -> None:
        tune(sock)
        try:
            ssock = self.tls.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        except (ssl.SSLError, ValueError) as e:
            sock.close()
            self._failed(time.monotonic(), str(e))
            return
        self.conn = TlsConn(self.loop, self.log, ssock, self.peer, self.stream, self.on_message, self._closed,
                            self.decoder, on_ready=self._up)


def subscribe_frame(cfg: config_mod.Config) -> bytes | None:
    """The subscriber's first frame when ``gateway.token_file`` is set (read afresh: it may be
    rotated), else None; OSError if the file cannot be read."""
    if not cfg.gateway.token_file:
        return None
    token = cfg.resolve(cfg.gateway.token_file).read_text().strip()
    return frame(Subscribe(proto=PROTO, token=token))


def subscribe(cfg: config_mod.Config, log: Any, client: Client, conn: Conn) -> None:
    """On a market-data connection: send the subscription frame when the config wants one; a token
    file that cannot be read is logged and the link refused (retried with backoff), never a crash."""
    try:
        sub = subscribe_frame(cfg)
    except OSError as e:
        log.error("token_unreadable", path=cfg.gateway.token_file, error=str(e))
        client.refuse("no_token")
        return
    if sub is not None:
        conn.write(sub)
