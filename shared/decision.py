"""A strategy's decision at a news tick, pure: its rule loaded from its table, asked (cancels first,
then its decision), its answer checked and priced as it is sent, and what it saw recorded for the
order's journal line. The strategy program (``shared.strategy``) and ``stack-backtest``, which asks the
rule again from a tape (``--as-live``), share it, so both decide and price alike.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from shared import config as config_mod
from shared.protocol import DecisionContext, SeenOrder
from shared.rule import Decision, OpenOrder, OrdType, Tif, exposure


def load_rule(st: config_mod.Strategy) -> Any:
    """Import a strategy's rule and build it from its params; config_mod.ConfigError naming
    the table and key when the rule cannot be imported or a param is wrong."""
    mod_name, _, cls_name = st.rule.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in cls_name.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # ImportError, AttributeError, or the module failing as it loads
        raise config_mod.ConfigError(f"{st.table}.rule: cannot import {st.rule!r}: {type(e).__name__}: {e}") from None
    params_cls = getattr(obj, "Params", None)
    if not isinstance(obj, type) or not callable(getattr(obj, "decide", None)) or params_cls is None \
            or not isinstance(params_cls, type) or not dataclasses.is_dataclass(params_cls):
        raise config_mod.ConfigError(f"{st.table}.rule: {st.rule!r} is not a rule (a class with Params and decide)")
    try:
        params = config_mod.section(st.table, params_cls, st.params, signed=True)
    except config_mod.ConfigError as e:
        raise config_mod.ConfigError(f"{e} (rule {st.rule})") from None
    except (TypeError, ValueError) as e:  # the rule's own checks: "key: why"
        raise config_mod.ConfigError(f"{st.table}.{e}") from None
    rule = obj(params)
    rule.name = st.rule
    if not isinstance(getattr(rule, "history", None), int) or rule.history < 1:
        raise config_mod.ConfigError(f"{st.table}.rule: {st.rule!r} has no history >= 1 (ticks it wants)")
    return rule


def takes_open_orders(rule: Any) -> bool:
    """Whether the rule's ``decide`` takes ``open_orders`` (a fourth argument); one that takes
    three is of the interface before the venue, and gets its open orders counted in ``position``."""
    try:
        sig = inspect.signature(rule.decide)
    except (TypeError, ValueError):
        return True
    kinds = [p.kind for p in sig.parameters.values()]
    positional = sum(k in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p, k in
                     zip(sig.parameters.values(), kinds, strict=True))
    return inspect.Parameter.VAR_POSITIONAL in kinds or positional >= 4


_SIDES = ("BUY", "SELL")


def checked(d: Any) -> Decision | None:
    """A rule's answer as a Decision, or None if it is not one (a plain (side, qty) tuple will do)."""
    if not isinstance(d, tuple) or not 2 <= len(d) <= 5:
        return None
    d = Decision(*d)
    if (d.side not in _SIDES or type(d.qty) is not int or d.qty <= 0
            or d.ord_type not in (None, "limit", "market") or d.tif not in (None, "day", "ioc")
            or (d.price is not None and not (type(d.price) in (int, float) and math.isfinite(d.price)
                                             and d.price > 0))):
        return None
    return d


def protection(price: float, side: str) -> float:
    """A market order's protection price (VENUE.md): 1 % through the book's price, to the cent."""
    return round(price * (1.01 if side == "BUY" else 0.99), 2)


def pricing(d: Decision, book_px: float, default_type: str) -> tuple[OrdType, float, Tif]:
    """How a decision is sent: its type (the table's ``ord_type`` unless it says), its price (a market
    order's protection price, a limit order's the book's, unless it names one) and its tif."""
    ord_type: OrdType = d.ord_type or ("limit" if default_type == "limit" else "market")
    market = ord_type == "market"
    price = d.price if d.price is not None else protection(book_px, d.side) if market else book_px
    tif: Tif = "ioc" if market else d.tif or "day"  # a market order is ioc at the venue anyway
    return ord_type, price, tif


def ask(rule: Any, open_aware: bool, ticks: Any, news: Any, position: int, open_orders: list[OpenOrder],
        cancel: Callable[[list[str]], list[OpenOrder]]) -> tuple[Any, list[str]]:
    """The rule asked at a news tick: first which of ``open_orders`` to cancel (``cancel(ids)`` acts on
    them and gives the open orders after), then its decision. Returns its answer and the ids of
    ``open_orders`` it asked to cancel. A rule of the interface before the venue gets what is open
    counted in its position, and is asked nothing else."""
    if not open_aware:
        return rule.decide(ticks, news, exposure(position, open_orders)), []
    asked: list[str] = []
    if open_orders:
        ids = list(rule.cancels(ticks, news, open_orders))
        listed = {o.order_id for o in open_orders}
        asked = [i for i in ids if isinstance(i, str) and i in listed]
        open_orders = cancel(ids)
    return rule.decide(ticks, news, position, open_orders), asked


def runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Seqs as runs of consecutive ones, [first, last] each: a window is one run unless the ring had a hole."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def seqs_of(window: list[tuple[int, int]]) -> list[int]:
    """The seqs of ``runs``' output again."""
    return [s for first, last in window for s in range(first, last + 1)]


def context(news_seq: int, ticks: Any, position: int, open_orders: list[OpenOrder],
            asked: list[str]) -> DecisionContext:
    """What the rule saw, for the order's journal line (``stack-backtest --as-live``)."""
    return DecisionContext(news_seq=news_seq, window=runs([t.tick_seq for t in ticks]), position=position,
                           open_orders=[SeenOrder(*o) for o in open_orders], cancels=asked)


def rule_for(cfg: config_mod.Config, spec: config_mod.Strategy) -> Any:
    """The strategy's rule, built from its table; ConfigError if it cannot be,
    or if it wants more ticks than the ring keeps."""
    rule = load_rule(spec)
    if rule.history > cfg.book.ring_len:
        raise config_mod.ConfigError(f"{spec.table}.rule: {spec.rule} wants {rule.history} ticks; "
                                     f"book.ring_len keeps {cfg.book.ring_len}")
    return rule
