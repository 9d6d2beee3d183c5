"""The ordermanager's link to the venue (contract §9): a reconnecting client, as a strategy's link
to the ordermanager is.

Its first frame is a logon as ``ordermanager`` with the order-entry token and the highest exec_id
the ordermanager has journaled; the venue answers ``logon_ack``, then sends every exec above it,
then live ones. The link is usable (``up``) from the logon_ack until it is lost: only then may
orders be accepted. Heartbeats both ways; silence for 3 heartbeats closes it (then it reconnects).
TLS off loopback, with the same files as order entry.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec

from shared import config as config_mod
from shared import tls
from shared.net import Client, Conn, Loop, backoff
from shared.protocol import PROTO, BadMessage, Exec, Heartbeat, Logon, LogonAck, Message, Reject, frame

CLIENT_ID = "ordermanager"
REFUSED_BASE_S, REFUSED_CAP_S = 0.5, 30.0  # backoff after a refused logon

_decoder = msgspec.json.Decoder(Exec | Reject | LogonAck | Heartbeat)


class Owner(Protocol):
    """What the link tells the ordermanager."""

    def venue_logon(self) -> tuple[bytes, int | None]:
        """The token and the highest exec_id journaled (None: none), for the logon."""

    def venue_up(self, ack: LogonAck) -> None:
        """The logon_ack came: the venue takes orders (route what has no exec yet)."""

    def venue_exec(self, x: Exec) -> None: ...

    def venue_reject(self, r: Reject) -> None: ...

    def venue_down(self, reason: str) -> None: ...


class VenueLink:
    """The client end of the ordermanager -> exchange link."""

    def __init__(self, cfg: config_mod.Config, log: Any, loop: Loop, owner: Owner) -> None:
        self.log, self.owner = log, owner
        self.hb_s = cfg.exchange.heartbeat_ms / 1000
        self.up = False
        self.session: str | None = None
        self.refusals = 0
        self.down_reason = "not connected yet"
        ctx = tls.client_context(cfg)  # tls.TlsError: the caller says so and stops
        host, port = cfg.link("exchange")  # [links] exchange: a fault proxy in between
        args = (loop, log, host, port, "exchange", self._connected, self._on_message, self._down)
        self.client = (Client(*args, decoder=_decoder) if ctx is None
                       else tls.TlsClient(*args, decoder=_decoder, tls=ctx))

    @property
    def conn(self) -> Conn | None:
        return self.client.conn

    def send(self, data: bytes | bytearray) -> bool:
        """Send on the link if it is up; False (nothing sent) if not."""
        c = self.client.conn
        if not self.up or c is None:
            return False
        c.write(data)
        return True

    def _connected(self, conn: Conn) -> None:
        self.up = False
        token, last = self.owner.venue_logon()
        conn.write(frame(Logon(proto=PROTO, client_id=CLIENT_ID, token=token.decode(), last_exec_id=last)))

    def _down(self, reason: str) -> None:
        was_up, self.up = self.up, False
        self.down_reason = reason
        if was_up:
            self.owner.venue_down(reason)

    def _on_message(self, conn: Conn, msg: Message | BadMessage) -> None:
        t = type(msg)
        if t is Exec:
            self.owner.venue_exec(msg)  # type: ignore[arg-type]
        elif t is Heartbeat:
            pass
        elif t is LogonAck:
            ack: LogonAck = msg  # type: ignore[assignment]
            self.up, self.refusals = True, 0
            self.hb_s = ack.heartbeat_ms / 1000
            if ack.session != self.session:
                self.log.info("session", stream="exchange", session=ack.session, previous=self.session)
                self.session = ack.session
            self.owner.venue_up(ack)
        elif t is Reject and not self.up:
            self._refused(msg)  # type: ignore[arg-type]
        elif t is Reject:
            self.owner.venue_reject(msg)  # type: ignore[arg-type]
        elif t is BadMessage:
            self.log.error("venue_bad_message", peer=conn.peer, detail=msg.detail)  # type: ignore[union-attr]

    def _refused(self, r: Reject) -> None:
        """The venue refused our logon (a bad token, say): back off, slower each time."""
        self.refusals += 1
        delay = backoff(self.refusals, base=REFUSED_BASE_S, cap=REFUSED_CAP_S)
        self.log.error("venue_refused", reason=r.reason, detail=r.detail, attempt=self.refusals,
                       delay_ms=round(delay * 1000))
        self.client.refuse(r.reason)
        self.client.hold_off(delay)
        self.down_reason = f"refused: {r.reason}"

    def poll(self, now: float) -> None:
        """Housekeeping: (re)connect, give up a silent link, send a heartbeat when quiet."""
        self.client.poll(now)
        self.client.check_alive(now, 3 * self.hb_s)
        c = self.client.conn
        if c is not None and self.up and c.quiet_for(now) >= self.hb_s:
            c.write(frame(Heartbeat(ts_ns=time.time_ns())))

    def drop(self, reason: str) -> None:
        """Close the link (it reconnects, and the logon asks again for what we did not keep)."""
        if self.client.conn is not None:
            self.client.conn.close(reason)

    def close(self) -> None:
        self.client.close()
