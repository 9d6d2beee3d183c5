"""A backtest's report: the text ``stack-backtest`` prints, and its ``--json``
document (``orders``, ``fills``, ``clients`` shaped as ``stack-audit --json``'s,
and a ``summary``). Both hold only what the tape and the config decide, no
clock, so the same run prints the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from shared import pnl
from shared.ops.research.backtest import Result

DIGITS = pnl.DIGITS


def _r(x: float) -> float:
    return round(x, DIGITS) + 0.0  # + 0.0: no -0.0


def clients(res: Result) -> dict[str, Any]:
    """Contract §8/§9's ``clients`` document for the strategy's client: P&L from its fills, marked
    at the tape's last prices, with its open orders (count, and leaves per side per symbol)."""
    sim = res.sim
    cid = sim.client_id
    opens: dict[str, list[int]] = {}
    for w in sim.working.values():
        opens.setdefault(w.symbol, [0, 0])[0 if w.side == "BUY" else 1] += w.leaves_qty
    doc = pnl.report({cid: sim.positions} if sim.positions else {}, res.marks)
    client = doc.setdefault(cid, {"realized": 0.0, "unrealized": 0.0, "total": 0.0, "symbols": {}})
    client["open_orders"] = len(sim.working)
    for sym in sorted(set(client["symbols"]) | set(opens)):
        entry = client["symbols"].setdefault(sym, {"position": 0, "avg_price": None, "realized": 0.0, "unrealized": 0.0,
                                                   "total": 0.0, "mark": res.marks.get(sym)})
        entry["open_buy"], entry["open_sell"] = opens.get(sym, (0, 0))
    client["symbols"] = dict(sorted(client["symbols"].items()))
    return doc


def summary(res: Result) -> dict[str, Any]:
    """Counts, shares, turnover and max drawdowns, in all and per symbol."""
    sim, eq = res.sim, res.equity
    status = Counter(o["status"] for o in sim.orders)
    fills_by = Counter(f["symbol"] for f in sim.fills)
    shares_by = Counter[str]()
    for f in sim.fills:
        shares_by[f["symbol"]] += f["last_qty"]
    syms = sorted(set(fills_by) | {s for s, st in eq.syms.items() if st.mark is not None})
    return {
        "orders": len(sim.orders), "accepted": sim.order_no, "rejected": status["rejected"],
        "filled": status["filled"], "partially_filled": status["partially_filled"], "expired": status["expired"],
        "canceled": status["canceled"], "open": len(sim.working), "fills": len(sim.fills),
        "shares": sum(shares_by.values()), "turnover": _r(sum(sim.turnover.values())),
        "max_drawdown": _r(eq.max_dd), "rule_errors": sim.rule_errors, "first_rule_error": sim.first_error or None,
        "symbols": {s: {"fills": fills_by[s], "shares": shares_by[s], "turnover": _r(sim.turnover.get(s, 0.0)),
                        "max_drawdown": _r(eq.syms[s].max_dd) if s in eq.syms else 0.0} for s in syms},
    }


def document(res: Result, tape_name: str) -> dict[str, Any]:
    """The ``--json`` document."""
    spec = res.setup.spec()
    spread, depth = res.setup.venue()
    return {
        "tape": {"path": tape_name, "records": res.feed.records, "price_ticks": res.price_ticks,
                 "news_ticks": res.news_ticks, "dropped_bytes": res.feed.dropped_bytes,
                 "symbols": list(res.feed.symbols)},
        "strategy": {"table": spec.table, "client_id": spec.client_id, "rule": spec.rule, "params": params(res.rule)},
        "venue": {"spread_bps": spread, "depth": depth},
        "orders": res.sim.orders,
        "fills": res.sim.fills,
        "clients": clients(res),
        "summary": summary(res),
    }


def params(rule: Any) -> dict[str, Any]:
    """The rule's params as a dict (its Params dataclass)."""
    p = rule.params
    return dataclasses.asdict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else {}


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False)


def _money(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def text(res: Result, tape_name: str) -> str:
    """The human report."""
    doc = document(res, tape_name)
    t, st, v, sm = doc["tape"], doc["strategy"], doc["venue"], doc["summary"]
    risk = res.setup.cfg.risk.default
    lines = [
        f"Backtest of [{st['table']}] (client {st['client_id']}): {st['rule']}",
        "  params: " + ", ".join(f"{k}={val!r}" for k, val in st["params"].items()),
        f"tape {t['path']}: {t['records']:,} records ({t['price_ticks']:,} price ticks, {t['news_ticks']:,} news "
        f"ticks), symbols {' '.join(t['symbols'])}",
        f"venue: spread {v['spread_bps']:g} bps, depth {v['depth']}; risk: max_position {risk.max_position}, "
        f"max_orders_per_s {risk.max_orders_per_s}, max_notional {risk.max_notional:g} (0 = none)",
        "",
        f"orders {sm['orders']}: accepted {sm['accepted']}, rejected {sm['rejected']}; filled {sm['filled']}, "
        f"partly filled {sm['partially_filled']}, expired {sm['expired']}, canceled {sm['canceled']}, "
        f"open {sm['open']}",
        f"fills {sm['fills']}: {sm['shares']:,} shares, turnover {_money(sm['turnover'])}",
    ]
    if sm["rule_errors"]:
        lines.append(f"rule failed {sm['rule_errors']} times; first: {sm['first_rule_error']}")
    lines += ["", f"{'symbol':<8} {'position':>8} {'avg_price':>10} {'mark':>10} {'realized':>12} {'unrealized':>12} "
              f"{'total':>12} {'fills':>6} {'turnover':>14} {'max_dd':>10}"]
    client = doc["clients"].get(st["client_id"], {"symbols": {}, "realized": 0.0, "unrealized": 0.0, "total": 0.0})
    per = sm["symbols"]
    for sym in sorted(set(client["symbols"]) | set(per)):
        c = client["symbols"].get(sym, {})
        p = per.get(sym, {"fills": 0, "turnover": 0.0, "max_drawdown": 0.0})
        avg = c.get("avg_price")
        lines.append(f"{sym:<8} {c.get('position', 0):>8} {'-' if avg is None else f'{avg:.2f}':>10} "
                     f"{_money(c.get('mark', res.marks.get(sym))):>10} {_money(c.get('realized', 0.0)):>12} "
                     f"{_money(c.get('unrealized', 0.0)):>12} {_money(c.get('total', 0.0)):>12} {p['fills']:>6} "
                     f"{_money(p['turnover']):>14} {_money(p['max_drawdown']):>10}")
    lines.append(f"{'total':<8} {'':>8} {'':>10} {'':>10} {_money(client['realized']):>12} "
                 f"{_money(client['unrealized']):>12} {_money(client['total']):>12} {sm['fills']:>6} "
                 f"{_money(sm['turnover']):>14} {_money(sm['max_drawdown']):>10}")
    lines += ["", f"max drawdown {_money(sm['max_drawdown'])} (P&L marked at every price tick, from 0 at the start)"]
    return "\n".join(lines) + "\n"
