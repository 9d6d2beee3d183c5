#!/usr/bin/env python3
"""orderbook: the book's single writer, fed by the price stream."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("orderbook")  # before the heavy imports: a bad config exits within startsecs
    from shared.lifecycle import run
    from shared.orderbook import BookWriter

    run("orderbook", BookWriter, cfg=cfg)
