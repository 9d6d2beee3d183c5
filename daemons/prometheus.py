#!/usr/bin/env python3
"""prometheus: a real Prometheus beside the stack ([prometheus] enabled = true).

Renders prometheus.yml from the config (shared/promconf.py) under [prometheus]
data_dir, then becomes Prometheus (exec), so supervisord stops, restarts and
logs Prometheus itself. The parent-death signal set first survives the exec:
Prometheus ends with its supervisord, as every daemon does.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config, logs, promconf  # noqa: E402
from shared.lifecycle import Parent  # noqa: E402

if __name__ == "__main__":
    parent = Parent()
    cfg = config.load_or_exit(promconf.PROGRAM)
    log = logs.configure(promconf.PROGRAM)
    try:
        argv = promconf.prepare(cfg)
    except (config.ConfigError, OSError) as e:
        print(f"{promconf.PROGRAM}: cannot start: {e}", file=sys.stderr)
        log.error("start_failed", error=str(e))
        logs.flush()
        raise SystemExit(2) from None
    log.info("started", config=cfg.path, parent=parent.pid, pdeathsig=parent.pdeathsig, argv=argv)
    logs.flush()
    os.dup2(1, 2)  # Prometheus logs JSON to stderr: keep it in logs/prometheus.log with ours
    os.execv(argv[0], argv)
