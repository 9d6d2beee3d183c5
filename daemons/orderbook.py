#!/usr/bin/env python3
"""orderbook: the book's single writer, fed by the price stream."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.lifecycle import run  # noqa: E402
from shared.orderbook import BookWriter  # noqa: E402

if __name__ == "__main__":
    run("orderbook", BookWriter)
