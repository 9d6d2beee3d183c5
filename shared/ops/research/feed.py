"""A tape in chunks for the backtest: every file of a (rolled) tape memory-mapped,
read a chunk at a time, each chunk's pages given back once it is done, so the
resident memory stays near one chunk's however long the tape.

Per chunk it finds the news ticks and, per symbol, the price ticks (their
positions, prices, seqs and times), so the backtest touches a price tick in
Python only when its rule or the venue needs it. Positions count records from
the first file's first, across files.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared import tape as tape_mod

CHUNK = 1 << 19  # records per chunk: 16 MiB of tape


@dataclass(frozen=True, eq=False)
class Prices:
    """One symbol's price ticks in a chunk, in order: their records and prices."""

    at: np.ndarray[Any, Any]  # positions (int64)
    price: np.ndarray[Any, Any]


@dataclass(frozen=True, eq=False)
class Chunk:
    """Records ``start:stop``: its news ticks, each symbol's price ticks (by symbol index), and every
    record's seq and ts_ns (index them with position - start)."""

    start: int
    stop: int
    news_at: np.ndarray[Any, Any]  # positions
    news_sym: np.ndarray[Any, Any]
    news_value: np.ndarray[Any, Any]
    prices: dict[int, Prices]
    seq: np.ndarray[Any, Any]
    ts_ns: np.ndarray[Any, Any]


class Feed:
    """The tape at ``path`` (and its rolled files), checked and read a chunk at a time."""

    def __init__(self, path: str | os.PathLike[str], chunk: int = CHUNK) -> None:
        self.tapes = tape_mod.read_all(path)  # TapeError: not a tape, a newer version, a broken table
        self.symbols = self.tapes[-1].symbols
        self.chunk = chunk
        self.dropped_bytes = sum(t.dropped_bytes for t in self.tapes)
        self.records = sum(len(t) for t in self.tapes)

    @property
    def path(self) -> Path:
        return self.tapes[-1].path

    def first_ts(self) -> int | None:
        """The first record's ts_ns, or None for an empty tape."""
        for t in self.tapes:
            if len(t):
                return int(t.records["ts_ns"][0])
        return None

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in order; TapeError at the first bad record."""
        base = 0
        for t in self.tapes:
            n = len(t)
            if n:
                with open(t.path, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                records = np.frombuffer(mm, tape_mod.dtype(), count=n, offset=tape_mod.RECORDS_OFFSET)
                for a in range(0, n, self.chunk):
                    b = min(n, a + self.chunk)
                    yield _chunk(records[a:b], base + a, len(t.symbols), t.path, a)
                    _release(mm, tape_mod.RECORDS_OFFSET + b * tape_mod.RECORD_SIZE)
                del records
                with contextlib.suppress(BufferError):  # a tiny chunk's columns may be views of it: then
                    mm.close()  # it closes when they go
            base += n


def _release(mm: mmap.mmap, end: int) -> None:
    """Give back the pages before ``end`` (the kernel keeps them cached; a re-read faults them in)."""
    end -= end % mmap.PAGESIZE
    if end > 0:
        mm.madvise(mmap.MADV_DONTNEED, 0, end)


def _chunk(r: np.ndarray[Any, Any], start: int, nsymbols: int, path: Path, first: int) -> Chunk:
    """Records ``r`` (from position ``start``; record ``first`` of ``path``), checked and split."""
    kind, sym = np.ascontiguousarray(r["kind"]), np.ascontiguousarray(r["sym"])
    seq, value = np.ascontiguousarray(r["seq"]).view(np.int64), np.ascontiguousarray(r["value"])
    problem = tape_mod.column_problem(kind, sym, seq, value, nsymbols, path, first)
    if problem:
        raise tape_mod.TapeError(problem)
    is_news = kind == tape_mod.NEWS
    news = np.flatnonzero(is_news)
    price_at = np.flatnonzero(~is_news)
    price_sym = sym[price_at]
    price_at = price_at[np.argsort(price_sym, kind="stable")]  # a radix sort for u1: each symbol's, in order
    counts = np.bincount(price_sym, minlength=256).tolist()
    prices: dict[int, Prices] = {}
    lo = 0
    for s, c in enumerate(counts):
        if c:
            at = price_at[lo: lo + c]
            lo += c
            prices[s] = Prices(at + start, value[at])
    return Chunk(start, start + len(r), news + start, sym[news], value[news], prices, seq,
                 np.ascontiguousarray(r["ts_ns"]).view(np.int64))
