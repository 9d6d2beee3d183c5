#!/usr/bin/env python3
"""auditor: supervisord event listener writing process state changes to the audit log."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.auditor import Auditor  # noqa: E402
from shared.lifecycle import run  # noqa: E402

if __name__ == "__main__":
    run("auditor", Auditor, log_stream=sys.stderr.buffer)
