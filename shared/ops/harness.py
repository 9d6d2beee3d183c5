"""A private stack under the real supervisord, started from a temporary copy
of deploy/supervisord.conf with its own ports, segment, socket and logs.

Tests, the bench and the soak use it; so can a person who wants a second
stack beside the one deploy/up runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
import xmlrpc.client
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
from supervisor.xmlrpc import SupervisorTransport

from shared import book, config, execjournal, journal
from shared.ops import ctl
from shared.ops.ctl import write_programs

PROGRAMS = ("auditor", "bootstrap", "exchange", "gateway", "metrics", "orderbook", "ordermanager",
            "strategy")  # every stack's


_handed: deque[int] = deque(maxlen=64)  # the ports free_port gave lately: perhaps not bound yet


def free_port() -> int:
    """A TCP port nobody listens on right now, and none of the last ones given: the kernel may offer
    a port again before the first caller binds it (a stack's price and news ports were one, once)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed:
            _handed.append(port)
            return port


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. [risk] clients = {"c1" = {max_position = 5}}
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """Write a TOML document: top keys, then tables (nested ones as [a.b])."""
    top = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    out = "\n".join(top) + "\n"
    for k, v in doc.items():
        if isinstance(v, dict):
            name = f"{prefix}{json.dumps(k) if not k.replace('-', '').replace('_', '').isalnum() else k}"
            out += f"\n[{name}]\n" + dump_toml(v, name + ".")
    return out


class Stack:
    """One private stack: ``with Stack(tmp) as s: ...`` starts and removes it."""

    def __init__(self, workdir: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> None:
        self.dir = Path(workdir)
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Short, so the AF_UNIX path fits however deep workdir lies.
        self.run = Path(tempfile.mkdtemp(prefix="ts", dir="/tmp"))
        self.segment = f"ts_{uuid.uuid4().hex[:10]}"
        with open(config.DEFAULT_PATH, "rb") as f:
            doc = tomllib.load(f)
        doc["gateway"].update(price_port=free_port(), news_port=free_port(), state=str(self.logs / "gateway.state"))
        doc["ordermanager"].update(port=free_port(), token_file=str(self.dir / "order.token"),
                                   journal=str(self.logs / "orders.jsonl"))
        doc.setdefault("exchange", {}).update(port=free_port(), journal=str(self.logs / "exchange.jsonl"))
        doc["book"]["segment"] = self.segment
        doc["auditor"] = {"log": str(self.logs / "audit.log")}
        doc["metrics"] = {"host": "127.0.0.1", "port": free_port()}
        doc["prometheus"] = {**doc.get("prometheus", {}), "port": free_port(),
                             "data_dir": str(self.logs / "prometheus")}
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                doc.setdefault(section, {}).update(values)
            else:
                doc[section] = values
        self.doc = doc
        self.config_path = self.dir / "stack.toml"
        self.config_path.write_text(dump_toml(doc))
        self.cfg = config.load(self.config_path)
        tok = self.dir / "order.token"
        tok.write_text(uuid.uuid4().hex + "\n")
        tok.chmod(0o600)
        self.token = tok.read_text().strip()
        text = (config.ROOT / "deploy" / "supervisord.conf").read_text()
        text = (text.replace("%(here)s/../logs", str(self.logs))
                .replace("%(here)s/../.venv/bin/python", sys.executable)
                .replace("%(here)s/..", str(config.ROOT))
                .replace("/tmp/tradestack", str(self.run)))
        self.conf = self.dir / "supervisord.conf"
        self.conf.write_text(text)
        write_programs(self.conf, self.cfg)
        self.programs = (PROGRAMS + tuple(st.program for st in self.cfg.strategies.values())
                         + (("prometheus",) if self.cfg.prometheus.enabled else ()))
        self.strategies = self.cfg.all_strategies()
        self.serverurl = f"unix://{self.run}/supervisor.sock"
        self.env = dict(os.environ, STACK_CONFIG=str(self.config_path))
        self.pid: int | None = None

    # --- supervisord ----------------------------------------------------------

    def start(self, wait: bool = True, timeout: float = 30.0) -> Stack:
        """Start supervisord (it daemonizes) and wait for every program to run."""
        pidfile = self.run / "supervisord.pid"
        pidfile.unlink(missing_ok=True)  # a killed supervisord leaves its own
        # Its start-up words ("Unlinking stale socket") go to stderr: a tool's stdout is its report.
        subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
                       env=self.env, check=True, cwd=self.dir, stdout=2)
        deadline = time.monotonic() + timeout
        while not (text := pidfile.read_text().strip() if pidfile.exists() else ""):
            if time.monotonic() > deadline:
                raise TimeoutError("supervisord wrote no pid file")
            time.sleep(0.05)
        self.pid = int(text)
        if wait:
            self.wait_running(timeout=timeout)
            self.wait_ready(timeout=timeout)
        return self

    def up(self, timeout: float = 30.0, out: Any = None) -> list[ctl.Daemon]:
        """What ``deploy/up`` does when supervisord is not running: stop this
        stack's orphans in order, then start afresh. Returns the orphans found."""
        if self.pid is not None and _alive(self.pid):
            return []
        found = ctl.sweep(config.ROOT, self.config_path, out or (lambda _: None))
        self.start(timeout=timeout)
        return found

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the servers listen and the book is fresh: RUNNING only
        means a program stayed up for ``startsecs``."""
        def ready() -> bool:
            if (len(self.events("gateway", "listening")) < 2 or not self.events("ordermanager", "listening")
                    or not self.events("metrics", "listening") or not self.events("exchange", "listening")):
                return False
            try:
                seg = book.Segment.attach(self.segment)
            except book.BookError:
                return False
            try:
                return seg.age_ms() < self.cfg.book.stale_ms
            finally:
                seg.close()

        self.wait_for(ready, timeout=timeout)

    @property
    def rpc(self) -> Any:
        """The supervisor XML-RPC namespace (a fresh proxy each time)."""
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1",
                                          transport=SupervisorTransport(None, None, self.serverurl))
        return proxy.supervisor

    def ctl(self, *args: str, check: bool = False) -> str:
        """Run supervisorctl against this stack; its output."""
        r = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
                           env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"supervisorctl {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout + r.stderr

    def status(self) -> dict[str, str]:
        """Program name -> state name."""
        return {i["name"]: i["statename"] for i in self.rpc.getAllProcessInfo()}

    def pids(self) -> dict[str, int]:
        return {i["name"]: i["pid"] for i in self.rpc.getAllProcessInfo()}

    def wait_running(self, names: tuple[str, ...] | None = None, timeout: float = 30.0) -> None:
        """Wait until the named programs (default: all of them) are RUNNING."""
        names = names or self.programs
        deadline = time.monotonic() + timeout
        st: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                st = self.status()
            except (OSError, xmlrpc.client.Fault):  # SHUTDOWN_STATE while supervisord reloads
                st = {}
            if st and all(st.get(n) == "RUNNING" for n in names):
                return
            time.sleep(0.1)
        raise TimeoutError(f"not RUNNING after {timeout} s: {st}")

    def stop(self) -> None:
        """Shut supervisord and every program down; remove segment and socket dir."""
        if self.pid is not None:
            try:
                self.rpc.shutdown()
            except (OSError, xmlrpc.client.Fault):
                _kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.pid):
                _kill(self.pid, signal.SIGKILL)
            self.pid = None
        ctl.sweep(config.ROOT, self.config_path, lambda _: None)  # what a killed supervisord left
        book.unlink(self.segment)
        shutil.rmtree(self.run, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- what it wrote --------------------------------------------------------

    def log(self, program: str) -> list[dict[str, Any]]:
        """The JSON records of a program's log (its rotated files too)."""
        name = "auditor.log" if program == "auditor" else f"{program}.log"
        return read_jsonl(self.logs / name)

    def events(self, program: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.log(program) if r.get("event") == event]

    def journal(self) -> list[dict[str, Any]]:
        """Every journaled order, oldest first (closed segments, then the open one)."""
        return list(journal.read(self.cfg.resolve(self.cfg.ordermanager.journal)))

    def execs(self) -> list[dict[str, Any]]:
        """The ordermanager's exec journal: every exec it had from the venue, by exec_id (every segment)."""
        return [msgspec.to_builtins(x) for x in execjournal.read_lines(self.cfg.resolve(self.cfg.ordermanager.journal))]

    def exchange_journal(self) -> Path:
        """The exchange's journal (its open segment; ``stack-replay`` reads them all)."""
        return self.cfg.resolve(self.cfg.exchange.journal)

    def audit(self) -> list[dict[str, Any]]:
        return read_jsonl(self.logs / "audit.log")

    def wait_for(self, predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
        """Poll ``predicate()`` until it is truthy; return its value or raise."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {timeout} s")
            time.sleep(interval)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of a file and its rotations (oldest first); others skipped."""
    out: list[dict[str, Any]] = []
    files = sorted(path.parent.glob(path.name + ".*"),
                   key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for p in [*files, path]:
        if not p.exists() or not (p == path or p.suffix[1:].isdigit()):
            continue
        with open(p, "rb") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie, which pid 1 reaps when it will, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
