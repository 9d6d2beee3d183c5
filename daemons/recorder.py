#!/usr/bin/env python3
"""recorder: the stack records all the time ([recorder] enabled = true): every tick of both
streams to a tape per start under [recorder] dir, rolled by size (shared/recorder.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("recorder")  # before the heavy imports: a bad config exits within startsecs
    from shared.lifecycle import run
    from shared.recorder import Session

    run("recorder", Session, cfg=cfg)
