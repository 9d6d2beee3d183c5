#!/usr/bin/env python3
"""strategy: trades on the book and the news by the rule of contract §7."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.lifecycle import run  # noqa: E402
from shared.strategy import Trader  # noqa: E402

if __name__ == "__main__":
    run("strategy", Trader)
