"""Helpers behind deploy/up and deploy/down (``python -m shared.ops.ctl CMD``).

prepare   check the config and every strategy's rule, make logs/ and the order-entry token (0600),
          write deploy/strategies.conf (one supervisord program per [strategies.<name>])
wait      wait until every supervisord program is RUNNING, print the status
cleanup   remove the segment named by the config
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from shared import book, config
from shared.strategy import rule_for

SERVERURL = "unix:///tmp/tradestack/supervisor.sock"
PROGRAMS_FILE = "strategies.conf"  # beside supervisord.conf, which includes it


def strategy_programs(conf_text: str, cfg: config.Config) -> str:
    """The supervisord sections of the ``[strategies.<name>]`` tables: each a copy
    of ``[program:strategy]`` from ``conf_text``, named ``strategy-<name>``, whose
    command runs that strategy."""
    lines = conf_text.splitlines()
    start = lines.index("[program:strategy]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    while lines[end - 1].startswith(";") or not lines[end - 1].strip():
        end -= 1  # the next section's comment
    section = "\n".join(lines[start:end])
    out = ["; Written from the config by `python -m shared.ops.ctl prepare` (deploy/up): do not edit."]
    for st in cfg.strategies.values():
        s = section.replace("[program:strategy]", f"[program:{st.program}]", 1)
        s, n = re.subn(r"^(command=.*daemons/strategy\.py)$", rf"\1 {st.name}", s, count=1, flags=re.M)
        assert n == 1, "[program:strategy] has no command running daemons/strategy.py"
        out += ["", s]
    return "\n".join(out) + "\n"


def write_programs(conf: Path, cfg: config.Config) -> Path:
    """Write the strategies' programs beside ``conf`` (a supervisord.conf that includes them)."""
    path = conf.parent / PROGRAMS_FILE
    text = strategy_programs(conf.read_text(), cfg)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def rpc(serverurl: str = SERVERURL) -> Any:
    """An XML-RPC proxy to supervisord over its unix socket."""
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, serverurl))


def prepare(cfg: config.Config) -> None:
    """Make what the stack needs before it starts; idempotent. A strategy whose
    rule cannot be built is a ConfigError here, before anything starts."""
    for st in cfg.all_strategies():
        rule_for(cfg, st)
    write_programs(config.ROOT / "deploy" / "supervisord.conf", cfg)
    (config.ROOT / "logs").mkdir(exist_ok=True)
    tok = cfg.resolve(cfg.ordermanager.token_file)
    if not tok.exists():
        tok.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        print(f"created token file {tok} (mode 0600)")


def wait_running(serverurl: str = SERVERURL, timeout: float = 60.0) -> bool:
    """Poll supervisord until every program is RUNNING; False on timeout or FATAL."""
    deadline = time.monotonic() + timeout
    infos: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            infos = rpc(serverurl).supervisor.getAllProcessInfo()
        except OSError:
            infos = []
        if infos and all(i["statename"] == "RUNNING" for i in infos):
            return True
        if any(i["statename"] == "FATAL" for i in infos):
            break
        time.sleep(0.2)
    for i in infos:
        print(f"{i['name']:<24}{i['statename']}", file=sys.stderr)
    return False


def main(argv: list[str]) -> int:
    try:
        cfg = config.load()
    except config.ConfigError as e:
        print(f"bad config: {e}", file=sys.stderr)
        return 2
    cmd = argv[0] if argv else ""
    if cmd == "prepare":
        try:
            prepare(cfg)
        except config.ConfigError as e:
            print(f"bad config: {e}", file=sys.stderr)
            return 2
    elif cmd == "wait":
        return 0 if wait_running() else 1
    elif cmd == "cleanup":
        if book.unlink(cfg.book.segment):
            print(f"removed segment /dev/shm/{cfg.book.segment}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
