#!/usr/bin/env python3
"""strategy: trades on the news with its rule, reading the book's tick ring.

``strategy.py`` runs the program ``strategy`` of ``[strategy]``;
``strategy.py NAME`` runs ``strategy-NAME`` of ``[strategies.NAME]``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    program = f"strategy-{name}" if name else "strategy"
    cfg = config.load_or_exit(program)  # before the heavy imports: a bad config exits within startsecs
    from shared.lifecycle import run
    from shared.strategy import Trader

    run(program, lambda cfg, log: Trader(cfg, log, name), cfg=cfg)
