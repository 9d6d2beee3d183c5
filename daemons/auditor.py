#!/usr/bin/env python3
"""auditor: supervisord event listener writing process state changes to the audit log."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config  # noqa: E402

if __name__ == "__main__":
    cfg = config.load_or_exit("auditor")  # before the heavy imports: a bad config exits within startsecs
    from shared.auditor import Auditor
    from shared.lifecycle import run

    run("auditor", Auditor, log_stream=sys.stderr.buffer, cfg=cfg)
