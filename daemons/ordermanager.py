#!/usr/bin/env python3
"""ordermanager: authenticates, validates, journals and acknowledges orders."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("ordermanager")  # before the heavy imports: a bad config exits within startsecs
    from shared.lifecycle import run
    from shared.ordermanager import OrderManager

    run("ordermanager", OrderManager, cfg=cfg)
