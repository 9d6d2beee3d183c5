#!/usr/bin/env python3
"""bootstrap: creates or validates the shared-memory book, then keeps it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("bootstrap")  # before the heavy imports: a bad config exits within startsecs
    from shared.bootstrap import Keeper
    from shared.lifecycle import run

    run("bootstrap", Keeper, cfg=cfg)
