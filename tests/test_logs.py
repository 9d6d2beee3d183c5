"""The JSON log lines (contract §6): the hot path's line is the bound logger's line."""

from __future__ import annotations

import io

import orjson

from shared import logs


def test_hot_line_is_the_bound_loggers_line() -> None:
    """Same keys, in the same order, with the same values but the time: a reader cannot tell them apart."""
    out = io.BytesIO()
    log = logs.configure("ordermanager", out)
    fields = {"order_no": 7, "order_id": "s-1", "price": 101.5, "tif": None, "msg": "Received Order 7: BUY 1 X @ 1.00"}
    logs.hot("order_received", **fields)
    log.info("order_received", **fields)
    logs.flush()
    hot, bound = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert list(hot) == list(bound) == ["daemon", "pid", *fields, "event", "ts", "level"]
    assert {**hot, "ts": None} == {**bound, "ts": None}
    assert hot["level"] == "info" and hot["ts"].endswith("Z") and len(hot["ts"]) == len("2026-01-01T00:00:00.000000Z")
