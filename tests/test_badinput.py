"""Bad input (issue 3, item 6): random and mutated frames, cut anywhere, to the
decoder, and over many connections to a live ordermanager while a
well-behaved client keeps trading; then a slowloris of idle and half-sent
connections, and a pipelined flood from a client that reads, and one that
does not.

The frames come from hypothesis strategies, derandomized and bounded, so a
run is reproducible. What the ordermanager must answer to each frame is
worked out from the contract (§4) by ``expect`` below.
"""

from __future__ import annotations

import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.ops.bench.suite import GoodClient
from shared.ops.harness import Stack
from shared.ops.peer import OrderClient
from shared.protocol import (
    HEADER,
    MAX_FRAME,
    PROTO,
    Ack,
    BadFrame,
    BadMessage,
    FrameDecoder,
    Heartbeat,
    Message,
    Reject,
    decode,
    frame,
    frame_body,
)

SYMBOLS = ("AAPL", "MSFT", "GOOGL")
FAKE_TOKEN = "f" * 32  # never the stack's token: a mutated logon is never a good one
MESSAGE_TYPES = get_args(Message)
QUIET = {"strategy": {"bullish": 100, "bearish": 0},  # the stack's own strategy never trades
         "gateway": {"price_rate": 20.0, "news_rate": 1.0}}

# --- strategies ---------------------------------------------------------------

printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
order_ids = st.one_of(st.text(printable, min_size=1, max_size=12), st.sampled_from(["~" * 128, " ", "id with spaces"]))
ns = st.integers(0, 2**64 - 1)
odd_text = st.one_of(
    st.text(max_size=20),  # any unicode hypothesis likes
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zl", "Zp", "Mn"]), min_size=1, max_size=8),
    st.sampled_from(["", "\x00", "\ud800", "\udfff", "\u202eAAPL", "\ufeff", "🙂", "A\u0301APL", "ＡＡＰＬ", "\x7f",
                     "x" * 129, "BUY ", "buy", "Infinity", "NaN"]),
)
weird = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(2**63 - 2, 2**64 + 2),
    st.integers(-(2**64), -1),
    st.sampled_from([0, -1, 10**400, -(10**400), 2**64, 2**70]),
    st.floats(),  # NaN and infinities come out as bare NaN / Infinity: not JSON
    st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1e308, 5e-324]),
    odd_text,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)

valid_order = st.fixed_dictionaries({
    "type": st.just("order"), "order_id": order_ids, "symbol": st.sampled_from(SYMBOLS),
    "side": st.sampled_from(["BUY", "SELL"]), "qty": st.integers(1, 10**6),
    "price": st.floats(0.01, 1e6), "ts_ns": ns, "tick_ts_ns": ns})
valid_logon = st.fixed_dictionaries({
    "type": st.just("logon"), "proto": st.just(PROTO), "client_id": order_ids, "token": st.just(FAKE_TOKEN)})
valid_heartbeat = st.fixed_dictionaries({"type": st.just("heartbeat"), "ts_ns": ns})
base = st.one_of(valid_order, valid_order, valid_logon, valid_heartbeat)

# Common mutations repeat so that they come up more often than the rare ones.
MUTATIONS = ("none", "drop", "drop", "set", "set", "set", "set", "retag", "extra", "truncate", "truncate",
             "flip", "insert", "trailing", "not_object", "binary", "nested", "limit", "past_limit", "empty")


def _encode(obj: Any, ascii_only: bool) -> bytes:
    """JSON as Python writes it; lone surrogates pass through as the bad bytes they are."""
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _padded(obj: dict[str, Any], size: int) -> bytes:
    """``obj`` with a filler field making the body exactly ``size`` bytes."""
    head = _encode(obj, True)[:-1] + b',"pad":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """One frame body: a valid message, mutated one way or another (possibly empty or too long)."""
    obj: dict[str, Any] = dict(draw(base))
    how = draw(st.sampled_from(MUTATIONS))
    if how == "drop":
        del obj[draw(st.sampled_from(sorted(obj)))]
    elif how == "set":
        obj[draw(st.sampled_from(sorted(obj)))] = draw(weird)
    elif how == "retag":
        obj["type"] = draw(st.one_of(st.sampled_from(["hello", "price", "news", "ack", "reject", "logon_ack",
                                                      "ORDER", "order ", ""]), odd_text, weird))
    elif how == "extra":
        obj[draw(st.text(max_size=10))] = draw(weird)
    elif how == "limit":
        return _padded(obj, MAX_FRAME)
    elif how == "past_limit":
        return _padded(obj, MAX_FRAME + draw(st.integers(1, 3)))
    elif how == "empty":
        return b""
    elif how == "not_object":
        return draw(st.sampled_from([b"[]", b"1", b'"order"', b"null", b"true", b" ", b"{}", b"[{}]", b"{",
                                     b'{"type":"order"', b"\x00", b"\xef\xbb\xbf{}"]))
    elif how == "binary":
        return draw(st.binary(min_size=1, max_size=300))
    elif how == "nested":
        depth = draw(st.integers(1, 30000))
        return draw(st.sampled_from([b"[" * depth, b'{"a":' * depth, b'{"type":"order","x":' + b"[" * depth]))
    body = _encode(obj, draw(st.booleans()))
    if how == "truncate":
        body = body[: draw(st.integers(1, max(1, len(body) - 1)))]
    elif how == "flip":
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]
    elif how == "insert":
        i = draw(st.integers(0, len(body)))
        body = body[:i] + draw(st.binary(min_size=1, max_size=8)) + body[i:]
    elif how == "trailing":
        body += draw(st.sampled_from([b"x", b"{}", b"\n{}", b"\x00", b" ,"]))
    return body


def bad_headers() -> st.SearchStrategy[bytes]:
    """A length prefix outside 1..65536, with a few bytes after it."""
    n = st.one_of(st.sampled_from([0, MAX_FRAME + 1, MAX_FRAME + 2, 2**31, 2**32 - 1]),
                  st.integers(MAX_FRAME + 1, 2**32 - 1))
    return st.builds(lambda k, tail: k.to_bytes(HEADER, "big") + tail, n, st.binary(max_size=16))


def generate(strategy: st.SearchStrategy[Any], examples: int) -> list[Any]:
    """Draw ``examples`` values from ``strategy``, reproducibly (derandomized, no database)."""
    out: list[Any] = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


def is_frame(body: bytes) -> bool:
    """Whether the body can be framed at all (1..65536 bytes)."""
    return 1 <= len(body) <= MAX_FRAME


# --- (a) the decoder, byte by byte --------------------------------------------


def feed_all(chunks: list[bytes]) -> tuple[list[Any], BadFrame | None, FrameDecoder]:
    """Feed chunks to a fresh decoder; what it returned and the BadFrame it raised, if any."""
    dec = FrameDecoder()
    got: list[Any] = []
    for c in chunks:
        try:
            got.extend(dec.feed(c))
        except BadFrame as e:
            got.extend(e.messages)
            return got, e, dec
        assert dec.buffered < HEADER + MAX_FRAME  # never more than one frame in waiting
    return got, None, dec


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``data`` into chunks of the given sizes (cycled)."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos : pos + n])
        pos, i = pos + n, i + 1
    return out


def check_item(item: Any) -> None:
    """A decoder result is a message that survives a round trip, or a BadMessage that says why."""
    if isinstance(item, BadMessage):
        assert item.detail
        assert item.order_id is None or 1 <= len(item.order_id) <= 128
    else:
        assert isinstance(item, MESSAGE_TYPES), type(item)
        assert decode(frame(item)[HEADER:]) == item


# --- an oracle of its own: plain json and the contract's tables (§4), not the decoder's schema ---


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _u64(v: Any) -> bool:
    return _int(v) and 0 <= v < 1 << 64


def _number(v: Any) -> bool:
    """A JSON number that is a finite float (a 400-digit one is not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _oid(v: Any) -> bool:
    """1-128 printable ASCII characters (an order_id, a client_id)."""
    return isinstance(v, str) and 1 <= len(v) <= 128 and all(" " <= c <= "~" for c in v)


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_STR = lambda v: isinstance(v, str)  # noqa: E731
_POS_INT = lambda v: _int(v) and v > 0  # noqa: E731
_TIME = lambda v: _int(v) and v >= 0  # noqa: E731 - time.time_ns(); u64 where journaled (orders)
_SYMBOL = lambda v: isinstance(v, str) and 1 <= len(v) <= 16  # noqa: E731
_POSITIVE = lambda v: _number(v) and v > 0  # noqa: E731
_ANY = object()
# type -> field -> check; a field whose check is wrapped in a tuple may be left out (it has a default).
WIRE: dict[str, dict[str, Any]] = {
    "hello": {"proto": _int, "stream": _one_of("price", "news"), "session": _STR,
              "symbols": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "heartbeat_ms": _POS_INT, "next_seq": _POS_INT},
    "price": {"seq": _POS_INT, "ts_ns": _TIME, "symbol": _SYMBOL, "price": _POSITIVE,
              "snapshot": (lambda v: isinstance(v, bool),)},
    "news": {"seq": _POS_INT, "ts_ns": _TIME, "symbol": _SYMBOL,
             "sentiment": lambda v: _int(v) and 0 <= v <= 100},
    "heartbeat": {"ts_ns": _TIME, "seq": (_opt(_TIME),)},
    "subscribe": {"proto": _int, "token": _STR},
    "logon": {"proto": _int, "client_id": _oid, "token": _STR, "instance": (_opt(_oid),)},
    "order": {"order_id": _oid, "symbol": _SYMBOL, "side": _one_of("BUY", "SELL"), "qty": _POS_INT,
              "price": _POSITIVE, "ts_ns": _u64, "tick_ts_ns": _u64},
    "logon_ack": {"session": _STR, "heartbeat_ms": _POS_INT, "last_order_id": _opt(_STR),
                  "positions": lambda v: isinstance(v, dict) and all(_int(x) for x in v.values())},
    "ack": {"order_id": _STR, "order_no": _POS_INT, "duplicate": lambda v: isinstance(v, bool)},
    "reject": {"order_id": _opt(_STR), "detail": _STR,
               "reason": _one_of("bad_frame", "bad_message", "not_logged_on", "unauthorized", "risk",
                                 "unavailable")},
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _valid_unicode(v: Any) -> bool:
    """No lone surrogate in any string, key or value (JSON's \\ud800 escapes decode to one)."""
    if isinstance(v, str):
        return not any("\ud800" <= c <= "\udfff" for c in v)
    if isinstance(v, list):
        return all(_valid_unicode(x) for x in v)
    if isinstance(v, dict):
        return all(_valid_unicode(k) and _valid_unicode(x) for k, x in v.items())
    return True


def wire_oracle(body: bytes) -> tuple[str, dict[str, Any]] | None:
    """What a frame body holds by the contract, worked out with the standard library's json and
    the tables above: (type, its fields), or None if it is no valid message. Other keys are
    ignored; a repeated key counts once, its last value."""
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not _valid_unicode(obj) or not isinstance(obj.get("type"), str) \
            or obj["type"] not in WIRE:
        return None
    fields = {}
    for name, check in WIRE[obj["type"]].items():
        if name not in obj:
            if isinstance(check, tuple):
                continue
            return None
        if not (check[0] if isinstance(check, tuple) else check)(obj[name]):
            return None
        fields[name] = obj[name]
    return obj["type"], fields


def agrees(item: Any, want: tuple[str, dict[str, Any]] | None) -> bool:
    """The decoder's result for a frame is what the oracle worked out."""
    if want is None:
        return isinstance(item, BadMessage)
    kind, fields = want
    if isinstance(item, BadMessage) or msgspec.inspect.type_info(type(item)).tag != kind:  # type: ignore[attr-defined]
        return False
    return all(_same(getattr(item, k), v) for k, v in fields.items())


def _same(got: Any, want: Any) -> bool:
    """Equal as the schema reads it: a JSON integer in a float field is that integer as a float
    (float(2**63 - 2) is not the int it came from, yet it is what the frame said)."""
    if isinstance(got, float) and isinstance(want, int) and not isinstance(want, bool):
        return got == float(want)
    return bool(got == want)


Case = tuple[list[bytes], bytes | None, list[int]]  # frames, a bad length after them (or not), chunk sizes


def variants(body: bytes, rnd: random.Random) -> list[bytes]:
    """A body and, when small, two byte-level mutants of it: cut short, and one byte changed."""
    if not 2 <= len(body) <= 4096:
        return [body]
    i, j = rnd.randrange(1, len(body)), rnd.randrange(len(body))
    return [body, body[:i], body[:j] + bytes([rnd.randrange(256)]) + body[j + 1 :]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """About 30 mutated bodies, maybe a bad length to end them, and a way to cut them into reads."""
    rnd = draw(st.randoms(use_true_random=False))
    frames = [v for b in draw(st.lists(bodies(), min_size=9, max_size=13)) for v in variants(b, rnd)]
    tail = draw(st.one_of(st.none(), bad_headers()))
    sizes = draw(st.lists(st.integers(1, 1 << 17), min_size=1, max_size=8))
    return frames, tail, sizes


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    """Over 10,000 mutated frame bodies, drawn once, reproducibly."""
    drawn = generate(cases(), 400)
    assert sum(len(frames) for frames, _, _ in drawn) >= 10_000
    return drawn


def test_decoder_survives_10k_mutated_frames(corpus: list[Case]) -> None:
    """Mutated frames, cut anywhere: only messages or BadMessage come out, one per whole frame, each
    what an oracle of its own (plain json, the contract's tables) says the frame holds; and a bad
    length raises BadFrame, carrying the frames before it."""
    kinds: Counter[str] = Counter()
    for frames, tail, sizes in corpus:
        good = [b for b in frames if is_frame(b)]
        stream = b"".join(frame_body(b) for b in good) + (tail or b"")
        got, err, dec = feed_all(split(stream, sizes))
        assert len(got) == len(good)
        for body, item in zip(good, got, strict=True):
            check_item(item)
            want = wire_oracle(body)
            assert agrees(item, want), (body[:300], item, want)
            kinds[want[0] if want else "invalid"] += 1
        if tail is None:
            assert err is None and dec.buffered == 0
        else:
            assert err is not None
            with pytest.raises(BadFrame):
                dec.feed(b"{}")
    assert kinds["invalid"] >= 1000 and min(kinds[k] for k in ("order", "logon", "heartbeat")) >= 100, kinds


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.binary(max_size=2048), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_decoder_random_bytes(data: bytes, sizes: list[int]) -> None:
    """Plain random bytes: the decoder raises nothing but BadFrame."""
    got, _, _ = feed_all(split(data, sizes))
    for item in got:
        check_item(item)


NASTY = [
    (b"[" * 60000, "nested arrays"),
    (b'{"a":' * 13000, "nested objects"),
    (b'{"type":"order","order_id":"x","symbol":"AAPL","side":"BUY","qty":1,"price":1,"ts_ns":1,"tick_ts_ns":'
     + str(2**64).encode() + b"}", "a time past u64"),
    (b'{"type":"order","order_id":"x","symbol":"AAPL","side":"BUY","qty":1,"price":1,"ts_ns":'
     + b"9" * 400 + b',"tick_ts_ns":1}', "a 400-digit time"),
    (b'{"type":"heartbeat","ts_ns":-1}', "a negative time"),
    (b'{"type":"order","order_id":"\\ud800","symbol":"AAPL"}', "a lone surrogate"),
    (b'{"type":"logon","proto":1,"client_id":"a","token":"\xed\xa0\x80"}', "surrogate bytes"),
    (b'{"type":"heartbeat","ts_ns":1,"\xf3u":null}', "bad UTF-8 in a key the decoder skips"),
    (b'{"type":"order","order_id":"x","symbol":"AAPL","side":"BUY","qty":1,"price":1e999,"ts_ns":1,'
     b'"tick_ts_ns":1}', "an infinite price"),
]


@pytest.mark.parametrize("body", [b for b, _ in NASTY], ids=[name for _, name in NASTY])
def test_decoder_nasty_bodies_are_bad_messages(body: bytes) -> None:
    """Hand-picked bodies that once crashed or slipped through: each is one BadMessage."""
    got, err, _ = feed_all([frame_body(body)])
    assert err is None
    assert len(got) == 1 and isinstance(got[0], BadMessage), got


def test_decoder_keeps_the_frames_before_a_bad_length() -> None:
    """Whole frames that arrive in the same read as a bad length are still delivered."""
    hb = frame(Heartbeat(ts_ns=1))
    got, err, _ = feed_all([hb + frame_body(b"nope") + (0).to_bytes(HEADER, "big")])
    assert err is not None
    assert len(got) == 2 and got[0] == Heartbeat(ts_ns=1) and isinstance(got[1], BadMessage)


def test_decoder_at_and_past_the_limit() -> None:
    """A body of exactly 65536 bytes is a frame; 65537 is a bad frame, and so is 0."""
    hb = {"type": "heartbeat", "ts_ns": 5}
    got, err, _ = feed_all([frame_body(_padded(hb, MAX_FRAME))])
    assert err is None and got == [Heartbeat(ts_ns=5)]
    for n in (0, MAX_FRAME + 1):
        _, err, _ = feed_all([n.to_bytes(HEADER, "big")])
        assert err is not None, n


# --- (b) a live ordermanager, while a good client trades ------------------------

ACCEPT = "accept"


def expect(body: bytes, logged_on: bool, symbols: tuple[str, ...], max_qty: int) -> tuple[str | None, bool]:
    """What the ordermanager answers to one frame (contract §4), worked out with the oracle above
    (it reads logon, order and heartbeat): the reject reason (None: no answer; ACCEPT: it would be
    journaled), and whether it is a bad frame that gets a ``bad_frame`` log line."""
    if not is_frame(body):
        return "bad_frame", True
    m = wire_oracle(body)
    if m is None or m[0] not in ("logon", "order", "heartbeat"):
        return "bad_message", True
    kind, fields = m
    if not logged_on:
        if kind == "logon":
            return ("bad_message" if fields["proto"] != PROTO else "unauthorized"), False
        return "not_logged_on", False
    if kind == "heartbeat":
        return None, False
    if kind == "logon":
        return "bad_message", False
    if fields["symbol"] not in symbols or fields["qty"] > max_qty:
        return "risk", False
    return ACCEPT, False


def wire(body: bytes) -> bytes:
    """A body as sent: framed, or only the bad length prefix when it cannot be framed (so the
    ordermanager has read everything when it closes, and the reject is not lost to a reset)."""
    return frame_body(body) if is_frame(body) else len(body).to_bytes(HEADER, "big")


def listening(stack: Stack) -> None:
    """Wait until the ordermanager accepts connections."""
    stack.wait_for(lambda: stack.events("ordermanager", "listening"), timeout=30)


class Tally:
    """What was sent to the ordermanager and what it must have logged for it."""

    def __init__(self) -> None:
        self.frames = 0
        self.rejects: Counter[str] = Counter()
        self.bad_frames = 0

    def add(self, reason: str | None, logged: bool) -> None:
        self.frames += 1
        if reason is not None:
            self.rejects[reason] += 1
        self.bad_frames += logged


def recv_reject(c: OrderClient) -> Reject:
    """The next reject, skipping heartbeats; anything else fails."""
    m = c.recv_type(Reject, Ack, timeout=15)
    assert isinstance(m, Reject), m
    return m


def assert_closed(c: OrderClient) -> None:
    """The ordermanager closes the connection (skipping heartbeats before the end)."""
    with pytest.raises(EOFError):
        while True:
            m = c.recv(timeout=15)
            assert isinstance(m, Heartbeat), m


def before_logon(port: int, bodies_: list[bytes], cfg: Any, tally: Tally) -> None:
    """One connection per body, 50 at a time: each gets its reject, then the close."""
    for k in range(0, len(bodies_), 50):
        group = bodies_[k : k + 50]
        clients = [OrderClient("127.0.0.1", port, timeout=15) for _ in group]
        try:
            for c, body in zip(clients, group, strict=True):
                c.send_raw(wire(body))
            for c, body in zip(clients, group, strict=True):
                reason, logged = expect(body, False, cfg.symbols, cfg.ordermanager.max_qty)
                assert reason is not None and reason != ACCEPT
                assert recv_reject(c).reason == reason, body[:200]
                assert_closed(c)
                tally.add(reason, logged)
        finally:
            for c in clients:
                c.close()


def after_logon(port: int, token: str, client_id: str, bodies_: list[bytes], tail: bytes | None, truncate: bool,
                cfg: Any, tally: Tally) -> None:
    """One logged-on connection: bodies in batches, each answered in order; then maybe a bad
    length in the same write as the last batch, or half a frame and our end shut."""
    with OrderClient("127.0.0.1", port, timeout=15) as c:
        c.logon(client_id, token)
        batches = [bodies_[k : k + 16] for k in range(0, len(bodies_), 16)] or [[]]
        for n, batch in enumerate(batches):
            last = n == len(batches) - 1
            data = b"".join(wire(b) for b in batch)
            if last and tail is not None:
                data += tail[:HEADER]
            c.send_raw(data)
            for body in batch:
                reason, logged = expect(body, True, cfg.symbols, cfg.ordermanager.max_qty)
                assert reason != ACCEPT
                if reason is not None:
                    assert recv_reject(c).reason == reason, body[:200]
                tally.add(reason, logged)
        if tail is not None:
            assert recv_reject(c).reason == "bad_frame"
            assert_closed(c)
            tally.add("bad_frame", True)
        elif truncate:
            c.send_raw(frame(Heartbeat(ts_ns=1))[:7])
            c.sock.shutdown(socket.SHUT_WR)
            assert_closed(c)


def test_live_ordermanager_answers_10k_bad_frames_while_a_good_client_trades(
        corpus: list[Case], make_stack: Callable[..., Stack]) -> None:
    """Every bad frame gets its reject (and the close where the contract says so) and its log
    line; the good client is acked throughout (how fast: deploy/bench --suite); only its orders are journaled."""
    stack = make_stack(QUIET)
    listening(stack)
    cfg, port = stack.cfg, stack.cfg.ordermanager.port
    pid = stack.pids()["ordermanager"]
    tally = Tally()
    with GoodClient(port, stack.token) as good:
        loose: list[bytes] = []
        for i, (frames, tail, _) in enumerate(corpus):
            if i % 10 == 0:
                loose.extend(frames)
                continue
            mine: list[bytes] = []
            for b in frames:
                reason, _ = expect(b, True, cfg.symbols, cfg.ordermanager.max_qty)
                (mine if is_frame(b) and reason != ACCEPT else loose).append(b)
            after_logon(port, stack.token, f"bad-{i}", mine, tail, i % 2 == 1, cfg, tally)
            good.check()
        after_logon(port, stack.token, "nasty", [b for b, _ in NASTY], None, False, cfg, tally)
        before_logon(port, loose, cfg, tally)
        good.check()
    good.check()
    assert tally.frames >= 10_000
    print(f"\nthe good client's longest ack wait: {good.max_wait * 1000:.0f} ms (deploy/bench --suite measures it)")
    assert len(good.acked) >= 20
    assert stack.pids()["ordermanager"] == pid, "the ordermanager restarted"

    def logged() -> tuple[Counter[str], int]:
        recs = stack.log("ordermanager")
        return (Counter(r["reason"] for r in recs if r.get("event") == "order_rejected"),
                sum(r.get("event") == "bad_frame" for r in recs))

    try:
        stack.wait_for(lambda: logged() == (tally.rejects, tally.bad_frames), timeout=20)
    except TimeoutError:
        assert logged() == (tally.rejects, tally.bad_frames)
    journal = stack.journal()
    assert [(e["client_id"], e["order_id"]) for e in journal] == [("good", oid) for oid in good.acked]
    assert len(stack.events("ordermanager", "order_received")) == len(good.acked)


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_slowloris_300_idle_and_half_sent_connections(make_stack: Callable[..., Stack]) -> None:
    """300 connections that send nothing, half a header or half a body: memory stays bounded, the
    good client is served throughout, and the logon timeout closes every one."""
    stack = make_stack({**QUIET, "ordermanager": {"logon_timeout_ms": 2000}})
    listening(stack)
    port = stack.cfg.ordermanager.port
    pid = stack.pids()["ordermanager"]
    socks: list[socket.socket] = []
    try:
        with GoodClient(port, stack.token) as good:
            before = rss_kb(pid)
            for i in range(300):
                s = socket.create_connection(("127.0.0.1", port), timeout=15)
                socks.append(s)
                if i % 3 == 1:
                    s.sendall(b"\x00\x00")  # half a header
                elif i % 3 == 2:
                    n = MAX_FRAME - i  # half of a body near the limit
                    s.sendall(n.to_bytes(HEADER, "big") + b'{"type":"logon",' + b" " * (n // 2))
            peers = {"{}:{}".format(*s.getsockname()) for s in socks}
            peak = before
            for _ in range(8):  # while they are all held open (the timeout is 2 s)
                peak = max(peak, rss_kb(pid))
                time.sleep(0.1)
            deadline = time.monotonic() + 20
            for s in socks:  # each one sees the ordermanager close it
                s.settimeout(max(0.1, deadline - time.monotonic()))
                assert s.recv(1 << 16) == b"", "the ordermanager sent something before logon"
            peak = max(peak, rss_kb(pid))
            good.check()
            n = len(good.acked)  # the good client goes on after the wave of closes
            stack.wait_for(lambda n=n: good.error or len(good.acked) > n + 2, timeout=60)  # type: ignore[misc]
        good.check()
    finally:
        for s in socks:
            s.close()
    print(f"\nthe good client's longest ack wait: {good.max_wait * 1000:.0f} ms (deploy/bench --suite measures it)")
    assert (peak - before) < 50 * 1024, f"RSS grew {(peak - before) / 1024:.1f} MB"
    assert stack.pids()["ordermanager"] == pid, "the ordermanager restarted"

    def reasons() -> dict[str, str]:
        return {r["peer"]: r["reason"] for r in stack.events("ordermanager", "disconnected") if r["peer"] in peers}

    stack.wait_for(lambda: len(reasons()) == len(peers), timeout=20)
    assert set(reasons().values()) == {"logon_timeout"}
    assert [e["order_id"] for e in stack.journal()] == good.acked


def test_pipelined_flood_of_bad_frames(make_stack: Callable[..., Stack]) -> None:
    """A logged-on client that pipelines 20,000 bad frames in one write gets every reject, in order,
    while the good client is served throughout; one that floods and never reads is dropped
    (``slow_consumer``) before the ordermanager's memory grows by 50 MB."""
    stack = make_stack(QUIET)
    listening(stack)
    port = stack.cfg.ordermanager.port
    pid = stack.pids()["ordermanager"]
    with GoodClient(port, stack.token) as good:
        before = rss_kb(pid)
        with OrderClient("127.0.0.1", port, timeout=30) as reader:
            reader.logon("flood-reader", stack.token)
            reader.send_raw(frame_body(b"x") * 20_000)
            for n in range(20_000):
                assert recv_reject(reader).reason == "bad_message"
                if n % 100 == 0:  # a client that goes quiet for 3 heartbeats is dropped
                    reader.send(Heartbeat(ts_ns=time.time_ns()))
        good.check()
        with OrderClient("127.0.0.1", port, timeout=30) as mute:
            mute.logon("flood-mute", stack.token)
            mute.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            chunk = frame_body(b"x") * 20_000
            with pytest.raises(OSError):  # reset or broken pipe, once the ordermanager has dropped it
                for _ in range(400):  # 40 MB of bad frames: 900 MB of rejects, unbounded
                    mute.send_raw(chunk)
        peak = rss_kb(pid)
        n = len(good.acked)  # still served after both floods
        stack.wait_for(lambda: good.error or len(good.acked) > n + 2, timeout=60)
        good.check()
    print(f"\nthe good client's longest ack wait: {good.max_wait * 1000:.0f} ms (deploy/bench --suite measures it)")
    assert (peak - before) < 50 * 1024, f"RSS grew {(peak - before) / 1024:.1f} MB"
    assert stack.pids()["ordermanager"] == pid, "the ordermanager restarted"
    stack.wait_for(lambda: [r for r in stack.events("ordermanager", "disconnected")
                            if r.get("client_id") == "flood-mute" and r["reason"] == "slow_consumer"], timeout=60)
    assert [e["order_id"] for e in stack.journal()] == good.acked
