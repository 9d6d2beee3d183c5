#!/usr/bin/env python3
"""metrics: the stack's figures as Prometheus text at [metrics] host:port /metrics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.lifecycle import run  # noqa: E402
from shared.metrics import Exporter  # noqa: E402

if __name__ == "__main__":
    run("metrics", Exporter)
