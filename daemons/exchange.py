#!/usr/bin/env python3
"""exchange: the venue; matches routed orders against each other and its quote, reports executions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("exchange")  # before the heavy imports: a bad config exits within startsecs
    from shared.exchange import Exchange
    from shared.lifecycle import run

    run("exchange", Exchange, cfg=cfg)
