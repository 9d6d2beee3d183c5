"""The chaos soak, as CI runs it: 30 seconds of random faults, then the invariants."""

from __future__ import annotations

from pathlib import Path

from shared.ops.chaos import soak


def test_soak_30s_heals_every_fault_and_loses_no_order(tmp_path: Path) -> None:
    report = soak.run(30, seed=7, workdir=tmp_path)
    text = soak.table(report)
    print(text)
    assert not report["failures"], text
    assert sum(len(v) for v in report["recoveries"].values()) >= 3, text
    o = report["orders"]
    assert o["journaled"] > 0 and o["duplicated"] == 0 and o["lost"] == 0, text
