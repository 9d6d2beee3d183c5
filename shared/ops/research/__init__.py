"""Strategy research: ``stack-backtest`` (``deploy/backtest``) runs a strategy's
rule over a tape through the venue's matching engine, the ordermanager's risk
checks and the stack's P&L code, with no sockets and no processes (contract
§10), and sweeps a grid of its params on every core or on a Dask cluster.

- ``feed.py``: a tape in chunks, memory-mapped, each chunk's pages let go once read;
  per chunk, each symbol's price ticks;
- ``sim.py``: the strategy at its decision points, the venue, risk and positions (one event at a time);
- ``equity.py``: P&L marked at every price tick, its drawdowns and the curve, per chunk with numpy;
- ``backtest.py``: a run over a tape from a config; ``report.py``: its text and JSON;
- ``sweep.py``: the grid, run by a local process pool or a Dask cluster;
- ``plot.py``: ``--plot`` (matplotlib); ``cli.py``: the command line;
- ``aslive.py``: ``--as-live``, a live session's orders asked again of their rules from its tape;
- ``sampletape.py``: the shipped sample tape and the bench's big one, made deterministically.

The tape and ``stack-record`` are ``shared/tape.py`` and ``shared/recorder.py``.
"""
