#!/usr/bin/env python3
"""bootstrap: creates or validates the shared-memory book, then keeps it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.bootstrap import Keeper  # noqa: E402
from shared.lifecycle import run  # noqa: E402

if __name__ == "__main__":
    run("bootstrap", Keeper)
