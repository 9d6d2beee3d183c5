"""``stack-backtest --as-live``: a live session's orders asked again of their rules, from a tape.

Each order a strategy sends carries what its rule saw (``ctx``, which the
ordermanager journals as it is): the news tick's seq, the seqs of its window's
ticks (as runs of consecutive seqs), its filled position, its open orders and which of them it asked to
cancel first. From a tape recorded beside the live stack (``stack-record``), the
news tick (by seq and time) and the window's ticks (by seq) are found again, the
rule of the config is asked with that context through the strategy's own code
(``shared.decision``: cancels first, then the decision, checked and priced as
it is sent), and its order is compared with the live one: reproduced exactly
(the same side, qty, price, type and tif, and the same cancels), or why not.

The rule is asked only at the decision points of live orders, in order; the
news ticks where it sent nothing are not replayed. So a rule that keeps state
between calls (the shipped ones keep none) may decide otherwise: when a call
changes the rule's attributes, the report says so.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np

from shared import config as config_mod
from shared import tape as tape_mod
from shared.decision import ask, checked, pricing, rule_for, seqs_of, takes_open_orders
from shared.protocol import DecisionContext
from shared.rule import OpenOrder, Tick

SHOWN_SEQS = 5  # missing ticks named in a reason


class NewsTick(NamedTuple):
    """A news tick as the rule sees it (``shared.rule.NewsTick``)."""

    symbol: str
    sentiment: int
    ts_ns: int
    seq: int


SESSION_SHIFT = 40  # a price tick's key: its gateway session (counted on the tape) << 40 | its seq


class _Prices(NamedTuple):
    """One symbol's price ticks, sorted by key (session << 40 | seq): keys, times, prices."""

    key: np.ndarray[Any, Any]
    ts_ns: np.ndarray[Any, Any]
    price: np.ndarray[Any, Any]


class TapeIndex:
    """A (rolled) tape's news ticks by (seq, ts_ns) and each symbol's price ticks by session and seq;
    TapeError if it is not a tape or holds a bad record. A gateway session is counted where a stream's
    seqs start again (contract §4: they count from 1 in each session), so a seq used in two sessions is
    taken from the news tick's."""

    def __init__(self, path: str) -> None:
        tapes = tape_mod.read_all(path)
        for t in tapes:
            bad = t.problem()
            if bad is not None:
                raise tape_mod.TapeError(bad)
        self.dropped_bytes = sum(t.dropped_bytes for t in tapes)
        self.symbols = tapes[-1].symbols
        recs = np.concatenate([t.records for t in tapes]) if len(tapes) > 1 else tapes[0].records
        kind, sym = recs["kind"], recs["sym"]
        seq, ts, value = recs["seq"].astype(np.int64), recs["ts_ns"].astype(np.int64), recs["value"]
        news = kind == tape_mod.NEWS
        session = np.zeros(len(recs), np.int64)
        for m in (news, ~news):
            session[m] = np.cumsum(np.r_[0, np.diff(seq[m]) <= 0])
        self.records, self.news_ticks = len(recs), int(news.sum())
        self.price_ticks = self.records - self.news_ticks
        self.news: dict[tuple[int, int], tuple[str, int, int]] = {
            (q, t): (self.symbols[s], int(v), n)
            for s, q, t, v, n in zip(sym[news].tolist(), seq[news].tolist(), ts[news].tolist(), value[news].tolist(),
                                     session[news].tolist(), strict=True)}
        self.prices: dict[str, _Prices] = {}
        for i, name in enumerate(self.symbols):
            m = ~news & (sym == i)
            key = (session[m] << SESSION_SHIFT) | seq[m]
            order = np.argsort(key, kind="stable")
            self.prices[name] = _Prices(key[order], ts[m][order], value[m][order])

    def news_tick(self, seq: int, ts_ns: int) -> tuple[str, int, int] | None:
        """The news tick of this seq and time: (symbol, sentiment, session), or None if not on the tape."""
        return self.news.get((seq, ts_ns))

    def window(self, symbol: str, seqs: list[int], session: int) -> tuple[list[Tick], list[int]]:
        """The symbol's price ticks of these seqs in this session, in that order, and the seqs not on the tape."""
        p = self.prices.get(symbol)
        if p is None or not len(p.key):
            return [], list(seqs)
        want = (session << SESSION_SHIFT) | np.asarray(seqs, dtype=np.int64)
        pos = np.minimum(np.searchsorted(p.key, want), len(p.key) - 1)
        found = p.key[pos] == want
        missing = [q for q, f in zip(seqs, found.tolist(), strict=True) if not f]
        ticks = [Tick(px, t, q) for px, t, q, f in zip(p.price[pos].tolist(), p.ts_ns[pos].tolist(), seqs,
                                                      found.tolist(), strict=True) if f]
        return ticks, missing


@dataclass
class Verdict:
    """One live order: reproduced exactly, or why not."""

    order_id: str
    order_no: int
    symbol: str
    news_seq: int | None
    why: str | None  # None: reproduced exactly

    @property
    def reproduced(self) -> bool:
        return self.why is None


@dataclass
class Replay:
    """One strategy's live orders asked again of its rule."""

    spec: config_mod.Strategy
    rule: Any
    verdicts: list[Verdict] = field(default_factory=list)
    stateful: bool = False  # a call changed the rule's attributes

    @property
    def reproduced(self) -> int:
        return sum(v.reproduced for v in self.verdicts)


def _state(rule: Any) -> bytes | None:
    """The rule's attributes as bytes, to see a call change them; None if they cannot be pickled."""
    try:
        return pickle.dumps(vars(rule))
    except Exception:  # an attribute pickle refuses: nothing to compare
        return None


def _cancelled(open_orders: list[OpenOrder]) -> Any:
    """What the strategy's cancel gives back: the open orders, those asked marked ``canceling``."""
    def cancel(ids: Iterable[Any]) -> list[OpenOrder]:
        asked = set(ids)
        return [o._replace(canceling=True) if o.order_id in asked else o for o in open_orders]
    return cancel


def verdict(rule: Any, open_aware: bool, default_type: str, index: TapeIndex, entry: dict[str, Any]) -> str | None:
    """Why the live order of this journal line is not what the rule decides again from the tape and its
    context, or None when it is, exactly."""
    raw = entry.get("ctx")
    if raw is None:
        return "no decision context in its journal line (sent by a strategy without one)"
    try:
        c = msgspec.convert(raw, DecisionContext)
    except msgspec.ValidationError as e:
        return f"a bad decision context: {e}"
    found = index.news_tick(c.news_seq, int(entry.get("tick_ts_ns", -1)))
    if found is None:
        return f"news tick seq {c.news_seq} not on the tape"
    symbol, sentiment, session = found
    if symbol != entry["symbol"]:
        return f"news tick seq {c.news_seq} is {symbol}'s on the tape, the order {entry['symbol']}'s"
    seqs = seqs_of(c.window)
    if not seqs:
        return "its window is empty"
    ticks, missing = index.window(symbol, seqs, session)
    if missing:
        shown = ", ".join(map(str, missing[:SHOWN_SEQS])) + (", ..." if len(missing) > SHOWN_SEQS else "")
        return f"window: {len(missing)} of {len(seqs)} ticks not on the tape (seq {shown})"
    opens = [OpenOrder(*msgspec.structs.astuple(o)) for o in c.open_orders]
    news = NewsTick(symbol, sentiment, int(entry["tick_ts_ns"]), c.news_seq)
    try:
        d, asked = ask(rule, open_aware, ticks, news, c.position, opens, _cancelled(opens))
    except Exception as e:
        return f"the rule raised {type(e).__name__}: {e}"
    if asked != c.cancels:
        return f"it asks to cancel {asked}, live it asked {c.cancels}"
    if d is None:
        return "the rule decides no order"
    ok = checked(d)
    if ok is None:
        return f"the rule's answer is not an order: {d!r}"
    ord_type, price, tif = pricing(ok, ticks[-1].price, default_type)
    pairs = (("side", ok.side, entry["side"]), ("qty", ok.qty, entry["qty"]), ("price", price, entry.get("price")),
             ("ord_type", ord_type, entry.get("ord_type", "limit")), ("tif", tif, entry.get("tif", "day")))
    diffs = [f"{k} {mine!r}, live {live!r}" for k, mine, live in pairs if mine != live]
    return "; ".join(diffs) or None


def replay(cfg: config_mod.Config, index: TapeIndex, entries: list[dict[str, Any]],
           names: list[str]) -> list[Replay]:
    """The journal's live orders of each named strategy ("" for [strategy]) asked again of its rule, in
    journal order; ConfigError for a strategy or rule that cannot be built."""
    out = []
    for name in names:
        spec = cfg.strategy_named(name)
        rule = rule_for(cfg, spec)
        r = Replay(spec, rule)
        open_aware = takes_open_orders(rule)
        for e in entries:
            if e.get("client_id") != spec.client_id:
                continue
            before = _state(rule)
            why = verdict(rule, open_aware, spec.ord_type, index, e)
            r.stateful = r.stateful or before != _state(rule)
            ctx = e.get("ctx")
            r.verdicts.append(Verdict(str(e.get("order_id")), int(e.get("order_no", 0)), str(e.get("symbol")),
                                      ctx.get("news_seq") if isinstance(ctx, dict) else None, why))
        out.append(r)
    return out


def _params(rule: Any) -> dict[str, Any]:
    p = getattr(rule, "params", None)
    return dataclasses.asdict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else {}


def document(replays: list[Replay], journal: str, tape: str, index: TapeIndex) -> dict[str, Any]:
    """The ``--json`` document: per strategy its live orders, how many were reproduced, and each order's verdict."""
    return {
        "journal": journal,
        "tape": {"path": tape, "records": index.records, "price_ticks": index.price_ticks,
                 "news_ticks": index.news_ticks, "dropped_bytes": index.dropped_bytes},
        "strategies": [{
            "strategy": r.spec.table, "client_id": r.spec.client_id, "rule": r.spec.rule, "params": _params(r.rule),
            "live": len(r.verdicts), "reproduced": r.reproduced, "stateful": r.stateful,
            "orders": [{"order_id": v.order_id, "order_no": v.order_no, "symbol": v.symbol, "news_seq": v.news_seq,
                        "reproduced": v.reproduced, "why": v.why} for v in r.verdicts],
        } for r in replays],
    }


def text(replays: list[Replay], journal: str, tape: str, index: TapeIndex) -> str:
    """The report: a line per strategy, then each order not reproduced and why."""
    lines = [f"As live: the orders of {journal} asked again of their rules, from {tape}",
             f"tape: {index.records:,} records ({index.price_ticks:,} price ticks, {index.news_ticks:,} news ticks)",
             "", f"{'strategy':<24} {'client':<16} {'rule':<40} {'live':>6} {'reproduced':>10}"]
    for r in replays:
        lines.append(f"{'[' + r.spec.table + ']':<24} {r.spec.client_id:<16} {r.spec.rule:<40} "
                     f"{len(r.verdicts):>6} {r.reproduced:>10}")
    missed = [(r, v) for r in replays for v in r.verdicts if not v.reproduced]
    lines.append("")
    if missed:
        lines.append(f"not reproduced: {len(missed)}")
        lines += [f"  {v.order_id} (order {v.order_no}, {v.symbol}, news seq {v.news_seq}): {v.why}"
                  for _, v in missed]
    else:
        lines.append("every live order reproduced exactly (the same news tick and window, side, qty, price, "
                     "type and tif, and the same cancels)")
    for r in replays:
        if r.stateful:
            lines.append(f"note: [{r.spec.table}]'s rule changed its own attributes during a call: it keeps "
                         "state, and --as-live asks it only where a live order was sent")
    return "\n".join(lines) + "\n"


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1)
