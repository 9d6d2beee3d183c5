#!/usr/bin/env python3
"""metrics: the stack's figures as Prometheus text at [metrics] host:port /metrics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("metrics")  # before the heavy imports: a bad config exits within startsecs
    from shared.lifecycle import run
    from shared.metrics import Exporter

    run("metrics", Exporter, cfg=cfg)
