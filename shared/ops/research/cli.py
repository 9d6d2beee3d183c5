"""``stack-backtest`` (``deploy/backtest``): a strategy of the config run over a
tape (contract §10); ``--sweep`` runs a grid of its params.

``--as-live`` asks the rules again at the decision points of a live session's
orders (``aslive``).

Exit status: 0 done; 1 the tape cannot be read (not a tape, a newer version, a
bad record) or a Dask cluster cannot be reached, or with ``--as-live`` a live
order was not reproduced; 2 a bad command line or config (an unknown
strategy, a param its rule does not have, a value of the wrong type, no
journal), each said in one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from shared import config as config_mod
from shared import tape as tape_mod
from shared.ops.research import backtest, report, sweep
from shared.ops.research.feed import Feed

PROG = "stack-backtest"


def fail(code: int, message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(code)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Run a strategy's rule over a tape through the venue's "
                                 "matching engine, the risk limits and the P&L code; no sockets, no processes.")
    ap.add_argument("--tape", required=True, help="a tape (stack-record; deploy/tapes/sample.tape)")
    ap.add_argument("--strategy", default=None, metavar="NAME",
                    help="the [strategies.NAME] table (default: [strategy]; with --as-live: every strategy)")
    ap.add_argument("--config", default=None, help="the config (default: STACK_CONFIG or deploy/stack.toml)")
    ap.add_argument("--json", action="store_true", help="orders, fills, clients (as stack-audit --json) and a summary")
    ap.add_argument("--plot", metavar="FILE.png", help="draw P&L over time per symbol, with the drawdown")
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a grid over the rule's params (several allowed); one row per combination, by P&L")
    ap.add_argument("--scheduler", metavar="tcp://HOST:8786", help="run the sweep on this Dask cluster")
    ap.add_argument("--workers", type=int, default=None, help="processes of a local sweep (default: one per core)")
    ap.add_argument("--as-live", action="store_true", help="ask the rules again at the decision points of a live "
                    "session's orders (the journal) from its tape; report the orders reproduced exactly, and why not")
    ap.add_argument("--journal", default=None, help="with --as-live: the order journal (default: the config's)")
    return ap


def _config(path: str | None, strategy: str) -> config_mod.Config:
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        fail(2, f"bad config: {e}")
    if strategy and strategy not in cfg.strategies:
        known = ", ".join(["(default) [strategy]", *(f"{n}" for n in cfg.strategies)])
        fail(2, f"--strategy {strategy}: no [strategies.{strategy}] in {cfg.path} (it has: {known})")
    return cfg


def _feed(path: str) -> Feed:
    try:
        feed = Feed(path)
    except tape_mod.TapeError as e:
        fail(1, str(e))
    for t in feed.tapes:
        if t.dropped_bytes:
            print(f"{PROG}: {t.path}: its last record is cut short ({t.dropped_bytes} of {tape_mod.RECORD_SIZE} "
                  f"bytes): 1 record dropped, read to the last whole one", file=sys.stderr)
    return feed


def _sweep(a: argparse.Namespace, cfg: config_mod.Config) -> None:
    try:
        combos = sweep.grid(sweep.parse(a.sweep))
        sweep.check(cfg, a.strategy, combos)
    except sweep.SweepError as e:
        fail(2, str(e))
    except config_mod.ConfigError as e:
        fail(2, f"--sweep: {e}")
    _feed(a.tape)  # a bad tape is one line here, not one per worker
    jobs = [sweep.Job(a.tape, cfg, a.strategy, p) for p in combos]
    try:
        rows = sweep.run_dask(jobs, a.scheduler) if a.scheduler else sweep.run_local(jobs, a.workers)
    except tape_mod.TapeError as e:
        fail(1, str(e))
    except (OSError, TimeoutError) as e:
        fail(1, f"--scheduler {a.scheduler}: {type(e).__name__}: {e}")
    rows = sweep.ranked(rows)
    sys.stdout.write(json.dumps(rows, indent=1) + "\n" if a.json else sweep.table(rows))


def _as_live(a: argparse.Namespace, cfg: config_mod.Config) -> None:
    """--as-live: exit 0 when every live order is reproduced exactly, 1 when one is not."""
    from shared import journal as journal_mod
    from shared.ops.research import aslive

    path = a.journal or str(cfg.resolve(cfg.ordermanager.journal))
    if not journal_mod.segments(path):
        fail(2, f"--journal {path}: no such journal")
    try:
        index = aslive.TapeIndex(a.tape)
    except tape_mod.TapeError as e:
        fail(1, str(e))
    if index.dropped_bytes:
        print(f"{PROG}: {a.tape}: its last record is cut short: read to the last whole one", file=sys.stderr)
    names = [a.strategy] if a.strategy is not None else ["", *cfg.strategies]
    try:
        replays = aslive.replay(cfg, index, list(journal_mod.read(path)), names)
    except config_mod.ConfigError as e:
        fail(2, f"bad config: {e}")
    sys.stdout.write(aslive.to_json(aslive.document(replays, path, a.tape, index)) + "\n" if a.json
                     else aslive.text(replays, path, a.tape, index))
    if any(r.reproduced < len(r.verdicts) for r in replays):
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    cfg = _config(a.config, a.strategy or "")
    if a.as_live:
        if a.sweep or a.plot or a.scheduler:
            fail(2, "--as-live replays a live session: no --sweep, --plot or --scheduler")
        _as_live(a, cfg)
        return
    if a.journal:
        fail(2, "--journal is read by --as-live")
    a.strategy = a.strategy or ""
    if a.scheduler and not a.sweep:
        fail(2, "--scheduler runs a --sweep; give one")
    if a.plot and a.sweep:
        fail(2, "--plot draws one run, not a sweep")
    if a.sweep:
        _sweep(a, cfg)
        return
    setup = backtest.Setup(cfg, a.strategy)
    try:
        setup.rule()
    except config_mod.ConfigError as e:
        fail(2, f"bad config: {e}")
    feed = _feed(a.tape)
    try:
        res = backtest.run(feed, setup, sample=bool(a.plot))
    except tape_mod.TapeError as e:
        fail(1, str(e))
    if a.plot:
        from shared.ops.research import plot

        try:
            plot.draw(res, a.plot, f"{setup.spec().table} on {a.tape}")
        except plot.NoMatplotlib as e:
            fail(2, str(e))
    sys.stdout.write(report.to_json(report.document(res, a.tape)) + "\n" if a.json else report.text(res, a.tape))


if __name__ == "__main__":
    main()
