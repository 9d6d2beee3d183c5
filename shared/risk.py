"""Pre-trade risk per client at the ordermanager (contract §8 ``[risk]``): pure, no I/O.

A check answers None (the order passes) or the reject detail, which begins
with what refused it: ``halted``, ``max_notional``, ``max_position`` or
``max_orders_per_s``. The ordermanager sends it as a ``reject`` with reason
``risk``.

Contract §9: the position is what filled, and ``max_position`` counts it plus
the leaves of the client's open orders on the order's side (they may all still
fill). A market order without a price has no notional to check, so with a
``max_notional`` it is refused.
"""

from __future__ import annotations

from collections import deque

from shared.config import Risk as RiskConfig
from shared.config import RiskLimits

WINDOW_S = 1.0  # max_orders_per_s counts the orders accepted in the last second


def notional_refusal(limits: RiskLimits, qty: int, price: float | None) -> str | None:
    """Refuse one order worth more than ``max_notional`` (qty x price), or without a price under that limit."""
    if price is None:
        return "max_notional: a market order needs a price" if limits.max_notional else None
    notional = qty * price
    if limits.max_notional and notional > limits.max_notional:
        return f"max_notional: {qty} x {price} = {notional:.2f} is over the limit {limits.max_notional:g}"
    return None


def position_refusal(limits: RiskLimits, symbol: str, position: int, signed_qty: int, open_qty: int = 0) -> str | None:
    """Refuse an order after which the absolute position in ``symbol``, counting ``open_qty`` (the leaves
    of the client's open orders on the order's side) as filled, is over ``max_position``.

    An order that brings that closer to zero always passes, so a client left
    over a limit lowered since can still reduce."""
    before = position + (open_qty if signed_qty > 0 else -open_qty)
    after = before + signed_qty
    if limits.max_position and abs(after) > limits.max_position and abs(after) >= abs(before):
        side = "buy" if signed_qty > 0 else "sell"
        held = f"position {position}" + (f" and {open_qty} open to {side}" if open_qty else "")
        return f"max_position: {symbol} {held} would become {after}, over the limit {limits.max_position}"
    return None


class RateWindow:
    """The times of a client's last ``limit`` accepted orders: is one more allowed now?"""

    __slots__ = ("limit", "times")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.times: deque[float] = deque(maxlen=limit)

    def refusal(self, now: float) -> str | None:
        """None if an order at ``now`` keeps the last second within the limit."""
        if len(self.times) < self.limit or now - self.times[0] >= WINDOW_S:
            return None
        return f"max_orders_per_s: {self.limit} orders accepted in the last second, the limit"

    def add(self, now: float) -> None:
        self.times.append(now)


class Risk:
    """The ordermanager's pre-trade checks: the halted clients, then each client's limits."""

    def __init__(self, cfg: RiskConfig) -> None:
        self.default = cfg.default
        self.overrides = dict(cfg.clients)
        self.halted: frozenset[str] = frozenset()
        self.rates: dict[str, RateWindow] = {}

    def limits(self, client_id: str) -> RiskLimits:
        return self.overrides.get(client_id, self.default)

    def check(self, client_id: str, symbol: str, side: str, qty: int, price: float | None, position: int,
              now: float, open_qty: int = 0) -> str | None:
        """None and the order counts toward the rate, or the detail of the refusal. ``position`` is the
        client's filled one in ``symbol``, ``open_qty`` the leaves of its open orders there on ``side``;
        ``now`` is monotonic seconds."""
        if client_id in self.halted:
            return f"halted: order entry of {client_id} is stopped (deploy/resume {client_id})"
        lim = self.limits(client_id)
        refusal = (notional_refusal(lim, qty, price)
                   or position_refusal(lim, symbol, position, qty if side == "BUY" else -qty, open_qty))
        if refusal is not None or not lim.max_orders_per_s:
            return refusal
        rate = self.rates.get(client_id)
        if rate is None:
            rate = self.rates[client_id] = RateWindow(lim.max_orders_per_s)
        refusal = rate.refusal(now)
        if refusal is None:
            rate.add(now)
        return refusal
