"""Percentiles: the one way every report (bench, audit, soak) computes them."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = max(0, math.ceil(round(q * len(ordered) / 100, 9)) - 1)  # round: 99.9 % of 2000 is 1998, not 1998.0000001
    return ordered[min(k, len(ordered) - 1)]
