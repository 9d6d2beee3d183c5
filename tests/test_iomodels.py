"""The I/O-model measurement runs and reports every model (a smoke run, no thresholds)."""

from __future__ import annotations

import pytest

from shared.ops.bench import iomodels


def test_every_relay_carries_every_frame(capsys: pytest.CaptureFixture[str]) -> None:
    assert iomodels.main(["--rate", "200", "--count", "60", "--blast", "0.3"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "µs" not in ln]
    names = [r.split("|")[1].strip() for r in rows]
    assert names[:3] == ["blocking socket", "selectors (shared.net)", "asyncio Protocol"]
    for r in rows:
        p50, p99, rate = (float(c.strip().replace(",", "")) for c in r.strip("|").split("|")[1:])
        assert 0 < p50 <= p99 and rate > 0


def test_measure_sees_every_tick_of_the_latency_run() -> None:
    r = iomodels.measure(iomodels.relay_selectors, rate=200, count=40, blast_s=0.2)
    assert r["n"] == 40
