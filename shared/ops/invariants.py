"""What must hold after any fault, checked from the outside: supervisord's
status, the segment, the journal, the logs and the audit log (issue 3).

The checks on records are pure functions returning the problems they find;
``healed(stack)`` waits until the stack has recovered and every check
passes, and says how long that took. The fault suite and the soak use it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from shared import book, config
from shared.strategy import load_rule

Ack = tuple[str, str, int]  # (client_id, order_id, order_no) the ordermanager acked


class NotHealed(AssertionError):
    """The stack did not recover in time, or an invariant is broken."""


def journal_problems(journal: list[dict[str, Any]], bounds: Mapping[str, int | None]) -> list[str]:
    """No order_id twice per client; order_no 1..N in order; each client's of
    ``bounds`` ({client_id: qty}) position per symbol within ±qty at every
    prefix of the journal (a qty of None: no bound)."""
    problems: list[str] = []
    seen = Counter((e["client_id"], e["order_id"]) for e in journal)
    twice = [k for k, n in seen.items() if n > 1]
    if twice:
        problems.append(f"order_id journaled more than once: {twice[:5]} ({len(twice)} in all)")
    nos = [e["order_no"] for e in journal]
    if nos != list(range(1, len(nos) + 1)):
        bad = next(i for i, n in enumerate(nos) if n != i + 1)
        problems.append(f"order_no not contiguous from 1: line {bad + 1} has {nos[bad]}")
    pos: dict[tuple[str, str], int] = defaultdict(int)
    over: set[str] = set()
    for e in journal:
        cid = e["client_id"]
        qty = bounds.get(cid)
        if qty is None or cid in over:
            continue
        key = (cid, e["symbol"])
        pos[key] += e["qty"] if e["side"] == "BUY" else -e["qty"]
        if abs(pos[key]) > qty:
            problems.append(f"{cid} position {pos[key]} {e['symbol']} beyond ±{qty} "
                            f"after order_no {e['order_no']} ({e['order_id']})")
            over.add(cid)
    return problems


def position_bounds(cfg: config.Config) -> dict[str, int | None]:
    """{client_id: Q} of every strategy: its rule's ``qty`` (the rules shipped
    target ±Q), or None; a rule this process cannot import: its table's ``qty``."""
    out: dict[str, int | None] = {}
    for st in cfg.all_strategies():
        try:
            out[st.client_id] = getattr(load_rule(st).params, "qty", None)
        except config.ConfigError:
            out[st.client_id] = st.params.get("qty")
    return out


def ack_problems(journal: list[dict[str, Any]], acks: Iterable[Ack]) -> list[str]:
    """Every acked order is in the journal exactly once, under the acked order_no."""
    where: dict[tuple[str, str], list[int]] = defaultdict(list)
    for e in journal:
        where[(e["client_id"], e["order_id"])].append(e["order_no"])
    problems = []
    for cid, oid, no in acks:
        got = where.get((cid, oid), [])
        if got != [no]:
            problems.append(f"acked {cid}/{oid} as order_no {no}; journal has {got or 'nothing'}")
    return problems


_GONE = ("EXITED", "STOPPING", "STOPPED", "BACKOFF", "FATAL")  # a pid on its way out


def strategy_problems(records: list[dict[str, Any]]) -> list[str]:
    """From the strategy's log alone: no order_sent while its order link is
    down (before ``logged_on``, after ``disconnected``) or while the book is
    stale (from ``book_stale`` to ``book_fresh``; stale until the first
    ``book_fresh`` of a process)."""
    problems = []
    pid, up, stale = None, False, True
    for r in records:
        if r.get("pid") != pid:
            pid, up, stale = r.get("pid"), False, True
        ev = r.get("event")
        if ev == "logged_on":
            up = True
        elif ev == "disconnected" and r.get("stream") == "orders":
            up = False
        elif ev == "book_stale":
            stale = True
        elif ev == "book_fresh":
            stale = False
        elif ev == "order_sent" and (not up or stale):
            problems.append(f"strategy pid {pid} sent {r.get('order_id')} at {r.get('ts')} while "
                            + ("its order link was down" if not up else "the book was stale"))
    return problems


def restart_problems(audit: list[dict[str, Any]], program: str, old_pid: int, new_pid: int) -> list[str]:
    """The audit log shows ``old_pid`` leaving and ``new_pid`` reaching RUNNING."""
    mine = [r for r in audit if r.get("process") == program]
    problems = []
    if not any(r["pid"] == old_pid and r["to_state"] in _GONE for r in mine):
        problems.append(f"audit: no exit of {program} pid {old_pid}")
    if not any(r["pid"] == new_pid and r["to_state"] == "RUNNING" for r in mine):
        problems.append(f"audit: {program} pid {new_pid} never RUNNING")
    return problems


def strategy_acks(stack: Any) -> list[Ack]:
    """The acks every strategy logged (order_acked), as (client_id, order_id, order_no)."""
    return [(st.client_id, r["order_id"], r["order_no"]) for st in stack.cfg.all_strategies()
            for r in stack.events(st.program, "order_acked")]


def book_age_ms(segment: str) -> float:
    """The writer heartbeat's age in the segment now (inf: none, or no segment)."""
    try:
        seg = book.Segment.attach(segment)
    except book.BookError:
        return float("inf")
    try:
        return seg.age_ms()
    finally:
        seg.close()


def ticks(segment: str) -> int:
    """Writes so far over every slot (0 if the segment is missing)."""
    try:
        seg = book.Segment.attach(segment)
    except book.BookError:
        return 0
    try:
        return sum(r.updates for i in range(len(seg.symbols)) if (r := seg.read(i)) is not None)
    finally:
        seg.close()


def _wait(what: str, predicate: Any, deadline: float, detail: Any = None) -> Any:
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise NotHealed(f"not healed: {what}" + (f": {detail()}" if detail else ""))
        time.sleep(0.1)


def healed(stack: Any, restarted: Mapping[str, int] | None = None, acks: Iterable[Ack] = (),
           timeout: float = 60.0, trading: bool = True) -> float:
    """Wait until the stack has recovered and every invariant holds; the seconds it took.

    Every program RUNNING; the book fresh and ticking; (``trading``) a new
    order of every strategy journaled; the audit log showing each restart (``restarted``:
    program -> pid before the fault) and the current pid of every program; the
    journal's invariants; every acked order (the strategy's ``order_acked``
    log lines and ``acks``) journaled exactly once; no order from a
    strategy while its order link was down or the book stale. Each per client.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    cfg = stack.cfg
    _wait("every program RUNNING", lambda: _all_running(stack), deadline, lambda: _safe_status(stack))
    _wait(f"book fresh (< {cfg.book.stale_ms} ms)", lambda: book_age_ms(stack.segment) < cfg.book.stale_ms,
          deadline, lambda: f"age {book_age_ms(stack.segment)} ms")
    n0 = ticks(stack.segment)
    _wait("book ticking", lambda: ticks(stack.segment) > n0, deadline)
    if trading:
        last = max((e["order_no"] for e in stack.journal()), default=0)
        cids = {st.client_id for st in cfg.all_strategies()}

        def quiet() -> set[str]:
            return cids - {e["client_id"] for e in stack.journal() if e["order_no"] > last}

        _wait("every strategy trading again", lambda: not quiet(), deadline, lambda: f"no order from {sorted(quiet())}")
    pids = stack.pids()
    for program, old in (restarted or {}).items():
        if old == pids[program]:
            raise NotHealed(f"not healed: {program} still has pid {old}; it never restarted")
        _wait(f"audit shows the restart of {program}",
              lambda p=program, o=old: not restart_problems(stack.audit(), p, o, pids[p]), deadline,
              lambda p=program, o=old: restart_problems(stack.audit(), p, o, pids[p]))
    _wait("audit knows every current pid", lambda: not _audit_gaps(stack, pids), deadline,
          lambda: _audit_gaps(stack, pids))
    acked = [*strategy_acks(stack), *acks]  # before the journal: each ack follows its journal line
    journal = stack.journal()
    problems = journal_problems(journal, position_bounds(cfg))
    problems += ack_problems(journal, acked)
    for st in cfg.all_strategies():
        problems += [f"{st.program}: {p}" for p in strategy_problems(stack.log(st.program))]
    if problems:
        raise NotHealed("invariants broken:\n  " + "\n  ".join(problems))
    return time.monotonic() - t0


def _audit_gaps(stack: Any, pids: Mapping[str, int]) -> list[str]:
    last: dict[str, int] = {}
    for r in stack.audit():
        if r.get("to_state") == "RUNNING":
            last[r["process"]] = r["pid"]
    return [f"{p}: audit's last RUNNING pid {last.get(p)}, supervisord's {pid}"
            for p, pid in pids.items() if last.get(p) != pid]


def _all_running(stack: Any) -> bool:
    st = _safe_status(stack)
    return bool(st) and all(v == "RUNNING" for v in st.values())


def _safe_status(stack: Any) -> dict[str, str]:
    try:
        return dict(stack.status())
    except Exception:  # supervisord restarting: its socket or SHUTDOWN_STATE
        return {}
