"""``--sweep key=v1,v2,...``: a grid over a rule's params, each combination a
backtest of its own, run on every core (a process pool) or on a Dask
distributed cluster (``--scheduler tcp://HOST:8786``; an existing engine, not
one of ours). One row per combination, sorted by total P&L (best first; ties
in grid order), the same rows whichever runs them.

A Dask worker needs this project installed (``deploy/install``) and the tape
at the same path (a shared filesystem, or the same machine).
"""

from __future__ import annotations

import itertools
import os
import socket
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from shared import config as config_mod
from shared.ops.research import backtest
from shared.ops.research.feed import Feed
from shared.ops.research.report import clients, summary

Params = tuple[tuple[str, Any], ...]


class SweepError(ValueError):
    """A ``--sweep`` argument that is not ``key=v1,v2,...``: one line naming it."""


def value(text: str) -> Any:
    """One value as TOML reads it (``5``, ``2.5``, ``true``, ``"x"``), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse(specs: list[str]) -> list[tuple[str, list[Any]]]:
    """The grid's axes from ``key=v1,v2,...`` arguments."""
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        key, eq, vals = spec.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier() or not vals.strip():
            raise SweepError(f"--sweep {spec!r}: expected key=v1,v2,...")
        if key in (k for k, _ in axes):
            raise SweepError(f"--sweep {key}: given twice")
        axes.append((key, [value(v.strip()) for v in vals.split(",")]))
    return axes


def grid(axes: list[tuple[str, list[Any]]]) -> list[Params]:
    """Every combination, in order (the last axis fastest)."""
    keys = [k for k, _ in axes]
    return [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))]


@dataclass(frozen=True)
class Job:
    """One combination: everything a worker needs (picklable)."""

    tape: str
    cfg: config_mod.Config
    strategy: str
    params: Params


def run_one(job: Job) -> dict[str, Any]:
    """One backtest, as a row: the params, P&L, drawdown, counts, turnover."""
    res = backtest.run(Feed(job.tape), backtest.Setup(job.cfg, job.strategy, job.params))
    sm = summary(res)
    c = clients(res)[res.sim.client_id]
    return {"params": dict(job.params), "total": c["total"], "realized": c["realized"],
            "unrealized": c["unrealized"], "max_drawdown": sm["max_drawdown"], "orders": sm["orders"],
            "fills": sm["fills"], "turnover": sm["turnover"]}


def check(cfg: config_mod.Config, strategy: str, combos: list[Params]) -> None:
    """Build the rule of every combination here first: a param the rule lacks, or a value of the
    wrong type, is a ConfigError naming it before any work is sent out."""
    for params in combos:
        backtest.Setup(cfg, strategy, params).rule()


def run_local(jobs: list[Job], workers: int | None = None) -> list[dict[str, Any]]:
    """The jobs on a pool of processes (default: one per core), rows in grid order."""
    n = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    if n == 1:
        return [run_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run_one, jobs))


def run_dask(jobs: list[Job], address: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The jobs on the Dask cluster whose scheduler is at ``address``, rows in grid order."""
    from distributed import Client

    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit():
        raise OSError("not an address of the form tcp://HOST:PORT")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
        pass  # nobody there: say so now (Dask's client would retry for its whole timeout)
    with Client(address, timeout=timeout_s) as client:
        futures = client.map(run_one, jobs, pure=False)
        return list(client.gather(futures))


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best total P&L first; a run whose P&L is unknown last; ties in grid order."""
    return sorted(rows, key=lambda r: (r["total"] is None, -(r["total"] or 0.0)))


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as text, one per combination."""
    keys = list(rows[0]["params"]) if rows else []
    width = {k: max(len(k), *(len(repr(r["params"][k])) for r in rows)) for k in keys}
    head = " ".join(f"{k:>{width[k]}}" for k in keys)
    out = [f"{head} {'total':>12} {'realized':>12} {'unrealized':>12} {'max_dd':>10} {'orders':>7} {'fills':>7} "
           f"{'turnover':>14}"]

    def money(x: float | None) -> str:
        return "-" if x is None else f"{x:,.2f}"

    for r in rows:
        cells = " ".join(f"{r['params'][k]!r:>{width[k]}}" for k in keys)
        out.append(f"{cells} {money(r['total']):>12} {money(r['realized']):>12} {money(r['unrealized']):>12} "
                   f"{money(r['max_drawdown']):>10} {r['orders']:>7} {r['fills']:>7} {money(r['turnover']):>14}")
    return "\n".join(out) + "\n"
