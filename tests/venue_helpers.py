"""What the venue's tests share: a price feed they drive tick by tick, and an exchange (with or
without the real gateway) run as plain processes, without supervisord and without an
ordermanager, so that the test's VenueClient is the only one on the venue port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from shared import config
from shared.ops.harness import Stack, free_port, read_jsonl
from shared.ops.peer import VenueClient
from shared.protocol import Heartbeat, Hello, Price, frame


class PriceFeed:
    """A gateway's price stream that sends only what the test says: hello, the latest price of
    every symbol ticked so far (snapshot), then each ``tick`` to every subscriber."""

    def __init__(self, symbols: tuple[str, ...] = ("AAPL", "MSFT", "GOOGL")) -> None:
        self.symbols = symbols
        self.session = uuid.uuid4().hex[:16]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seq = 0
        self.latest: dict[str, Price] = {}
        self.subs: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                out = frame(Hello(proto=1, stream="price", session=self.session, symbols=list(self.symbols),
                                  heartbeat_ms=200, next_seq=self.seq + 1))
                out += b"".join(frame(Price(seq=p.seq, ts_ns=p.ts_ns, symbol=p.symbol, price=p.price, snapshot=True))
                                for p in self.latest.values())
                self._send(s, out)

    def _send(self, s: socket.socket, data: bytes) -> None:
        try:
            s.sendall(data)
            if s not in self.subs:
                self.subs.append(s)
        except OSError:
            s.close()
            if s in self.subs:
                self.subs.remove(s)

    def _beat(self) -> None:
        while not self.stopped:
            time.sleep(0.1)
            with self.lock:
                for s in list(self.subs):
                    self._send(s, frame(Heartbeat(ts_ns=time.time_ns(), seq=self.seq)))

    def tick(self, symbol: str, price: float) -> int:
        """Send one price tick to every subscriber; its seq."""
        with self.lock:
            self.seq += 1
            p = Price(seq=self.seq, ts_ns=time.time_ns(), symbol=symbol, price=price)
            self.latest[symbol] = p
            for s in list(self.subs):
                self._send(s, frame(p))
            return self.seq

    def subscribers(self) -> int:
        with self.lock:
            return len(self.subs)

    def close(self) -> None:
        self.stopped = True
        self.sock.close()
        with self.lock:
            for s in self.subs:
                s.close()


class Venue:
    """An exchange process (and, if asked, a gateway) on a private config; restartable, killable."""

    def __init__(self, workdir: Path, feed: PriceFeed | None = None, exchange: dict[str, Any] | None = None,
                 gateway: dict[str, Any] | None = None) -> None:
        overrides: dict[str, Any] = {"exchange": {"port": free_port(), "heartbeat_ms": 2000,
                                                  "journal": str(workdir / "logs" / "exchange.jsonl"),
                                                  **(exchange or {})}}
        if feed is not None:
            overrides["links"] = {"price": f"127.0.0.1:{feed.port}"}
        if gateway is not None:
            overrides["gateway"] = gateway
        self.stack = Stack(workdir, overrides)  # only its config, token and logs dir: never started
        shutil.rmtree(self.stack.run, ignore_errors=True)
        self.cfg = self.stack.cfg
        self.token = self.stack.token
        self.journal = self.cfg.resolve(self.cfg.exchange.journal)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.feed = feed

    def start(self, program: str = "exchange", wait: bool = True) -> subprocess.Popen[bytes]:
        with open(self.stack.logs / f"{program}.log", "ab") as out, \
                open(self.stack.logs / f"{program}.err", "ab") as err:
            p = subprocess.Popen([sys.executable, str(config.ROOT / "daemons" / f"{program}.py")],
                                 env=self.stack.env, cwd=config.ROOT, stdout=out, stderr=err)
        self.procs[program] = p
        if wait and program == "exchange":
            self.wait_for(lambda: self.listening(p.pid), timeout=30)
        return p

    def listening(self, pid: int) -> bool:
        return any(r.get("pid") == pid for r in self.events("exchange", "listening"))

    def kill9(self, program: str = "exchange") -> None:
        p = self.procs.pop(program)
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop(self, program: str = "exchange", timeout: float = 15) -> int:
        """SIGTERM and wait: its exit status."""
        p = self.procs.pop(program)
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise

    def client(self, last_exec_id: int | None = None, logon: bool = True) -> VenueClient:
        x = self.cfg.exchange
        c = VenueClient(x.host, x.port, timeout=10)
        if logon:
            c.logon(self.token, last_exec_id)
        return c

    def log(self, program: str = "exchange") -> list[dict[str, Any]]:
        return read_jsonl(self.stack.logs / f"{program}.log")

    def events(self, program: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.log(program) if r.get("event") == event]

    def journal_lines(self) -> list[dict[str, Any]]:
        from shared.journal import segments

        return [json.loads(line) for p in segments(self.journal) for line in p.read_bytes().splitlines()]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> Any:
        return self.stack.wait_for(predicate, timeout=timeout, interval=0.02)

    def close(self) -> None:
        for name in list(self.procs):
            try:
                self.stop(name)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass

    def __enter__(self) -> Venue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
