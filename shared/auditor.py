"""auditor: a supervisord event listener that writes every PROCESS_STATE
event to the audit log (contract §6). Its stdout belongs to supervisord's
listener protocol, so its own log lines go to stderr.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import sys
from typing import IO, Any

import orjson
from supervisor import childutils

from shared import config as config_mod
from shared.lifecycle import SUPERVISOR_GONE, StopRequested

PREFIX = "PROCESS_STATE_"


def record(headers: dict[str, str], payload: str) -> dict[str, Any] | None:
    """The audit record of one event, or None if it is not a state change."""
    name = headers.get("eventname", "")
    if not name.startswith(PREFIX):
        return None
    fields, _ = childutils.eventdata(payload + "\n")
    to_state = name[len(PREFIX) :]
    pid = fields.get("pid")
    return {
        "ts": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "event": "process_state",
        "process": fields.get("processname"),
        "group": fields.get("groupname"),
        "from_state": fields.get("from_state"),
        "to_state": to_state,
        "expected": bool(int(fields["expected"])) if to_state == "EXITED" and "expected" in fields else None,
        "pid": int(pid) if pid and pid.isdigit() else None,
    }


class Auditor:
    """The listener component: one event per turn, or a short wait."""

    def __init__(self, cfg: config_mod.Config, log: Any,
                 stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
        self.log = log
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout
        path = cfg.resolve(cfg.auditor.log)
        os.makedirs(path.parent, exist_ok=True)
        self.out = open(path, "ab")
        self.path = str(path)
        self.ready = False

    def step(self) -> None:
        try:
            self._turn()
        except BrokenPipeError:  # our stdout is supervisord's pipe
            raise StopRequested(SUPERVISOR_GONE) from None

    def _turn(self) -> None:
        if not self.ready:
            childutils.listener.ready(self.stdout)
            self.ready = True
        r, _, _ = select.select([self.stdin], [], [], 0.2)
        if not r:
            return
        line = self.stdin.readline()
        if not line:  # supervisord is gone
            raise StopRequested(SUPERVISOR_GONE)
        headers = childutils.get_headers(line)
        payload = self.stdin.read(int(headers["len"]))
        rec = record(headers, payload)
        if rec is not None:
            self.out.write(orjson.dumps(rec) + b"\n")
            self.out.flush()
        childutils.listener.ok(self.stdout)
        self.ready = False

    def shutdown(self, deadline: float) -> None:
        # supervisord sends no event to a listener it is stopping, so on a
        # stop or a reload the auditor records its own stop itself.
        me = {"eventname": PREFIX + "STOPPING"}
        payload = (f"processname:{os.environ.get('SUPERVISOR_PROCESS_NAME', 'auditor')} "
                   f"groupname:{os.environ.get('SUPERVISOR_GROUP_NAME', 'auditor')} "
                   f"from_state:RUNNING pid:{os.getpid()}")
        self.out.write(orjson.dumps(record(me, payload)) + b"\n")
        self.out.close()
