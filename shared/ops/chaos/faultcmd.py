"""``deploy/fault``: the fault tool's command line over ``shared.ops.chaos.faults`` and ``shared.ops.chaos.proxy``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import xmlrpc.client
from typing import Any

from shared import config, logs
from shared.ops.chaos import disk, faults
from shared.ops.chaos.faults import (
    CORRUPT_MODES,
    MENU,
    FaultError,
    control,
    corrupt_segment,
    freeze,
    hold_port,
    kill,
    remove_segment,
    serverurl_of,
    tear_last_line,
    toxic_menu,
)
from shared.ops.chaos.proxy import ProxyServer, ToxicError, addr, parse_toxic


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _hold(seconds: float) -> None:
    """Keep a fault in place for ``seconds`` (0: until interrupted)."""
    try:
        if seconds:
            time.sleep(seconds)
        else:
            signal.pause()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/fault", description=faults.__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--conf", default=str(config.ROOT / "deploy" / "supervisord.conf"),
                    help="supervisord.conf of the stack (for its control socket)")
    ap.add_argument("--serverurl", help="supervisord's server URL (overrides --conf)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("kill", help="send a signal (default KILL) to a program, or to supervisord itself")
    p.add_argument("program", help="a supervisord program, or `supervisord`")
    p.add_argument("-s", "--signal", default="KILL", help="name or number: KILL, TERM, 9, …")
    p = sub.add_parser("freeze", help="SIGSTOP a program for SECONDS, then SIGCONT")
    p.add_argument("program")
    p.add_argument("seconds", type=float)
    p = sub.add_parser("proxy", help="run a fault proxy in the foreground")
    p.add_argument("--listen", required=True, help="[HOST:]PORT to listen on")
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    p.add_argument("--control", help="[HOST:]PORT of the control socket (for `fault toxic`)")
    p.add_argument("--name", default="", help="the link's name in the log (price, news, orders)")
    p.add_argument("--toxic", action="append", default=[], help="e.g. latency:ms=200,jitter=50 (repeatable)")
    p.add_argument("--seed", type=int)
    p = sub.add_parser("toxic", help="change a running proxy's toxics")
    p.add_argument("--control", required=True, help="[HOST:]PORT of the proxy's control socket")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--set", nargs="+", metavar="SPEC", help="replace the toxics")
    g.add_argument("--add", metavar="SPEC", help="add one toxic")
    g.add_argument("--clear", action="store_true")
    g.add_argument("--stats", action="store_true")
    g.add_argument("--drop", action="store_true", help="reset every proxied connection")
    p = sub.add_parser("segment", help="remove or corrupt the book segment")
    p.add_argument("action", choices=("remove", "corrupt"))
    p.add_argument("--mode", choices=CORRUPT_MODES, default="torn")
    p.add_argument("--segment", help="segment name (default: book.segment of the config in force)")
    p = sub.add_parser("tear", help="append half of a file's last line (a journal torn by a crash)")
    p.add_argument("path")
    p = sub.add_parser("hold-port", help="hold a TCP port (bound, listening) until SECONDS pass or Ctrl-C")
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seconds", type=float, default=0.0, help="0: until interrupted")
    p = sub.add_parser("disk-full", help="fill the filesystem under DIR to the last block for SECONDS, then free it")
    p.add_argument("dir", nargs="?", help="a directory on it (default: the journal's, of the config in force)")
    p.add_argument("--seconds", type=float, default=0.0, help="0: until interrupted")
    p.add_argument("--max-bytes", type=int, default=disk.MAX_FILL,
                   help=f"refuse to fill more than this (default {disk.MAX_FILL:,})")
    sub.add_parser("menu", help="list the faults a chaos soak draws from")
    a = ap.parse_args(argv)

    log = faults.logger()
    target = a.serverurl or serverurl_of(a.conf)
    try:
        if a.cmd == "kill":
            kill(target, a.program, a.signal)
        elif a.cmd == "freeze":
            freeze(target, a.program, a.seconds)
        elif a.cmd == "proxy":
            ctl_addr = addr(a.control) if a.control else None
            ProxyServer(addr(a.listen), addr(a.upstream), ctl_addr, a.name,
                        [parse_toxic(s) for s in a.toxic], log, a.seed).run()
        elif a.cmd == "toxic":
            host, port = addr(a.control)
            if a.set:
                req: dict[str, Any] = {"op": "set", "toxics": [parse_toxic(s) for s in a.set]}
            elif a.add:
                req = {"op": "add", "toxic": parse_toxic(a.add)}
            else:
                req = {"op": "clear" if a.clear else "drop" if a.drop else "stats"}
            print(json.dumps(control(port, req, host)))
        elif a.cmd == "segment":
            name = a.segment or config.load().book.segment
            if a.action == "remove":
                if not remove_segment(name):
                    print(f"segment {name} did not exist", file=sys.stderr)
                    return 1
            else:
                corrupt_segment(name, a.mode)
        elif a.cmd == "tear":
            tear_last_line(a.path)
        elif a.cmd == "hold-port":
            with hold_port(a.port, a.host):
                _hold(a.seconds)
        elif a.cmd == "disk-full":
            cfg = config.load()
            where = a.dir or str(cfg.resolve(cfg.ordermanager.journal).parent)
            signal.signal(signal.SIGTERM, _interrupt)  # the space comes back whatever stops us
            with disk.full(where, max_bytes=a.max_bytes):
                _hold(a.seconds)
        elif a.cmd == "menu":
            for name in [*MENU, *toxic_menu(dict.fromkeys(("price", "news", "orders"))),  # type: ignore[arg-type]
                         "disk_full_journal"]:  # the soak's, as root: its journal on a tmpfs of its own
                print(name)
    except (FaultError, ToxicError, OSError, xmlrpc.client.Fault, config.ConfigError, ValueError, KeyError) as e:
        log.error("fault_failed", command=a.cmd, error=str(e))
        logs.flush()
        print(f"fault {a.cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
