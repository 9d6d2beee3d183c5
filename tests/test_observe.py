"""shared.observe's CPU column: a synthetic /proc series (CPU counted in 10 ms ticks) read the
way stack-top polls it, three times a second."""

from __future__ import annotations

import math

import pytest

from shared.observe import CpuWindow

TICK_S = 0.01  # /proc's CPU tick (SC_CLK_TCK = 100)
POLL_S = 0.33  # stack-top's refresh


def proc_series(pct: float, seconds: float) -> list[tuple[float, float]]:
    """(time, CPU seconds as /proc shows it) at each poll of a process using ``pct`` % of a core."""
    return [(i * POLL_S, math.floor(i * POLL_S * pct / 100 / TICK_S) * TICK_S)
            for i in range(int(seconds / POLL_S) + 1)]


@pytest.mark.parametrize("pct", [0.0, 1.6, 3.0, 25.0, 100.0])
def test_a_quiet_program_reads_its_true_share_after_a_few_seconds(pct: float) -> None:
    w = CpuWindow()
    shown = [w.add(t, cpu) for t, cpu in proc_series(pct, 20.0)]
    assert shown[0] is None
    assert all(x is not None and abs(x - pct) <= max(0.4, pct * 0.1) for x in shown[int(5 / POLL_S):]), shown


def test_between_two_polls_it_would_read_zero_or_three() -> None:
    """Why the window: the rate between two polls of a 1.6 % program is 0 or about 3 %."""
    series = proc_series(1.6, 10.0)
    pairwise = {round((c1 - c0) / (t1 - t0) * 100, 1) for (t0, c0), (t1, c1) in zip(series, series[1:], strict=False)}
    assert pairwise <= {0.0, 3.0}


def test_keeps_only_the_window_and_follows_a_change() -> None:
    w = CpuWindow(window_s=4.0)
    cpu = 0.0
    for i in range(60):  # 10 s at 10 %, then 10 s idle
        t = i * POLL_S
        cpu += 0.1 * POLL_S if t < 10 else 0.0
        shown = w.add(t, cpu)
        assert w.samples[-1][0] - w.samples[0][0] <= 4.0 + 1.0 + POLL_S and len(w.samples) <= 7
    assert shown == 0.0  # 10 s idle: the window holds none of the busy time
    assert CpuWindow().add(1.0, 5.0) is None


def test_the_figure_changes_at_most_once_a_second() -> None:
    w = CpuWindow()
    shown = [w.add(i * POLL_S, i * 0.01) for i in range(40)]
    changes = [i for i in range(1, 40) if shown[i] != shown[i - 1]]
    assert all(b - a >= 3 for a, b in zip(changes, changes[1:], strict=False)), changes  # 3 polls = 1 s
