#!/usr/bin/env python3
"""ordermanager: authenticates, validates, journals and acknowledges orders."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.lifecycle import run  # noqa: E402
from shared.ordermanager import OrderManager  # noqa: E402

if __name__ == "__main__":
    run("ordermanager", OrderManager)
