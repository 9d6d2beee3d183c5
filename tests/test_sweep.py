"""stack-backtest --sweep: the grid on a local process pool, one row per
combination sorted by P&L, and the same rows from a real Dask cluster (a
``dask scheduler`` and two ``dask worker`` processes started here on loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import config
from shared.ops.research import sweep

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "deploy" / "tapes" / "sample.tape"
GRID = ["--sweep", "short_window=3,5", "--sweep", "long_window=10,20,30"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.ops.research.cli", "--tape", str(SAMPLE), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_grid_in_order() -> None:
    axes = sweep.parse(["a=1,2", "b=0.5,true,x"])
    assert axes == [("a", [1, 2]), ("b", [0.5, True, "x"])]
    assert sweep.grid(axes)[:2] == [(("a", 1), ("b", 0.5)), (("a", 1), ("b", True))]
    assert len(sweep.grid(axes)) == 6
    with pytest.raises(sweep.SweepError, match="given twice"):
        sweep.parse(["a=1", "a=2"])


def local_rows() -> list[dict[str, Any]]:
    r = cli(*GRID, "--json", "--workers", "2")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_a_local_sweep_is_one_row_per_combination_by_pnl() -> None:
    rows = local_rows()
    assert len(rows) == 6
    assert sorted((r["params"]["short_window"], r["params"]["long_window"]) for r in rows) == [
        (3, 10), (3, 20), (3, 30), (5, 10), (5, 20), (5, 30)]
    totals = [r["total"] for r in rows]
    assert totals == sorted(totals, reverse=True)
    cfg = config.load()
    one = sweep.run_one(sweep.Job(str(SAMPLE), cfg, "", (("short_window", 5), ("long_window", 20))))
    assert one in rows  # the pool's rows are the ones a run in this process gives
    text = cli(*GRID, "--workers", "2")
    lines = text.stdout.splitlines()
    assert len(lines) == 7 and lines[0].split()[:3] == ["short_window", "long_window", "total"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A Dask scheduler and two single-threaded workers on loopback, each its own process, stopped after."""
    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, name: str) -> None:
        with open(tmp_path / f"{name}.log", "wb") as out:
            procs.append(subprocess.Popen([dask, *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", name="scheduler")
        for i in range(2):
            start("worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                  "--local-directory", str(tmp_path / f"w{i}"), "--death-timeout", "60", name=f"worker{i}")
        from distributed import Client

        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(address, timeout=5) as c:
                    c.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
                    raise AssertionError(f"no Dask cluster with 2 workers in 90 s: {logs}") from None
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):  # the workers, then the scheduler
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=3)  # a worker without a nanny may take its time: it is a throwaway
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def test_a_dask_cluster_gives_the_same_rows(dask_cluster: str) -> None:
    r = cli(*GRID, "--json", "--scheduler", dask_cluster)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == local_rows()


def test_an_unreachable_scheduler_is_one_line() -> None:
    r = cli(*GRID, "--scheduler", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--scheduler" in r.stderr, r.stderr
