"""The wire protocol (contract §4): frames, messages and the sans-IO decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.protocol import (
    MAX_FRAME,
    Ack,
    BadFrame,
    BadMessage,
    FrameDecoder,
    Heartbeat,
    Hello,
    LocalProtocolError,
    Logon,
    LogonAck,
    Message,
    News,
    Order,
    Price,
    Reject,
    frame,
    frame_body,
)

ORDER = {
    "type": "order",
    "order_id": "s1-000001",
    "symbol": "AAPL",
    "side": "BUY",
    "qty": 10,
    "price": 173.2,
    "ts_ns": 1_700_000_000_000_000_001,
    "tick_ts_ns": 1_700_000_000_000_000_000,
}

# One of every message type of contract §4, with its optional fields both ways.
SAMPLES: list[Message] = [
    Hello(proto=1, stream="price", session="abc123", symbols=["AAPL", "MSFT"], heartbeat_ms=250, next_seq=7),
    Hello(proto=1, stream="news", session="abc123", symbols=["AAPL"], heartbeat_ms=250, next_seq=1),
    Price(seq=1, ts_ns=123, symbol="AAPL", price=173.25),
    Price(seq=5, ts_ns=124, symbol="MSFT", price=0.01, snapshot=True),
    News(seq=2, ts_ns=125, symbol="GOOGL", sentiment=0),
    News(seq=3, ts_ns=126, symbol="GOOGL", sentiment=100),
    Heartbeat(ts_ns=127),
    Heartbeat(ts_ns=128, seq=42),
    Logon(proto=1, client_id="strategy-1", token="s3cret"),
    Logon(proto=1, client_id="strategy-1", token="s3cret", instance="9f2c4e1a"),
    Order(order_id="s1-1", symbol="AAPL", side="SELL", qty=3, price=99.5, ts_ns=10, tick_ts_ns=9),
    LogonAck(session="sess", heartbeat_ms=250, positions={"AAPL": -10, "MSFT": 5}, last_order_id="s1-1",
             open_orders=[]),
    LogonAck(session="sess", heartbeat_ms=250, positions={}, last_order_id=None, open_orders=[]),
    Ack(order_id="s1-1", order_no=1, duplicate=False),
    Ack(order_id="s1-1", order_no=1, duplicate=True),
    Reject(order_id="s1-2", reason="risk", detail="qty over the limit"),
    Reject(order_id=None, reason="bad_message", detail="not JSON"),
]
STREAM = b"".join(frame(m) for m in SAMPLES)


def body(obj: Any) -> bytes:
    """A frame around the JSON of ``obj`` (valid or not as a message)."""
    return frame_body(json.dumps(obj).encode())


def order_with(**changes: Any) -> dict[str, Any]:
    """The sample order with some fields changed; a value of ``...`` removes the field."""
    o = {**ORDER, **changes}
    return {k: v for k, v in o.items() if v is not ...}


def test_frame_is_length_prefixed_json() -> None:
    data = frame(Heartbeat(ts_ns=5))
    n = int.from_bytes(data[:4], "big")
    assert n == len(data) - 4
    assert json.loads(data[4:]) == {"type": "heartbeat", "ts_ns": 5}


def test_snapshot_flag_on_the_wire_only_when_set() -> None:
    live = json.loads(frame(Price(seq=1, ts_ns=1, symbol="A", price=1.0))[4:])
    snap = json.loads(frame(Price(seq=1, ts_ns=1, symbol="A", price=1.0, snapshot=True))[4:])
    assert "snapshot" not in live
    assert snap["snapshot"] is True


def test_logon_instance_on_the_wire_only_when_set() -> None:
    plain = json.loads(frame(Logon(proto=1, client_id="c", token="t"))[4:])
    mine = json.loads(frame(Logon(proto=1, client_id="c", token="t", instance="i-1"))[4:])
    assert "instance" not in plain
    assert mine["instance"] == "i-1"
    assert isinstance(FrameDecoder().feed(body({**plain, "instance": ""}))[0], BadMessage)  # 1..128 printable


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert FrameDecoder().feed(frame(msg)) == [msg]


def test_fed_whole() -> None:
    d = FrameDecoder()
    assert d.feed(STREAM) == SAMPLES
    assert d.buffered == 0


def test_fed_byte_by_byte() -> None:
    d = FrameDecoder()
    out: list[Any] = []
    for i in range(len(STREAM)):
        got = d.feed(STREAM[i : i + 1])
        out += got
    assert out == SAMPLES
    assert d.buffered == 0


def test_coalesced_with_partial_tail() -> None:
    d = FrameDecoder()
    extra = frame(SAMPLES[0])
    assert d.feed(STREAM + extra[:10]) == SAMPLES
    assert d.buffered == 10
    assert d.feed(extra[10:]) == [SAMPLES[0]]
    assert d.buffered == 0


@pytest.mark.parametrize("cut", [1, 2, 3], ids=lambda c: f"header_split_at_{c}")
def test_cut_in_header(cut: int) -> None:
    data = frame(SAMPLES[9])
    d = FrameDecoder()
    assert d.feed(data[:cut]) == []
    assert d.buffered == cut
    assert d.feed(data[cut:]) == [SAMPLES[9]]


@pytest.mark.parametrize("cut", [4, 5, 20, -1], ids=lambda c: f"body_split_at_{c}")
def test_cut_in_body(cut: int) -> None:
    data = frame(SAMPLES[9])
    d = FrameDecoder()
    assert d.feed(data[:cut]) == []
    assert d.feed(data[cut:]) == [SAMPLES[9]]


def test_empty_feed_is_harmless() -> None:
    d = FrameDecoder()
    assert d.feed(b"") == []
    assert d.feed(frame(SAMPLES[0])[:3]) == []
    assert d.feed(b"") == []
    assert d.buffered == 3


def test_memoryview_and_bytearray_input() -> None:
    d = FrameDecoder()
    assert d.feed(memoryview(STREAM)[:100]) + d.feed(bytearray(STREAM[100:])) == SAMPLES


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 2**32 - 1])
def test_bad_length_is_bad_frame(length: int) -> None:
    d = FrameDecoder()
    good = frame(SAMPLES[0])
    assert d.feed(good) == [SAMPLES[0]]
    assert not d.broken
    with pytest.raises(BadFrame):
        d.feed(length.to_bytes(4, "big") + b"{}")
    assert d.broken
    with pytest.raises(BadFrame):
        d.feed(good)  # the stream is out of step: the decoder stays failed


def test_bad_length_detected_from_header_alone() -> None:
    """An oversized length is refused at once, never buffered up to."""
    d = FrameDecoder()
    with pytest.raises(BadFrame):
        d.feed((MAX_FRAME + 1).to_bytes(4, "big"))


def test_max_length_frame_is_accepted() -> None:
    msg = Reject(order_id=None, reason="risk", detail="")
    pad = MAX_FRAME - len(frame(msg)) + 4
    big = Reject(order_id=None, reason="risk", detail="x" * pad)
    data = frame(big)
    assert len(data) == 4 + MAX_FRAME
    d = FrameDecoder()
    assert d.feed(data[:1000]) == []
    assert d.feed(data[1000:] + frame(SAMPLES[0])) == [big, SAMPLES[0]]
    assert d.buffered == 0


def test_max_length_garbage_is_bad_message_not_bad_frame() -> None:
    d = FrameDecoder()
    out = d.feed(frame_body(b" " * MAX_FRAME) + frame(SAMPLES[0]))
    assert isinstance(out[0], BadMessage)
    assert out[1:] == [SAMPLES[0]]


def test_encoder_refuses_oversized_message() -> None:
    with pytest.raises(LocalProtocolError):
        frame(Reject(order_id=None, reason="risk", detail="x" * MAX_FRAME))


# (frame body, text the detail must contain, order_id the BadMessage must carry)
INVALID = [
    ("missing_qty", body(order_with(qty=...)), "qty", ORDER["order_id"]),
    ("missing_type", body({k: v for k, v in ORDER.items() if k != "type"}), "type", ORDER["order_id"]),
    ("qty_str", body(order_with(qty="10")), "$.qty", ORDER["order_id"]),
    ("qty_float", body(order_with(qty=1.5)), "$.qty", ORDER["order_id"]),
    ("qty_bool", body(order_with(qty=True)), "$.qty", ORDER["order_id"]),
    ("qty_zero", body(order_with(qty=0)), "$.qty", ORDER["order_id"]),
    ("qty_negative", body(order_with(qty=-5)), "$.qty", ORDER["order_id"]),
    ("price_zero", body(order_with(price=0)), "$.price", ORDER["order_id"]),
    ("price_negative", body(order_with(price=-1.5)), "$.price", ORDER["order_id"]),
    ("price_str", body(order_with(price="1.5")), "$.price", ORDER["order_id"]),
    ("side", body(order_with(side="HOLD")), "$.side", ORDER["order_id"]),
    ("order_id_too_long", body(order_with(order_id="x" * 129)), "$.order_id", None),
    ("order_id_empty", body(order_with(order_id="")), "$.order_id", None),
    ("order_id_control_char", body(order_with(order_id="a\x01b")), "$.order_id", None),
    ("order_id_non_ascii", body(order_with(order_id="é")), "$.order_id", None),
    ("order_id_int", body(order_with(order_id=7)), "$.order_id", None),
    ("sentiment_101", body({"type": "news", "seq": 1, "ts_ns": 1, "symbol": "A", "sentiment": 101}),
     "$.sentiment", None),
    ("sentiment_negative", body({"type": "news", "seq": 1, "ts_ns": 1, "symbol": "A", "sentiment": -1}),
     "$.sentiment", None),
    ("unknown_type", body({"type": "modify", "order_id": "z"}), "$.type", "z"),
    ("not_json", frame_body(b"not json"), "JSON", None),
    ("truncated_json", frame_body(b'{"type": "order", "order_id": "q1"'), "JSON", None),
    ("not_utf8", frame_body(b'{"type": "\xff"}'), "JSON", None),
    ("not_utf8_order_id", frame_body(b'{"type": "order", "order_id": "\xff"}'), "JSON", None),
    ("not_utf8_after_bad_field", frame_body(b'{"type": "order", "qty": 0, "order_id": "\xff"}'), "utf-8", None),
    ("json_array", body([ORDER]), "object", None),
    ("json_number", frame_body(b"42"), "object", None),
]


@pytest.mark.parametrize(("data", "names", "order_id"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_message_is_bad_message_naming_the_field(data: bytes, names: str, order_id: str | None) -> None:
    d = FrameDecoder()
    nxt = SAMPLES[9]
    out = d.feed(data + frame(nxt))
    assert len(out) == 2
    bad = out[0]
    assert isinstance(bad, BadMessage)
    assert names in bad.detail
    assert bad.order_id == order_id
    assert out[1] == nxt  # the stream is still in step
    assert not d.broken


def test_bad_message_between_good_ones_byte_by_byte() -> None:
    stream = frame(SAMPLES[0]) + body(order_with(qty=0)) + frame(SAMPLES[1])
    d = FrameDecoder()
    out: list[Any] = []
    for i in range(len(stream)):
        out += d.feed(stream[i : i + 1])
    assert out[0] == SAMPLES[0]
    assert isinstance(out[1], BadMessage) and "$.qty" in out[1].detail
    assert out[2] == SAMPLES[1]


def test_restricted_decoder() -> None:
    """A decoder for a subset of types reports the others as bad messages."""
    import msgspec

    d = FrameDecoder(msgspec.json.Decoder(Logon | Order | Heartbeat))
    out = d.feed(frame(SAMPLES[0]) + frame(SAMPLES[9]))
    assert isinstance(out[0], BadMessage) and "$.type" in out[0].detail
    assert out[1] == SAMPLES[9]


# --- property: any split of a stream of valid frames gives the same messages --

symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.", min_size=1, max_size=16)
u64 = st.integers(min_value=0, max_value=2**63)
prices = st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)
order_ids = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128)
messages = st.one_of(
    st.builds(Price, seq=st.integers(1, 2**40), ts_ns=u64, symbol=symbols, price=prices, snapshot=st.booleans()),
    st.builds(News, seq=st.integers(1, 2**40), ts_ns=u64, symbol=symbols, sentiment=st.integers(0, 100)),
    st.builds(Heartbeat, ts_ns=u64, seq=st.none() | u64),
    st.builds(Order, order_id=order_ids, symbol=symbols, side=st.sampled_from(["BUY", "SELL"]),
              qty=st.integers(1, 10**9), price=prices, ts_ns=u64, tick_ts_ns=u64),
    st.builds(Ack, order_id=order_ids, order_no=st.integers(1, 10**9), duplicate=st.booleans()),
    st.builds(Reject, order_id=st.none() | order_ids,
              reason=st.sampled_from(["bad_frame", "bad_message", "not_logged_on", "unauthorized", "risk",
                                                     "unavailable"]),
              detail=st.text(max_size=50)),
)


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(messages, min_size=1, max_size=20), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_gives_the_same_messages(msgs: list[Message], cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    d = FrameDecoder()
    out: list[Any] = []
    prev = 0
    for p in [*points, len(stream)]:
        out += d.feed(stream[prev:p])
        prev = p
    assert out == msgs
    assert d.buffered == 0
