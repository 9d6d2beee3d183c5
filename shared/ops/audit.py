"""stack-audit: what happened to the stack, told from its logs alone.

Reads a logs directory (the repository's ``logs/`` unless ``--logs`` names
another): every program's JSON log (``<program>.log`` and its rotations
``.log.1`` …), the auditor's ``audit.log``, the order journal and the
ordermanager's exec journal beside it. It prints, per program, starts,
unexpected exits, FATALs, downtime and MTTR; reconnects with their
``down_ms``; bad frames and rejects by reason; the orders, their execs and
tick-to-trade percentiles; positions and P&L from fills per client and symbol
(marked to the book's latest prices), the open orders, the fills and the halts. ``--json`` prints the
same figures as one JSON document; ``--follow`` tails a human view of every
log, like ``tail -f``.

The figures come from pure functions of parsed records (``summarize`` and the
ones it calls), so they are tested on synthetic lines; files are read apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from shared.config import ROOT
from shared.execjournal import read_base, read_lines
from shared.execstate import ExecLine
from shared.journal import read as read_journal
from shared.ops import pnlaudit
from shared.ops.stats import percentile
from shared.tail import Tail

Record = dict[str, Any]

AUDIT_LOG = "audit.log"
JOURNAL = "orders.jsonl"
NOT_PROGRAMS = {AUDIT_LOG, "supervisord.log"}  # *.log files that are not a program's JSON log
PERCENTILES = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))

# --- parsing ------------------------------------------------------------------


def parse_line(line: bytes | str) -> Record | None:
    """The JSON object on one log line, or None (blank, torn, not JSON, not an object)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_ts(ts: str) -> float:
    """An ISO 8601 ``ts`` (``…Z`` or with an offset) as seconds since the epoch."""
    t = dt.datetime.fromisoformat(ts)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def spread(values: Iterable[float]) -> dict[str, float] | None:
    """count, p50, p99, p99.9 and max of some values (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return None
    out: dict[str, float] = {"count": len(ordered)}
    for name, q in PERCENTILES:
        out[name] = percentile(ordered, q)
    out["max"] = ordered[-1]
    return out


# --- the figures --------------------------------------------------------------


def process_stats(audit: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Per process, from ``process_state`` records in order: ``starts`` (times it reached
    RUNNING), ``unexpected_exits`` (EXITED, not expected), ``backoffs`` (exited while
    STARTING), ``fatals``, and ``downtime_s`` summed over every stretch from leaving RUNNING
    to the next RUNNING; ``mttr_s`` is that over ``recoveries``. A process down at the end
    has ``down_since`` (its open stretch is not in the downtime)."""
    out: dict[str, dict[str, Any]] = {}
    left: dict[str, float] = {}  # process -> when it last left RUNNING
    for r in audit:
        if r.get("event") != "process_state" or not r.get("process"):
            continue
        name, to = r["process"], r.get("to_state")
        s = out.setdefault(name, {"starts": 0, "unexpected_exits": 0, "backoffs": 0, "fatals": 0,
                                  "recoveries": 0, "downtime_s": 0.0, "mttr_s": None, "down_since": None,
                                  "state": None})
        s["state"] = to
        t = parse_ts(r["ts"])
        if to == "RUNNING":
            s["starts"] += 1
            if name in left:
                s["downtime_s"] += t - left.pop(name)
                s["recoveries"] += 1
        elif r.get("from_state") == "RUNNING":
            left[name] = t
        if to == "EXITED" and r.get("expected") is False:
            s["unexpected_exits"] += 1
        elif to == "BACKOFF":
            s["backoffs"] += 1
        elif to == "FATAL":
            s["fatals"] += 1
    for name, s in out.items():
        s["downtime_s"] = round(s["downtime_s"], 3)
        if s["recoveries"]:
            s["mttr_s"] = round(s["downtime_s"] / s["recoveries"], 3)
        if name in left:
            s["down_since"] = dt.datetime.fromtimestamp(left[name], dt.UTC).isoformat().replace("+00:00", "Z")
    return out


def log_stats(logs: Mapping[str, Iterable[Record]]) -> dict[str, dict[str, int]]:
    """Per program log: ``errors`` and ``warnings`` (by level) and ``crashes`` (``crashed`` events)."""
    out = {}
    for program, records in logs.items():
        levels = Counter(r.get("level") for r in records)
        out[program] = {"errors": levels["error"] + levels["critical"], "warnings": levels["warning"],
                        "crashes": sum(r.get("event") == "crashed" for r in records)}
    return out


def reconnect_stats(logs: Mapping[str, Iterable[Record]]) -> dict[str, dict[str, Any]]:
    """Per program and peer, from ``reconnected`` records: the stream, how many, and their
    ``down_ms`` (count, p50, p99, p99.9, max) with the total."""
    downs: dict[str, dict[str, list[float]]] = {}
    streams: dict[tuple[str, str], str] = {}
    for program, records in logs.items():
        for r in records:
            if r.get("event") != "reconnected":
                continue
            peer = str(r.get("peer"))
            downs.setdefault(program, {}).setdefault(peer, []).append(float(r.get("down_ms") or 0))
            streams[program, peer] = str(r.get("stream", ""))
    return {program: {peer: {"stream": streams[program, peer], "count": len(ms), "total_ms": round(sum(ms), 3),
                             "down_ms": spread(ms)}
                      for peer, ms in sorted(peers.items())}
            for program, peers in sorted(downs.items())}


_NUMBERS = re.compile(r"\d+")


def bad_frame_kind(reason: str) -> str:
    """A ``bad_frame`` reason without what varies (JSON paths, numbers, decoder detail)."""
    kind = reason.split(" - at ")[0]
    if kind.startswith("not JSON"):
        kind = "not JSON"
    return _NUMBERS.sub("N", kind)[:80]


def frame_stats(logs: Mapping[str, Iterable[Record]]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Per program: ``bad_frame`` records by kind of reason, and ``order_rejected`` by reason code."""
    bad: dict[str, dict[str, int]] = {}
    rejects: dict[str, dict[str, int]] = {}
    for program, records in logs.items():
        b: Counter[str] = Counter()
        rj: Counter[str] = Counter()
        for r in records:
            if r.get("event") == "bad_frame":
                b[bad_frame_kind(str(r.get("reason", "")))] += 1
            elif r.get("event") == "order_rejected":
                rj[str(r.get("reason"))] += 1
        if b:
            bad[program] = dict(b.most_common())
        if rj:
            rejects[program] = dict(rj.most_common())
    return bad, rejects


def order_stats(journal: Iterable[Record], logs: Mapping[str, Iterable[Record]],
                execs: Iterable[ExecLine] = ()) -> dict[str, Any]:
    """The journal's count, the ``order_received`` and ``order_duplicate`` records (duplicate
    acks), any (client_id, order_id) journaled twice, tick-to-trade in microseconds
    (journal ``recv_ns`` − ``tick_ts_ns``), and the exec journal's execs, fills and exec_ids
    journaled twice."""
    entries = list(journal)
    keys = Counter((e.get("client_id"), e.get("order_id")) for e in entries)
    received = duplicates = 0
    for records in logs.values():
        for r in records:
            received += r.get("event") == "order_received"
            duplicates += r.get("event") == "order_duplicate"
    t2t = [(e["recv_ns"] - e["tick_ts_ns"]) / 1000 for e in entries
           if isinstance(e.get("recv_ns"), int) and isinstance(e.get("tick_ts_ns"), int)]
    ids = Counter(x.exec_id for x in execs)
    return {"journal": len(entries), "received": received, "duplicate_acks": duplicates,
            "journal_duplicates": sum(n - 1 for n in keys.values() if n > 1),
            "tick_to_trade_us": spread(t2t), "execs": len(ids),
            "fills": sum(1 for x in execs if x.last_qty), "exec_duplicates": sum(n - 1 for n in ids.values() if n > 1)}


def summarize(logs: Mapping[str, list[Record]], audit: list[Record], journal: list[Record],
              marks: Mapping[str, float] | None = None, halt_file: Path | None = None,
              execs: list[ExecLine] | None = None, base: int = 0) -> dict[str, Any]:
    """Every figure of the audit, as one JSON-ready document; ``marks`` are the book's latest
    prices (none: unrealized P&L unknown), ``halt_file`` says who is halted now, ``execs`` are
    the exec journal's lines and ``base`` the last order before the venue (shared.execjournal)."""
    execs = execs or []
    procs = process_stats(audit)
    counts = log_stats(logs)
    programs = {}
    for name in sorted(set(procs) | set(counts)):
        programs[name] = {**procs.get(name, {}), **counts.get(name, {})}
    bad, rejects = frame_stats(logs)
    return {"programs": programs, "reconnects": reconnect_stats(logs), "bad_frames": bad, "rejects": rejects,
            "orders": order_stats(journal, logs, execs), "clients": pnlaudit.clients(journal, marks or {}, execs, base),
            "open_orders": pnlaudit.open_orders(pnlaudit.state(journal, execs, base)),
            "fills": pnlaudit.fills(execs), "halts": pnlaudit.halts(logs, halt_file)}


# --- the text report ----------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in cells]


def render(summary: Mapping[str, Any]) -> str:
    """The human report of a ``summarize`` document."""
    lines: list[str] = []
    cols = ["starts", "unexpected_exits", "backoffs", "fatals", "downtime_s", "recoveries", "mttr_s", "state",
            "crashes", "errors", "warnings"]
    rows = [[name] + [p.get(c) for c in cols] for name, p in summary["programs"].items()]
    lines += ["PROGRAMS", *_table(["program", *cols], rows), ""]
    rows = [[prog, peer, r["stream"], r["count"], r["down_ms"]["p50"], r["down_ms"]["max"], r["total_ms"]]
            for prog, peers in summary["reconnects"].items() for peer, r in peers.items()]
    lines += ["RECONNECTS", *(_table(["program", "peer", "stream", "count", "down_ms_p50", "down_ms_max",
                                      "down_ms_total"], rows) if rows else ["(none)"]), ""]
    rows = [[prog, kind, n] for prog, kinds in summary["bad_frames"].items() for kind, n in kinds.items()]
    lines += ["BAD FRAMES", *(_table(["program", "reason", "count"], rows) if rows else ["(none)"]), ""]
    rows = [[prog, reason, n] for prog, reasons in summary["rejects"].items() for reason, n in reasons.items()]
    lines += ["REJECTS", *(_table(["program", "reason", "count"], rows) if rows else ["(none)"]), ""]
    o = summary["orders"]
    lines += ["ORDERS", f"journal {o['journal']}  received {o['received']}  duplicate acks {o['duplicate_acks']}"
              f"  journaled twice {o['journal_duplicates']}"]
    if "execs" in o:
        lines.append(f"execs {o['execs']}  fills {o['fills']}  exec_id journaled twice {o['exec_duplicates']}")
    t = o["tick_to_trade_us"]
    if t:
        lines.append("tick-to-trade us  " + "  ".join(f"{k} {_fmt(round(t[k], 1))}" for k in
                                                      ("p50", "p99", "p99.9", "max")) + f"  (n={t['count']})")
    if "clients" in summary:
        rows = pnlaudit.pnl_rows(summary["clients"])
        lines += ["", "POSITIONS AND P&L (from fills; mark: the book's latest price, - when there is no book; "
                  "open: leaves of orders not ended)", *(_table(pnlaudit.PNL_COLUMNS, rows) if rows else ["(none)"])]
    for key, title, cols, shown in (("open_orders", "OPEN ORDERS", pnlaudit.OPEN_COLUMNS, pnlaudit.SHOWN),
                                    ("fills", "FILLS", pnlaudit.FILL_COLUMNS, None)):
        if key in summary:
            rows, more = pnlaudit.rows(summary[key], cols, shown)
            lines += ["", title, *(_table(cols, rows) if rows else ["(none)"])]
            lines += [f"… and {more} more (--json lists them all)"] if more else []
    if "halts" in summary:
        lines += ["", "HALTS", *pnlaudit.halt_lines(summary["halts"])]
    return "\n".join(lines)


# --- reading the files --------------------------------------------------------


def rotations(path: Path) -> list[Path]:
    """A log and its rotations, oldest first (``x.log.3``, ``x.log.2``, ``x.log.1``, ``x.log``)."""
    olds = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return sorted(olds, key=lambda p: -int(p.suffix[1:])) + ([path] if path.exists() else [])


def read_records(path: Path) -> list[Record]:
    """The JSON records of a log and its rotations, oldest first."""
    out: list[Record] = []
    for p in rotations(path):
        with open(p, "rb") as f:
            out += [r for r in map(parse_line, f) if r is not None]
    return out


def program_logs(logs_dir: Path) -> dict[str, Path]:
    """Program name -> its JSON log, for every ``*.log`` (or only-rotated one) in the directory."""
    names = {m[1] for p in logs_dir.glob("*.log*") if (m := re.fullmatch(r"(.+\.log)(\.\d+)?", p.name))}
    return {n.removesuffix(".log"): logs_dir / n for n in sorted(names - NOT_PROGRAMS)}


def load(logs_dir: Path, journal: Path | None = None) -> tuple[dict[str, list[Record]], list[Record], list[Record]]:
    """Every program's records, the audit records and the journal entries of a logs directory."""
    logs = {name: read_records(path) for name, path in program_logs(logs_dir).items()}
    return logs, read_records(logs_dir / AUDIT_LOG), list(read_journal(journal or logs_dir / JOURNAL))


def load_execs(journal: Path) -> dict[str, Any]:
    """``summarize``'s ``execs`` and ``base`` from the exec journal beside an order journal."""
    return {"execs": list(read_lines(journal)), "base": read_base(journal)}


# --- following ----------------------------------------------------------------


def clock(ts: str) -> str:
    """HH:MM:SS.mmm of an ISO 8601 time (as written, UTC in our logs)."""
    try:
        return dt.datetime.fromisoformat(ts).strftime("%H:%M:%S.%f")[:12]
    except ValueError:
        return ts


def human(source: str, rec: Record | None, raw: str = "") -> str | None:
    """One line of the human view for a line of ``source`` (a program, or ``audit``); None skips it."""
    if rec is None:  # stderr tracebacks and other plain text
        return f"{source}: {raw.rstrip()}" if raw.strip() else None
    t = clock(str(rec.get("ts", "")))
    ev, level = rec.get("event"), str(rec.get("level", "info"))
    if ev == "process_state":
        note = " (not expected)" if rec.get("expected") is False else ""
        pid = f" pid {rec['pid']}" if rec.get("pid") else ""
        return f"{t} {rec.get('process')}: {rec.get('from_state')} -> {rec.get('to_state')}{note}{pid}"
    if ev == "order_received" and rec.get("msg"):
        return f"{t} {source}: {rec['msg']}"
    if ev == "order_filled":
        return (f"{t} {source}: {rec.get('status')} {rec.get('client_id')} {rec.get('order_id')}: "
                f"{rec.get('last_qty')} @ {rec.get('last_px')} (cum {rec.get('cum_qty')})")
    if ev in ("client_halted", "client_resumed"):
        return f"{t} {source}: {ev.removeprefix('client_')} {rec.get('client_id')}"
    if ev == "reconnected":
        return (f"{t} {source}: reconnected to {rec.get('peer')} ({rec.get('stream')}) after {rec.get('down_ms')} ms,"
                f" {rec.get('attempts')} attempt(s)")
    if ev == "disconnected":
        return f"{t} {source}: disconnected {rec.get('peer')} ({rec.get('stream')}): {rec.get('reason')}"
    if level in ("warning", "error", "critical"):
        skip = {"ts", "level", "event", "daemon", "pid"}
        rest = " ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)
        return f"{t} {source} {level.upper()} {ev} {rest}".rstrip()
    return None


def followed(logs_dir: Path) -> dict[str, Path]:
    """Source name -> file, for every log worth following: programs' JSON logs and stderr, and the audit log."""
    out = {name: path for name, path in program_logs(logs_dir).items()}
    out.update({f"{p.stem} stderr": p for p in sorted(logs_dir.glob("*.err"))})
    out["audit"] = logs_dir / AUDIT_LOG
    return out


def follow(logs_dir: Path, write: Callable[[str], None], stop: Callable[[], bool] = lambda: False,
           interval: float = 0.2) -> None:
    """Tail every log of the directory in the human view until ``stop()``; files that appear later
    are read from their start."""
    tails = {name: Tail(path, "end") for name, path in followed(logs_dir).items()}
    try:
        while not stop():
            for name, path in followed(logs_dir).items():
                if name not in tails:
                    tails[name] = Tail(path, "start")
            for name, tail in tails.items():
                for line in tail.read():
                    out = human(name, parse_line(line), line.decode("utf-8", "replace"))
                    if out is not None:
                        write(out)
            time.sleep(interval)
    finally:
        for tail in tails.values():
            tail.close()


# --- the command --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``stack-audit [--logs DIR] [--journal FILE] [--json | --follow]``."""
    ap = argparse.ArgumentParser(prog="stack-audit", description="What happened to the stack, from its logs.")
    ap.add_argument("--logs", type=Path, default=ROOT / "logs", help="the logs directory (default: the repo's logs/)")
    ap.add_argument("--journal", type=Path, help="the order journal (default: LOGS/orders.jsonl)")
    ap.add_argument("--segment", help="the book segment whose prices mark positions (default: the config's)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="one JSON document, for machines")
    mode.add_argument("-f", "--follow", action="store_true", help="tail the human view of every log")
    args = ap.parse_args(argv)
    if not args.logs.is_dir():
        print(f"stack-audit: {args.logs} is not a directory", file=sys.stderr)
        return 2
    try:
        if args.follow:
            follow(args.logs, lambda s: print(s, flush=True))
            return 0
        journal = args.journal or args.logs / JOURNAL
        marks = pnlaudit.marks(args.segment or pnlaudit.config_segment())
        summary = {"logs": str(args.logs.resolve()),
                   **summarize(*load(args.logs, journal), marks, pnlaudit.halt_file(journal), **load_execs(journal))}
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() if args.json else render(summary))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # | head
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
