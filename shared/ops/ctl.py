"""Helpers behind deploy/up and deploy/down (``python -m shared.ops.ctl CMD``).

prepare   check the config, every strategy's rule and (when enabled) the prometheus binary and
          its rules (promtool), make logs/ and the order-entry token (0600), write
          deploy/strategies.conf (one supervisord program per [strategies.<name>], and prometheus)
render    print deploy/supervisord.conf with only this host's programs ([host] roles)
wait      wait until every supervisord program is RUNNING, print the status
sweep     stop this checkout's daemons that run without a supervisord (orphans
          of a supervisord that died), in order: TERM, wait, KILL
cleanup   remove the segment named by the config
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from shared import book, config, promconf
from shared.decision import rule_for
from shared.lifecycle import is_supervisord

SERVERURL = "unix:///tmp/tradestack/supervisor.sock"
# The order orphans are stopped in: the recorder and order entry first, the venue, the book's feed next,
# the auditor last.
STOP_ORDER = ("recorder", "strategy", "ordermanager", "exchange", "orderbook", "gateway", "bootstrap", "metrics",
              "auditor")
TERM_WAIT_S = 10.0  # supervisord.conf's stopwaitsecs: a daemon drains within 5 s
PROGRAMS_FILE = "strategies.conf"  # beside supervisord.conf, which includes it


def strategy_programs(conf_text: str, cfg: config.Config) -> str:
    """The supervisord sections of the ``[strategies.<name>]`` tables: each a copy
    of ``[program:strategy]`` from ``conf_text``, named ``strategy-<name>``, whose
    command runs that strategy; and the ``prometheus`` program when ``[prometheus] enabled``."""
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
    if cfg.prometheus.enabled:
        out += ["", copy_program(conf_text, promconf.PROGRAM, "Prometheus beside the stack ([prometheus] enabled = "
                                 "true): shared/promconf.py.")]
    if cfg.recorder.enabled:
        out += ["", copy_program(conf_text, "recorder", "The stack records all the time ([recorder] enabled = true): "
                                 "shared/recorder.py.")]
    return "\n".join(out) + "\n"


def copy_program(conf_text: str, program: str, comment: str) -> str:
    """The supervisord section of ``program``: a copy of ``[program:metrics]`` from ``conf_text``
    (same paths, restarts and logs) whose command runs daemons/<program>.py."""
    lines = conf_text.splitlines()
    start = lines.index("[program:metrics]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    while lines[end - 1].startswith(";") or not lines[end - 1].strip():
        end -= 1  # the next section's comment
    section = "\n".join(lines[start:end]).replace("[program:metrics]", f"[program:{program}]", 1)
    section, n = re.subn(r"^(command=.*daemons/)metrics\.py$", rf"\g<1>{program}.py", section, count=1, flags=re.M)
    assert n == 1, "[program:metrics] has no command running daemons/metrics.py"
    return f"; {comment}\n{section}\n"


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
    promconf.check(cfg)
    write_programs(config.ROOT / "deploy" / "supervisord.conf", cfg)
    (config.ROOT / "logs").mkdir(exist_ok=True)
    tok = cfg.resolve(cfg.ordermanager.token_file)
    if not tok.exists():
        tok.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        print(f"created token file {tok} (mode 0600)")


def render(cfg: config.Config, text: str, here: str) -> str:
    """The supervisord config for this host: the programs of its roles (and the auditor), the
    ``[strategies.<name>]`` programs written in place of the ``[include]`` of strategies.conf, and
    ``%(here)s`` made absolute so the file may live elsewhere (deploy/up writes it under /tmp)."""
    include = f"[include]\nfiles = {PROGRAMS_FILE}\n"
    if (cfg.strategies or cfg.prometheus.enabled or cfg.recorder.enabled) and include in text:
        text = text.replace(include, strategy_programs(text, cfg))
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
        print(f"{i['name']:<24}{i['statename']}", file=sys.stderr)
    return False


# --- orphans ------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    """A live process running one of this checkout's ``daemons/*.py``."""

    pid: int
    program: str  # supervisord's name for it, else the script's
    script: str  # daemons/<script>.py
    ppid: int
    start: int  # /proc/<pid>/stat starttime: a reused pid has another
    config: str | None  # its STACK_CONFIG

    @property
    def rank(self) -> int:
        """Its place in STOP_ORDER."""
        return STOP_ORDER.index(self.script) if self.script in STOP_ORDER else len(STOP_ORDER)

    def describe(self) -> str:
        return f"{self.program} pid {self.pid} (parent {self.ppid}, config {self.config or '?'})"


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return rest[0].decode(), int(rest[1]), int(rest[19])


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


def _script(pid: int, daemons_dir: str) -> str | None:
    """The daemons/<name>.py this process runs, if it is one of ``daemons_dir``'s."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        scripts = [a for a in argv[1:] if a.endswith(".py")]
        cwd = os.readlink(f"/proc/{pid}/cwd") if scripts else ""
    except OSError:
        return None
    for arg in scripts:
        path = os.path.realpath(os.path.join(cwd, arg))
        if os.path.dirname(path) == daemons_dir:
            return os.path.basename(path)[:-3]
    return None


def daemons(root: Path = config.ROOT, config_path: str | os.PathLike[str] | None = None) -> list[Daemon]:
    """This checkout's daemons alive now (of the stack run with ``config_path``, if given)."""
    daemons_dir = os.path.realpath(root / "daemons")
    want = os.path.realpath(config_path) if config_path is not None else None
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        pid = int(d.name)
        script = _script(pid, daemons_dir)
        st = proc_stat(pid)
        if script is None or st is None or st[0] in "ZX":
            continue
        env = _environ(pid)
        cfg = env.get("STACK_CONFIG")
        if want is not None and (cfg is None or os.path.realpath(cfg) != want):
            continue
        found.append(Daemon(pid, env.get("SUPERVISOR_PROCESS_NAME", script), script, st[1], st[2], cfg))
    return sorted(found, key=lambda x: (x.rank, x.program, x.pid))


def orphans(root: Path = config.ROOT, config_path: str | os.PathLike[str] | None = None) -> list[Daemon]:
    """This checkout's daemons whose parent is not a supervisord."""
    return [d for d in daemons(root, config_path) if not is_supervisord(d.ppid)]


def alive(d: Daemon) -> bool:
    """The same process still runs (not exited, not a zombie, pid not reused)."""
    st = proc_stat(d.pid)
    return st is not None and st[0] not in "ZX" and st[2] == d.start


def _signal(d: Daemon, sig: signal.Signals) -> None:
    if alive(d):
        try:
            os.kill(d.pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(ds: Iterable[Daemon], deadline: float) -> list[Daemon]:
    left = [d for d in ds if alive(d)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [d for d in left if alive(d)]
    return left


def stop(ds: Iterable[Daemon], out: Callable[[str], None] = print, term_wait_s: float = TERM_WAIT_S) -> None:
    """Stop these processes in STOP_ORDER: SIGTERM (and SIGCONT, should one be
    frozen), wait for its orderly shutdown, SIGKILL what is left."""
    by_rank: dict[int, list[Daemon]] = {}
    for d in ds:
        by_rank.setdefault(d.rank, []).append(d)
    for rank in sorted(by_rank):
        group = by_rank[rank]
        t0 = time.monotonic()
        for d in group:
            out(f"stopping {d.describe()}: SIGTERM")
            _signal(d, signal.SIGTERM)
            _signal(d, signal.SIGCONT)
        left = _wait_gone(group, t0 + term_wait_s)
        for d in left:
            out(f"{d.program} pid {d.pid} still runs {term_wait_s:g} s after SIGTERM: SIGKILL")
            _signal(d, signal.SIGKILL)
        for d in _wait_gone(left, time.monotonic() + 5.0):
            out(f"{d.program} pid {d.pid} survived SIGKILL")
        for d in group:
            if d not in left:
                out(f"stopped {d.program} pid {d.pid} in {time.monotonic() - t0:.1f} s")


def sweep(root: Path = config.ROOT, config_path: str | os.PathLike[str] | None = None,
          out: Callable[[str], None] = print, term_wait_s: float = TERM_WAIT_S) -> list[Daemon]:
    """Find this checkout's daemons running without a supervisord, say so, stop them in order."""
    found = orphans(root, config_path)
    if found:
        out(f"found {len(found)} program(s) of {root} running without supervisord "
            "(a supervisord that died); stopping them in order:")
        stop(found, out, term_wait_s)
    return found


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "sweep":
        left = sweep()
        return 1 if any(alive(d) for d in left) else 0
    try:
        cfg = config.load()
    except config.ConfigError as e:
        print(f"bad config: {e}", file=sys.stderr)
        return 2
    if cmd == "prepare":
        try:
            prepare(cfg)
        except config.ConfigError as e:
            print(f"bad config: {e}", file=sys.stderr)
            return 2
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
