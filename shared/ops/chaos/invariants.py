"""What must hold after any fault, checked from the outside: supervisord's
status, the segment, the journal and the exec journal, the logs and the audit
log (issues 3 and 15).

The checks on records are pure functions returning the problems they find;
``healed(stack)`` waits until the stack has recovered and every check
passes, and says how long that took. The fault suite and the soak use it.

Contract §9 adds: no exec_id twice; each order's execs a ``new``, then fills,
then at most one terminal exec, ``cum_qty`` the sum of its fills; each exec
delivered to its strategy once (its ``exec_received`` log lines); positions
in every ``logon_ack`` (the ordermanager's ``logon`` line), the exec journal
and the audit equal to the sum of the fills.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from shared import book, config
from shared.decision import load_rule
from shared.execjournal import read_base, read_lines
from shared.execstate import ExecLine
from shared.ops import pnlaudit
from shared.protocol import TERMINAL

Ack = tuple[str, str, int]  # (client_id, order_id, order_no) the ordermanager acked


class NotHealed(AssertionError):
    """The stack did not recover in time, or an invariant is broken."""


def journal_problems(journal: list[dict[str, Any]], bounds: Mapping[str, int | None] | None = None) -> list[str]:
    """No order_id twice per client; order_no 1..N in order; (``bounds``, before the venue, when an
    acked order counted as filled) each client's position per symbol within ±qty at every prefix of
    the journal (``fill_problems`` holds the venue's positions to the same bounds)."""
    bounds = bounds or {}
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


def exec_problems(execs: list[ExecLine], journal: list[dict[str, Any]], base: int = 0,
                  grace_ns: int = 5 * 10**9) -> list[str]:
    """The exec journal: exec_ids increasing, none twice; each exec of an order journaled (after
    ``base``, the orders before the venue); per order a ``new`` first, fills that sum to ``cum_qty``
    within the order's qty, and nothing after its one terminal exec; an ioc order (a market order
    is one) that is ``grace_ns`` older than the last exec has ended."""
    problems: list[str] = []
    ids = [x.exec_id for x in execs]
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        problems.append(f"exec_id journaled more than once: {twice[:5]} ({len(twice)} in all)")
    back = next((b for a, b in zip(ids, ids[1:], strict=False) if b <= a), None)
    if back is not None:
        problems.append(f"exec_ids not increasing in the exec journal: {back} after a larger one")
    orders = {e["order_no"]: e for e in journal if e["order_no"] > base}
    cum: dict[int, int] = defaultdict(int)
    seen: dict[int, list[str]] = defaultdict(list)
    for x in execs:
        o = orders.get(x.order_no)
        where = f"exec {x.exec_id} of order_no {x.order_no} ({x.order_id})"
        if o is None or (o["client_id"], o["order_id"]) != (x.client_id, x.order_id):
            problems.append(f"{where}: no such order in the journal")
            continue
        statuses = seen[x.order_no]
        if not statuses and x.status != "new":
            problems.append(f"{where}: {x.status} before its new")
        elif statuses and statuses[-1] in TERMINAL:
            problems.append(f"{where}: {x.status} after it ended {statuses[-1]}")
        statuses.append(x.status)
        cum[x.order_no] += x.last_qty
        if x.cum_qty != cum[x.order_no] or x.cum_qty > o["qty"]:
            problems.append(f"{where}: cum_qty {x.cum_qty}, its fills sum to {cum[x.order_no]}, qty {o['qty']}")
    newest = max((x.recv_ns for x in execs), default=0)
    for no, o in orders.items():
        if o.get("tif", "day") == "ioc" and o.get("recv_ns", newest) < newest - grace_ns and not (
                seen[no] and seen[no][-1] in TERMINAL):
            problems.append(f"ioc order_no {no} ({o['client_id']}/{o['order_id']}) never ended: {seen[no]}")
    return problems


def fill_problems(execs: list[ExecLine], bounds: Mapping[str, int | None], logons: list[dict[str, Any]],
                  audit_clients: Mapping[str, Any] | None = None, journal: Iterable[dict[str, Any]] = ()
                  ) -> list[str]:
    """Positions are the sum of fills: each client's of ``bounds`` ({client_id: qty}) within ±qty
    after every fill (a qty of None: no bound), and beyond it by no more than what the orders its
    rule counted as open when it decided another (``journal``: an order's ``ctx.open_orders``) left
    unfilled as they ended; each ``logon`` line of the ordermanager (what its
    logon_ack said) shows the client's fills up to its ``last_exec_id``; the audit's positions
    (``audit_clients``, its ``clients`` document) are the exec journal's."""
    problems: list[str] = []
    pos: dict[tuple[str, str], int] = defaultdict(int)
    over: set[str] = set()
    # The rule counts an open order as done (contract §7): at +10 with a sell of 20 open it buys 20. If
    # the sell then expires unfilled (an ioc order, the quote's bid taken by another client), the buy
    # still fills: +30. So what a counted order left unfilled widens the bound, on the other side.
    qtys: dict[tuple[str, str], int] = {}
    counted: set[tuple[str, str]] = set()
    for e in journal:
        qtys[(e["client_id"], e["order_id"])] = e["qty"]
        counted.update((e["client_id"], o["order_id"]) for o in (e.get("ctx") or {}).get("open_orders", ()))
    room: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (client_id, symbol) -> [above, below]
    due: dict[int, list[dict[str, Any]]] = defaultdict(list)  # exec_id -> the logons to check after it
    for r in logons:
        if r.get("last_exec_id") is None:
            if r.get("positions"):
                problems.append(f"logon of {r.get('client_id')} at {r.get('ts')}: positions {r.get('positions')} "
                                "before any exec")
        else:
            due[r["last_exec_id"]].append(r)

    def held(cid: str) -> dict[str, int]:
        return {s: q for (c, s), q in pos.items() if c == cid and q}

    for x in execs:
        key = (x.client_id, x.symbol)
        if x.last_qty:
            pos[key] += x.last_qty if x.side == "BUY" else -x.last_qty
            qty = bounds.get(x.client_id)
            above, below = room[key]
            if qty is not None and x.client_id not in over and not -qty - below <= pos[key] <= qty + above:
                problems.append(f"{x.client_id} filled position {pos[key]} {x.symbol} beyond ±{qty} "
                                f"after exec {x.exec_id} ({x.order_id})")
                over.add(x.client_id)
        if x.status in TERMINAL and (x.client_id, x.order_id) in counted:
            room[key][x.side == "BUY"] += qtys.get((x.client_id, x.order_id), x.cum_qty) - x.cum_qty
        for r in due.pop(x.exec_id, ()):
            want = held(r["client_id"])
            if r["client_id"] != x.client_id or (r.get("positions") or {}) != want:
                problems.append(f"logon of {r['client_id']} at {r.get('ts')}: positions {r.get('positions')} "
                                f"with last_exec_id {x.exec_id} (of {x.client_id}); its fills make {want}")
    for last, rs in due.items():
        problems += [f"logon of {r.get('client_id')} at {r.get('ts')}: last_exec_id {last} is not in the exec "
                     "journal" for r in rs]
    for cid, doc in (audit_clients or {}).items():
        got = {s: v["position"] for s, v in doc["symbols"].items() if v["position"]}
        if got != held(cid):
            problems.append(f"audit: {cid} positions {got}, its fills make {held(cid)}")
    return problems


def delivery_problems(execs: list[ExecLine], records: Mapping[str, list[dict[str, Any]]]
                      ) -> tuple[list[str], list[str]]:
    """Each exec delivered to its strategy once, from the strategies' logs (``records``: client_id ->
    its program's records): (problems, missing). Problems: an ``exec_received`` twice for one exec_id
    (any process), an ``exec_duplicate``. Missing: an exec of the client above what its current process
    took from its first logon_ack (``logged_on``'s ``last_exec_id``) that this process has not logged."""
    problems: list[str] = []
    missing: list[str] = []
    for cid, recs in records.items():
        got = Counter(r.get("exec_id") for r in recs if r.get("event") == "exec_received")
        twice = sorted(i for i, n in got.items() if n > 1 and isinstance(i, int))
        if twice:
            problems.append(f"{cid}: exec_id received more than once: {twice[:5]} ({len(twice)} in all)")
        problems += [f"{cid}: exec_duplicate {r.get('exec_id')} at {r.get('ts')}" for r in recs
                     if r.get("event") == "exec_duplicate"]
        if not recs:
            continue
        pid = recs[-1].get("pid")
        current = [r for r in recs if r.get("pid") == pid]
        first = next((r for r in current if r.get("event") == "logged_on"), None)
        if first is None:
            continue  # not logged on yet
        base = first.get("last_exec_id") or 0
        received = {r.get("exec_id") for r in current if r.get("event") == "exec_received"}
        lost = [x.exec_id for x in execs if x.client_id == cid and x.exec_id > base and x.exec_id not in received]
        if lost:
            missing.append(f"{cid} pid {pid}: execs not received: {lost[:5]} ({len(lost)} in all)")
    return problems, missing


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
    Then the venue's (contract §9): every exec delivered to its strategy (waited
    for), once; the exec journal's invariants; positions the sum of fills, in
    every logon_ack, the exec journal and the audit, within each strategy's bound (widened by what
    an order its rule counted as open left unfilled).
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
    _wait("every exec delivered to its strategy", lambda: not deliveries(stack)[1], deadline,
          lambda: deliveries(stack)[1])
    acked = [*strategy_acks(stack), *acks]  # before the journal: each ack follows its journal line
    path = cfg.resolve(cfg.ordermanager.journal)
    execs, base = list(read_lines(path)), read_base(path)  # before the journal: an order is journaled first
    journal = stack.journal()
    problems = journal_problems(journal)
    problems += ack_problems(journal, acked)
    problems += exec_problems(execs, journal, base)
    problems += fill_problems(execs, position_bounds(cfg), stack.events("ordermanager", "logon"),
                              pnlaudit.clients(journal, {}, execs, base), journal)
    problems += deliveries(stack, execs)[0]
    for st in cfg.all_strategies():
        problems += [f"{st.program}: {p}" for p in strategy_problems(stack.log(st.program))]
    if problems:
        raise NotHealed("invariants broken:\n  " + "\n  ".join(problems))
    return time.monotonic() - t0


def deliveries(stack: Any, execs: list[ExecLine] | None = None) -> tuple[list[str], list[str]]:
    """``delivery_problems`` on the stack's exec journal (or ``execs``) and strategies' logs."""
    if execs is None:
        execs = list(read_lines(stack.cfg.resolve(stack.cfg.ordermanager.journal)))
    return delivery_problems(execs, {st.client_id: stack.log(st.program) for st in stack.cfg.all_strategies()})


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
