"""Helpers behind deploy/up and deploy/down (``python -m shared.ops.ctl CMD``).

prepare   check the config, make logs/ and the order-entry token (0600)
render    print deploy/supervisord.conf with only this host's programs ([host] roles)
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
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from shared import book, config

SERVERURL = "unix:///tmp/tradestack/supervisor.sock"


def rpc(serverurl: str = SERVERURL) -> Any:
    """An XML-RPC proxy to supervisord over its unix socket."""
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, serverurl))


def prepare(cfg: config.Config) -> None:
    """Make what the stack needs before it starts; idempotent."""
    (config.ROOT / "logs").mkdir(exist_ok=True)
    tok = cfg.resolve(cfg.ordermanager.token_file)
    if not tok.exists():
        tok.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        print(f"created token file {tok} (mode 0600)")


def render(cfg: config.Config, text: str, here: str) -> str:
    """The supervisord config for this host: the programs of its roles (and the auditor), with
    ``%(here)s`` made absolute so the file may live elsewhere (deploy/up writes it under /tmp)."""
    out, keep = [], True
    for line in text.splitlines(keepends=True):
        m = re.match(r"\[(?:program|eventlistener):([^\]]+)\]", line)
        if m:
            keep = cfg.runs(m.group(1))
        elif line.startswith("["):
            keep = True
        if keep:
            out.append(line)
    return "".join(out).replace("%(here)s", here)


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
        print(f"{i['name']:<14}{i['statename']}", file=sys.stderr)
    return False


def main(argv: list[str]) -> int:
    try:
        cfg = config.load()
    except config.ConfigError as e:
        print(f"bad config: {e}", file=sys.stderr)
        return 2
    cmd = argv[0] if argv else ""
    if cmd == "prepare":
        prepare(cfg)
    elif cmd == "render":
        deploy = config.ROOT / "deploy"
        sys.stdout.write(render(cfg, (deploy / "supervisord.conf").read_text(), str(deploy)))
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
