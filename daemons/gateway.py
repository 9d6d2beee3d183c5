#!/usr/bin/env python3
"""gateway: serves the price and news streams."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.gateway import Gateway  # noqa: E402
from shared.lifecycle import run  # noqa: E402

if __name__ == "__main__":
    run("gateway", Gateway)
