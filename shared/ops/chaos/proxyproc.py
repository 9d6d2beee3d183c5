"""A fault proxy (``shared.ops.chaos.proxy``) in a process of its own, for tests and
the soak, and the client of its control socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from shared import config
from shared.ops.chaos.proxy import addr


class FaultError(Exception):
    """A fault could not be injected (no such program, not running, …)."""


def control(port: int, request: dict[str, Any], host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to a proxy's control socket; its answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise FaultError("proxy closed the control connection")
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    if not reply.get("ok"):
        raise FaultError(f"proxy: {reply.get('error')}")
    return reply


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A fault proxy in a subprocess, for tests: ``with Proxy(upstream) as p: p.set(toxic(...))``.

    ``listen`` is chosen now (``p.port``), so a stack's ``[links]`` can point at
    it before the proxy or the stack starts.
    """

    def __init__(self, upstream: tuple[str, int] | str, listen: int | None = None, name: str = "",
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.upstream = addr(upstream) if isinstance(upstream, str) else upstream
        self.port = listen or free_port()
        self.control_port = free_port()
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` to put in ``[links]``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Proxy:
        """Start the proxy process and wait until its control socket answers."""
        cmd = [sys.executable, "-m", "shared.ops.chaos.faultcmd", "proxy", "--listen", str(self.port),
               "--upstream", f"{self.upstream[0]}:{self.upstream[1]}", "--control", str(self.control_port)]
        if self.name:
            cmd += ["--name", self.name]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=config.ROOT)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FaultError(f"proxy {self.name} exited with {self.proc.returncode} at start")
            try:
                self.call({"op": "ping"}, timeout=1.0)
                return self
            except (OSError, FaultError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise FaultError(f"proxy {self.name} did not answer in {timeout} s") from None
                time.sleep(0.05)

    def call(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return control(self.control_port, request, timeout=timeout)

    def set(self, *toxics: dict[str, Any]) -> dict[str, Any]:
        """Replace the active toxics."""
        return self.call({"op": "set", "toxics": list(toxics)})

    def clear(self) -> dict[str, Any]:
        return self.call({"op": "clear"})

    def stats(self) -> dict[str, Any]:
        return self.call({"op": "stats"})

    def drop(self) -> dict[str, Any]:
        """Reset every proxied connection now."""
        return self.call({"op": "drop"})

    @contextlib.contextmanager
    def toxics(self, *toxics: dict[str, Any]) -> Iterator[Proxy]:
        """The toxics for the ``with`` block, cleared after it."""
        self.set(*toxics)
        try:
            yield self
        finally:
            self.clear()

    def stop(self) -> None:
        """Terminate the proxy process (kill it if it lingers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
