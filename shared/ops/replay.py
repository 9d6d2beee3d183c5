"""stack-replay: replay the exchange's journal through a fresh matching engine (contract §9 rule 5).

``stack-replay [JOURNAL]`` reads every segment of the journal (default: the config's
``[exchange] journal``), the closed ones by n, then the open one; feeds each input (tick, order,
cancel) to a fresh ``shared.matching.Engine`` with the parameters of the ``start`` lines; prints
each exec it derives as its wire body, one JSON line each; and compares it, byte for byte, with
the exec the exchange journaled (and sent) at that place. Exit status: 0 when every exec is
reproduced, 1 at the first that differs (named, with both bodies, on stderr), 2 when the journal
cannot be read. A torn last line (a crash mid-write, repaired at the exchange's next start) is
skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared import config, matching
from shared.journal import segments
from shared.venuerecords import ExecOut, Start, apply, body, exec_body, read_lines


@dataclass
class Result:
    """What a replay found: its counts, and the first difference (None: every exec reproduced)."""

    lines: int = 0
    segments: int = 0
    execs: int = 0  # reproduced byte for byte
    difference: str | None = None
    notes: list[str] | None = None


def replay(path: str | Path, out: Callable[[bytes], None] | None = None,
           default: tuple[float, int] = (2.0, 100)) -> Result:
    """Replay the journal at ``path``; ``out`` gets each derived exec's wire body. Stops at the first
    difference. ``default`` is the (spread_bps, depth) for inputs before any start line."""
    res = Result(notes=[])
    assert res.notes is not None
    segs = segments(path)
    res.segments = len(segs)
    engine: matching.Engine | None = None
    derived: deque[tuple[int, bytes, str]] = deque()  # (exec_id, wire body, where its input was)
    for i, seg in enumerate(segs):
        last_seg = i == len(segs) - 1
        bad: str | None = None
        for ln in read_lines(seg):
            where = f"{seg}:{ln.number}"
            if bad is not None:
                res.difference = bad  # a bad line with good ones after it: not a torn tail
                return res
            rec = ln.rec
            if rec is None:
                bad = f"{where}: not a journal record ({ln.error})"
                continue
            res.lines += 1
            t = type(rec)
            if t is Start:
                if engine is None:
                    engine = matching.Engine(rec.spread_bps, rec.depth)  # type: ignore[union-attr]
                else:
                    engine.spread_bps, engine.depth = rec.spread_bps, rec.depth  # type: ignore[union-attr]
            elif t is ExecOut:
                got = exec_body(ln.raw)
                if not derived:
                    res.difference = (f"exec {rec.exec_id} at {where} was not derived: the input before it "  # type: ignore[union-attr]
                                      f"gives no more execs\n  journaled: {got.decode(errors='replace')}")
                    return res
                exec_id, want, src = derived.popleft()
                if got != want:
                    res.difference = (f"exec {exec_id} at {where} differs (its input at {src})\n"
                                      f"  journaled: {got.decode(errors='replace')}\n  derived:   {want.decode()}")
                    return res
                res.execs += 1
            else:
                if engine is None:
                    engine = matching.Engine(*default)
                    res.notes.append(f"no start line before {where}: spread_bps={default[0]}, depth={default[1]}")
                try:
                    execs = apply(engine, rec)  # type: ignore[arg-type]
                except ValueError as err:
                    res.difference = f"the input at {where} is refused by the engine: {err}"
                    return res
                for x in execs:
                    wire = body(x)
                    if out is not None:
                        out(wire)
                    derived.append((x.exec_id, wire, where))
        if bad is not None:
            if not last_seg:
                res.difference = bad
                return res
            res.notes.append(f"{bad}: a torn last line, skipped (the exchange cuts it off at its next start)")
    if derived:
        exec_id, want, src = derived[0]
        res.difference = (f"exec {exec_id}, derived from the input at {src}, is not in the journal "
                          f"({len(derived)} derived execs missing)\n  derived: {want.decode()}")
    return res


def _defaults() -> tuple[float, int]:
    """The config's engine parameters, for a journal without a start line."""
    try:
        x = config.load().exchange
    except config.ConfigError:
        return 2.0, 100
    return x.spread_bps, x.depth


def main(argv: list[str] | None = None, stdout: IO[bytes] | None = None) -> int:
    """``stack-replay [JOURNAL] [--quiet]``."""
    ap = argparse.ArgumentParser(prog="stack-replay", description="Replay the exchange's journal through a fresh "
                                 "matching engine; compare every exec with the one it sent, byte for byte.")
    ap.add_argument("journal", nargs="?", help="the exchange journal (default: the config's [exchange] journal)")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not print the derived execs")
    args = ap.parse_args(argv)
    if args.journal:
        path = Path(args.journal)
    else:
        try:
            cfg = config.load()
        except config.ConfigError as e:
            print(f"stack-replay: bad config: {e}", file=sys.stderr)
            return 2
        path = cfg.resolve(cfg.exchange.journal)
    if not segments(path):
        print(f"stack-replay: no journal at {path}", file=sys.stderr)
        return 2
    w = stdout or sys.stdout.buffer
    def out(b: bytes) -> None:
        w.write(b + b"\n")

    try:
        res = replay(path, None if args.quiet else out, _defaults())
    except BrokenPipeError:  # | head
        sys.stderr.close()
        return 0
    except OSError as e:
        print(f"stack-replay: {e}", file=sys.stderr)
        return 2
    finally:
        w.flush()
    for note in res.notes or ():
        print(f"stack-replay: note: {note}", file=sys.stderr)
    if res.difference is not None:
        print(f"stack-replay: DIFFERS after {res.execs} reproduced execs: {res.difference}", file=sys.stderr)
        return 1
    print(f"stack-replay: {res.execs} execs reproduced byte for byte from {res.lines} lines in {res.segments} "
          f"segment(s) of {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
