"""The one percentile every report uses."""

from __future__ import annotations

import math

import pytest

from shared.ops.stats import percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        (range(1, 101), 50, 50),
        (range(1, 101), 99, 99),
        (range(1, 101), 100, 100),
        (range(1, 2001), 99.9, 1998),  # no float error pushing the rank to 1999
        ([3.0], 99, 3.0),
        ([5, 1, 3], 50, 3),  # any order
        ([1, 2], 50, 1),
    ],
)
def test_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_empty_is_nan() -> None:
    assert math.isnan(percentile([], 50))
