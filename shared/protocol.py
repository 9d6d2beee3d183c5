"""Wire protocol v1: typed messages and a sans-IO frame codec (contract §4).

A frame is a 4-byte big-endian length N (1..65536), then N bytes of one UTF-8
JSON object with a "type". The decoder knows no sockets: feed it bytes, get
messages back, as h11 does.
"""

from __future__ import annotations

import hmac
import struct
from typing import Annotated, Literal

import msgspec

PROTO = 1
MAX_FRAME = 65536
HEADER = 4

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
# 1-128 printable ASCII characters: the length here, the characters in each message's __post_init__
# (``_printable``). A regex ``pattern`` did both, at about 1.2 us a field per decode.
OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Side = Literal["BUY", "SELL"]
OrdType = Literal["limit", "market"]
Tif = Literal["day", "ioc"]
ExecStatus = Literal["new", "partially_filled", "filled", "canceled", "expired"]
TERMINAL = frozenset(("filled", "canceled", "expired"))
Qty = Annotated[int, msgspec.Meta(ge=0)]


def _printable(name: str, value: str | None) -> None:
    """An order_id or client_id (None: left out) of printable ASCII only, or ValueError (a ValidationError
    when decoding)."""
    if value is not None and not (value.isascii() and value.isprintable()):
        raise ValueError(f"Expected 1-128 printable ASCII characters, not {value[:32]!r} - at `$.{name}`")


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True, frozen=True):
    """Base of every message: the tag is the JSON "type"."""


class Hello(_Msg, tag="hello", frozen=True):
    """First frame of a gateway stream."""

    proto: int
    stream: Literal["price", "news"]
    session: str
    symbols: list[str]
    heartbeat_ms: PositiveInt
    next_seq: PositiveInt


class Price(_Msg, tag="price", frozen=True):
    """A price tick; ``snapshot`` marks the catch-up frames after hello."""

    seq: PositiveInt
    ts_ns: Seq
    symbol: Symbol
    price: Positive
    snapshot: bool = False


class News(_Msg, tag="news", frozen=True):
    """A news tick with a sentiment 0..100 (50 neutral)."""

    seq: PositiveInt
    ts_ns: Seq
    symbol: Symbol
    sentiment: Annotated[int, msgspec.Meta(ge=0, le=100)]


class Heartbeat(_Msg, tag="heartbeat", frozen=True):
    """Liveness; the gateway adds ``seq``, the last data seq it sent."""

    ts_ns: Seq
    seq: Seq | None = None


class Logon(_Msg, tag="logon", frozen=True):
    """First frame of an order-entry link; ``instance`` (ours, optional) names
    the client process, new at each start, so that one process owns a client_id."""

    proto: int
    client_id: OrderId
    token: str
    instance: OrderId | None = None
    last_exec_id: Seq | None = None  # 1.2: then every exec of this client above it follows the logon_ack, in order

    def __post_init__(self) -> None:
        _printable("client_id", self.client_id)
        _printable("instance", self.instance)

    def refused(self, token: bytes) -> tuple[str, str] | None:
        """Why a server refuses this logon before looking at who it is (reject reason, detail), or None."""
        if self.proto != PROTO:
            return "bad_message", f"proto {self.proto} unsupported, expected {PROTO}"
        if not hmac.compare_digest(self.token.encode(), token):
            return "unauthorized", f"bad token for {self.client_id}"
        return None


class Subscribe(_Msg, tag="subscribe", frozen=True):
    """A subscriber's optional first frame: the subscription token, which a
    gateway off loopback requires before its hello (an addition to v1)."""

    proto: int
    token: str


class SeenOrder(msgspec.Struct, frozen=True):
    """One open order as the rule saw it (``shared.rule.OpenOrder``), in a ``DecisionContext``."""

    order_id: str
    side: Side
    qty: int
    price: float | None
    cum_qty: int
    leaves_qty: int
    age: int  # news ticks of its symbol since it was sent (or since the strategy learned of it)
    canceling: bool = False


class DecisionContext(msgspec.Struct, frozen=True):
    """What a strategy's rule saw when it decided an order (ours, optional on ``order``): the
    ordermanager journals it as it is, so ``stack-backtest --as-live`` can ask the rule again from a tape."""

    news_seq: int  # the news tick's seq (its ts_ns is the order's tick_ts_ns)
    window: list[tuple[int, int]]  # the seqs of the ticks the rule got, oldest first, as runs [first, last]
    position: int  # filled, signed
    open_orders: list[SeenOrder] = []  # its open orders in the symbol, before the cancels below
    cancels: list[str] = []  # those of them it asked to cancel first (a cancel went out, or was on its way)


class Order(_Msg, tag="order", frozen=True):
    """An order; ``order_id`` is unique per client and stable across resends.

    1.2: ``ord_type`` and ``tif``; a market order's ``price`` is optional (a protection limit when given);
    without them an order is a limit order, good for the day, at its price. Ours: ``ctx``, what the
    rule saw (journaled, never routed).
    """

    order_id: OrderId
    symbol: Symbol
    side: Side
    qty: PositiveInt
    ts_ns: Seq
    tick_ts_ns: Seq
    price: Positive | None = None
    ord_type: OrdType = "limit"
    tif: Tif = "day"
    ctx: DecisionContext | None = None

    def __post_init__(self) -> None:
        _printable("order_id", self.order_id)
        # Times are u64; a bigger int would crash the ordermanager's JSON log line (msgspec
        # bounds only int64, so the check lives here; decoding turns it into a ValidationError).
        if self.ts_ns >= 1 << 64 or self.tick_ts_ns >= 1 << 64:
            raise ValueError("ts_ns and tick_ts_ns must fit in 64 bits")
        if self.price is None and self.ord_type == "limit":
            raise ValueError("a limit order needs a price")


class Cancel(_Msg, tag="cancel", frozen=True):
    """Cancel one of this client's orders (1.2); the ordermanager adds ``client_id`` on its way to the venue."""

    order_id: OrderId
    client_id: OrderId | None = None

    def __post_init__(self) -> None:
        _printable("order_id", self.order_id)
        _printable("client_id", self.client_id)


class Route(_Msg, tag="route", frozen=True):
    """An accepted order, ordermanager -> exchange (ours, not in the contract): the venue keys it by
    (``client_id``, ``order_id``) and ignores one it has seen, so routing again is safe."""

    order_no: PositiveInt
    client_id: OrderId
    order_id: OrderId
    symbol: Symbol
    side: Side
    qty: PositiveInt
    price: Positive | None = None
    ord_type: OrdType = "limit"
    tif: Tif = "day"

    def __post_init__(self) -> None:
        _printable("client_id", self.client_id)
        _printable("order_id", self.order_id)


class Exec(_Msg, tag="exec", frozen=True):
    """An execution report (1.2), exchange -> ordermanager -> the strategy that owns the order.

    ``last_px`` and ``avg_px`` are always sent (null before a fill). ``symbol``, ``side``, ``client_id`` and
    ``order_no`` are additions of ours, so the ordermanager forwards the venue's bytes as they are.
    """

    order_id: OrderId
    exec_id: PositiveInt
    status: ExecStatus
    last_qty: Qty
    last_px: float | None
    cum_qty: Qty
    leaves_qty: Qty
    avg_px: float | None
    ts_ns: Seq
    symbol: Symbol
    side: Side
    client_id: OrderId | None = None
    order_no: PositiveInt | None = None

    def __post_init__(self) -> None:
        _printable("order_id", self.order_id)
        _printable("client_id", self.client_id)


class OpenOrder(msgspec.Struct, frozen=True):
    """One resting order in ``logon_ack.open_orders`` (1.2)."""

    order_id: str
    symbol: str
    side: Side
    qty: int
    price: float | None
    cum_qty: int
    leaves_qty: int


class LogonAck(_Msg, tag="logon_ack", frozen=True):
    """The ordermanager's answer to a good logon."""

    session: str
    heartbeat_ms: PositiveInt
    positions: dict[str, int]
    last_order_id: str | None
    open_orders: list[OpenOrder]  # 1.2: this client's orders still open at the venue
    last_exec_id: int | None = None  # ours: the largest exec_id the sender has of this client (the venue: of all)


class Ack(_Msg, tag="ack", frozen=True):
    """An order is journaled; ``duplicate`` when it was already."""

    order_id: str
    order_no: PositiveInt
    duplicate: bool


class Reject(_Msg, tag="reject", frozen=True):
    """An order or frame refused, with a reason code of contract §4 (and §8's ``unavailable``)."""

    order_id: str | None
    reason: Literal["bad_frame", "bad_message", "not_logged_on", "unauthorized", "risk", "unavailable", "unknown_order"]
    detail: str
    client_id: OrderId | None = None  # the venue's reject of a cancel names the client, for the ordermanager

    def __post_init__(self) -> None:
        _printable("client_id", self.client_id)


Message = Hello | Price | News | Heartbeat | Subscribe | Logon | Order | Cancel | Route | Exec | LogonAck | Ack | Reject


class ProtocolError(Exception):
    """Base of protocol errors."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class BadFrame(RemoteProtocolError):
    """The framing is broken (length 0 or over the limit): close the connection.

    ``messages`` holds what the same ``feed`` completed before the bad length,
    still to be handled.
    """

    def __init__(self, detail: str, messages: list[Message | BadMessage] | None = None) -> None:
        super().__init__(detail)
        self.messages = messages or []


class BadMessage(RemoteProtocolError):
    """One frame held no valid message; the stream itself is still in step."""

    def __init__(self, detail: str, order_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.order_id = order_id


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids."""


_encoder = msgspec.json.Encoder()
_LEN = struct.Struct(">I")
_decoder = msgspec.json.Decoder(Message)
_loose = msgspec.json.Decoder()


def frame(msg: Message) -> bytes:
    """Encode one message as a frame: length prefix and JSON body."""
    body = _encoder.encode(msg)
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def append_frame(buf: bytearray, msg: Message) -> None:
    """Encode one message as a frame at the end of ``buf`` (no temporary bytes)."""
    pos = len(buf)
    buf += b"\0\0\0\0"
    _encoder.encode_into(msg, buf, -1)
    n = len(buf) - pos - HEADER
    if n > MAX_FRAME:
        del buf[pos:]
        raise LocalProtocolError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    _LEN.pack_into(buf, pos, n)


def frame_body(body: bytes) -> bytes:
    """Frame raw bytes as they are (tests and fault tools send bad bodies)."""
    return len(body).to_bytes(HEADER, "big") + body


def decode(body: bytes | memoryview) -> Message:
    """Decode one frame body, raising BadMessage naming what is wrong."""
    try:
        str(body, "utf-8")  # UTF-8 throughout, the fields msgspec skips too
        return _decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadMessage(str(e), _order_id_of(body)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:  # bad UTF-8; nesting too deep
        raise BadMessage(f"not JSON: {e}") from None


def _order_id_of(body: bytes | memoryview) -> str | None:
    """Best effort: the order_id of an invalid message, for its reject."""
    try:
        obj = _loose.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    oid = obj.get("order_id") if isinstance(obj, dict) else None
    return oid if isinstance(oid, str) and 0 < len(oid) <= 128 and oid.isascii() and oid.isprintable() else None


class FrameDecoder:
    """Sans-IO decoder: ``feed(bytes)`` returns the messages completed so far.

    A bad message is returned in place as a ``BadMessage`` instance, so the
    caller can answer it and go on; a bad frame raises ``BadFrame`` and the
    decoder is unusable afterwards. The buffer never holds more than one
    maximal frame and its header.
    """

    __slots__ = ("_buf", "_decode", "broken")

    def __init__(self, decoder: msgspec.json.Decoder | None = None) -> None:
        self._buf = bytearray()
        self._decode = (decoder or _decoder).decode
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message | BadMessage]:
        """Add received bytes; return every message they complete."""
        if self.broken:
            raise BadFrame("decoder already failed")
        if self._buf:  # the rest of a frame cut by the last read
            self._buf += data
            buf = self._buf
            n = _LEN.unpack_from(buf)[0] if len(buf) >= HEADER else 1
            if 0 < n <= MAX_FRAME and len(buf) < HEADER + n:
                return []  # still short: no copy, so a frame trickled in byte by byte costs linear time
            data = bytes(self._buf)
            self._buf.clear()
        elif not isinstance(data, bytes):
            data = bytes(data)
        out: list[Message | BadMessage] = []
        # msgspec skips unknown fields without checking their UTF-8, and a frame is UTF-8 throughout
        # (contract §4): a read that is all ASCII, as nearly every one is, needs no closer look.
        utf8_checked = data.isascii()
        pos, end = 0, len(data)
        view = memoryview(data)  # over immutable bytes: slices cost no copy
        unpack, decode = _LEN.unpack_from, self._decode
        while end - pos >= HEADER:
            n = unpack(data, pos)[0]
            if n == 0 or n > MAX_FRAME:
                self.broken = True
                raise BadFrame(f"frame length {n} outside 1..{MAX_FRAME}", out)
            if end - pos - HEADER < n:
                break
            body = view[pos + HEADER : pos + HEADER + n]
            pos += HEADER + n
            try:
                if not utf8_checked:
                    str(body, "utf-8")
                out.append(decode(body))
            except msgspec.ValidationError as e:
                out.append(BadMessage(str(e), _order_id_of(body)))
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                out.append(BadMessage(f"not JSON: {e}"))
        if pos < end:
            self._buf += view[pos:]
        return out

    def frames(self, data: bytes | bytearray | memoryview) -> tuple[list[memoryview], bool, str | None]:
        """Framing alone, for a caller that decodes the bodies its own way (several in one call): the bodies
        of the frames ``data`` completes, whether the read was all ASCII (no UTF-8 check needed), and the
        bad length that ended them, if any (the decoder is then broken: raise ``BadFrame`` after the bodies)."""
        if self.broken:
            raise BadFrame("decoder already failed")
        if self._buf:  # as feed
            self._buf += data
            buf = self._buf
            n = _LEN.unpack_from(buf)[0] if len(buf) >= HEADER else 1
            if 0 < n <= MAX_FRAME and len(buf) < HEADER + n:
                return [], True, None
            data = bytes(self._buf)
            self._buf.clear()
        elif not isinstance(data, bytes):
            data = bytes(data)
        bodies: list[memoryview] = []
        pos, end = 0, len(data)
        view = memoryview(data)
        unpack = _LEN.unpack_from
        while end - pos >= HEADER:
            n = unpack(data, pos)[0]
            if n == 0 or n > MAX_FRAME:
                self.broken = True
                return bodies, data.isascii(), f"frame length {n} outside 1..{MAX_FRAME}"
            if end - pos - HEADER < n:
                break
            bodies.append(view[pos + HEADER : pos + HEADER + n])
            pos += HEADER + n
        if pos < end:
            self._buf += view[pos:]
        return bodies, data.isascii(), None

    def decode_each(self, bodies: list[memoryview], utf8_checked: bool) -> list[Message | BadMessage]:
        """``frames``' bodies decoded one by one, as ``feed`` decodes them (a bad one a ``BadMessage``)."""
        out: list[Message | BadMessage] = []
        decode = self._decode
        for body in bodies:
            try:
                if not utf8_checked:
                    str(body, "utf-8")
                out.append(decode(body))
            except msgspec.ValidationError as e:
                out.append(BadMessage(str(e), _order_id_of(body)))
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                out.append(BadMessage(f"not JSON: {e}"))
        return out
