#!/usr/bin/env python3
"""gateway: serves the price and news streams."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("gateway")  # before the heavy imports: a bad config exits within startsecs
    from shared.gateway import Gateway
    from shared.lifecycle import run

    run("gateway", Gateway, cfg=cfg)
