"""Per-client risk at the ordermanager (shared/risk.py) and its config (``[risk]``), as tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import config
from shared.config import ConfigError, RiskLimits
from shared.risk import RateWindow, Risk, notional_refusal, position_refusal

# (id, limits, qty, price, refused detail prefix or None)
NOTIONAL = [
    ("no_limit", RiskLimits(), 1_000_000, 1e6, None),
    ("under", RiskLimits(max_notional=1000), 9, 100.0, None),
    ("exactly_at", RiskLimits(max_notional=1000), 10, 100.0, None),
    ("over", RiskLimits(max_notional=1000), 11, 100.0, "max_notional: 11 x 100.0 = 1100.00 is over the limit 1000"),
    ("over_by_a_cent", RiskLimits(max_notional=1000), 1, 1000.01, "max_notional: 1 x 1000.01"),
]


@pytest.mark.parametrize(("limits", "qty", "price", "want"), [c[1:] for c in NOTIONAL], ids=[c[0] for c in NOTIONAL])
def test_max_notional(limits: RiskLimits, qty: int, price: float, want: str | None) -> None:
    got = notional_refusal(limits, qty, price)
    assert got == want if want is None else got is not None and got.startswith(want), got


# (id, max_position, position before, signed qty, refused detail or None)
POSITION = [
    ("no_limit", 0, 0, 10**9, None),
    ("buy_to_the_limit", 50, 40, 10, None),
    ("buy_past_the_limit", 50, 40, 11, "max_position: AAPL position 40 would become 51, over the limit 50"),
    ("sell_to_minus_limit", 50, -40, -10, None),
    ("sell_past_minus_limit", 50, -40, -11, "max_position: AAPL position -40 would become -51, over the limit 50"),
    ("flip_within", 50, 30, -80, None),
    ("flip_past", 50, 30, -81, "max_position: AAPL position 30 would become -51, over the limit 50"),
    ("one_order_too_big_from_flat", 50, 0, 51, "max_position: AAPL position 0 would become 51, over the limit 50"),
    # Over a limit lowered since: reducing passes, growing or flipping to the same size does not.
    ("over_already_reducing", 50, 80, -10, None),
    ("over_already_growing", 50, 80, 1, "max_position: AAPL position 80 would become 81, over the limit 50"),
    ("over_already_flip_same_size", 50, 80, -160, "max_position: AAPL position 80 would become -80, over the limit 50"),
]


@pytest.mark.parametrize(("limit", "before", "qty", "want"), [c[1:] for c in POSITION], ids=[c[0] for c in POSITION])
def test_max_position(limit: int, before: int, qty: int, want: str | None) -> None:
    assert position_refusal(RiskLimits(max_position=limit), "AAPL", before, qty) == want


def test_rate_window_slides_over_one_second() -> None:
    """At most ``limit`` accepted orders in any second; the window slides with each order."""
    w = RateWindow(3)
    for t in (0.0, 0.1, 0.2):
        assert w.refusal(t) is None
        w.add(t)
    assert w.refusal(0.5) == "max_orders_per_s: 3 orders accepted in the last second, the limit"
    assert w.refusal(0.999) is not None
    assert w.refusal(1.0) is None  # the order at 0.0 left the window
    w.add(1.0)
    assert w.refusal(1.05) is not None  # 0.1, 0.2, 1.0 are inside
    assert w.refusal(1.1) is None


def limits_cfg(text: str, tmp_path: Path) -> config.Config:
    p = tmp_path / "stack.toml"
    p.write_text(text)
    return config.load(p)


CFG = """
[risk]
max_position = 100
max_orders_per_s = 2
max_notional = 0
[risk.clients."tight"]
max_position = 10
max_notional = 500.5
[risk.clients."free rate"]
max_orders_per_s = 0
"""

# (id, client, symbol, side, qty, price, position, refused detail prefix or None): each on a fresh Risk at t = 0
CHECKS = [
    ("default_passes", "anyone", "AAPL", "BUY", 100, 1000.0, 0, None),
    ("default_position", "anyone", "AAPL", "BUY", 101, 1.0, 0, "max_position: AAPL position 0 would become 101"),
    ("default_position_short", "anyone", "MSFT", "SELL", 1, 1.0, -100, "max_position: MSFT position -100 would"),
    ("override_position", "tight", "AAPL", "BUY", 11, 1.0, 0, "max_position:"),
    ("override_position_passes", "tight", "AAPL", "SELL", 10, 1.0, 0, None),
    ("override_notional", "tight", "AAPL", "BUY", 10, 50.1, 0,
     "max_notional: 10 x 50.1 = 501.00 is over the limit 500.5"),
    ("notional_before_position", "tight", "AAPL", "BUY", 1000, 1.0, 0, "max_notional:"),
    ("override_keeps_other_defaults", "free rate", "AAPL", "BUY", 101, 1.0, 0, "max_position:"),
]


@pytest.mark.parametrize(("client", "symbol", "side", "qty", "price", "position", "want"),
                         [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS])
def test_risk_check_with_defaults_and_overrides(tmp_path: Path, client: str, symbol: str, side: str, qty: int,
                                                price: float, position: int, want: str | None) -> None:
    risk = Risk(limits_cfg(CFG, tmp_path).risk)
    got = risk.check(client, symbol, side, qty, price, position, 0.0)
    assert got == want if want is None else got is not None and got.startswith(want), got


def test_rate_counts_accepted_orders_per_client(tmp_path: Path) -> None:
    """The default allows 2 per second per client; a refused order does not use up the rate;
    each client has its own window; an override of 0 lifts the limit."""
    risk = Risk(limits_cfg(CFG, tmp_path).risk)
    check = risk.check
    assert check("a", "AAPL", "BUY", 1, 1.0, 0, 0.0) is None
    assert check("a", "AAPL", "BUY", 1000, 1.0, 0, 0.1) is not None  # refused by max_position: not counted
    assert check("a", "AAPL", "BUY", 1, 1.0, 1, 0.2) is None
    assert (check("a", "AAPL", "BUY", 1, 1.0, 2, 0.3) or "").startswith("max_orders_per_s: 2 orders")
    assert check("b", "AAPL", "BUY", 1, 1.0, 0, 0.3) is None
    assert check("a", "AAPL", "BUY", 1, 1.0, 2, 1.0) is None
    assert all(check("free rate", "AAPL", "BUY", 1, 1.0, 0, 0.0) is None for _ in range(100))


def test_halted_client_is_refused_first(tmp_path: Path) -> None:
    """A halted client's every order is refused ``halted…``, even one another limit would refuse;
    the others trade on; after resume it trades again."""
    risk = Risk(limits_cfg(CFG, tmp_path).risk)
    risk.halted = frozenset({"tight"})
    for qty in (1, 10_000):
        got = risk.check("tight", "AAPL", "BUY", qty, 1.0, 0, 0.0)
        assert got is not None and got.startswith("halted"), got
    assert risk.check("other", "AAPL", "BUY", 1, 1.0, 0, 0.0) is None
    risk.halted = frozenset()
    assert risk.check("tight", "AAPL", "BUY", 1, 1.0, 0, 0.0) is None


def test_risk_config_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = limits_cfg(CFG, tmp_path)
    assert cfg.risk.default == RiskLimits(100, 2, 0.0)
    assert cfg.risk.limits("tight") == RiskLimits(10, 2, 500.5)
    assert cfg.risk.limits("free rate") == RiskLimits(100, 0, 0.0)
    assert cfg.risk.limits("unknown") == cfg.risk.default
    assert limits_cfg("", tmp_path).risk.limits("x") == RiskLimits(0, 0, 0.0)  # no [risk]: no limits


# (id, TOML text, text the one-line error must contain)
BAD = [
    ("unknown_key", "[risk]\nmax_pos = 1\n", "risk.max_pos: unknown key"),
    ("negative", "[risk]\nmax_position = -1\n", "risk.max_position: must not be negative"),
    ("float_for_int", "[risk]\nmax_orders_per_s = 1.5\n", "risk.max_orders_per_s: expected int"),
    ("string_for_float", '[risk]\nmax_notional = "lots"\n', "risk.max_notional: expected float"),
    ("bool", "[risk]\nmax_notional = true\n", "risk.max_notional: expected float"),
    ("not_a_table", "risk = 3\n", "risk: expected a table"),
    ("clients_not_a_table", "[risk]\nclients = 3\n", "risk.clients: expected a table"),
    ("client_not_a_table", '[risk.clients]\n"c1" = 3\n', 'risk.clients."c1": expected a table'),
    ("client_unknown_key", '[risk.clients."c1"]\nmax_qty = 3\n', 'risk.clients."c1".max_qty: unknown key'),
    ("client_negative", '[risk.clients."c1"]\nmax_notional = -5\n', 'risk.clients."c1".max_notional: must not be'),
    ("client_id_not_ascii", '[risk.clients."café"]\nmax_position = 1\n', "printable ASCII"),
    ("client_id_empty", '[risk.clients.""]\nmax_position = 1\n', "risk.clients.\"\""),
]


@pytest.mark.parametrize(("text", "names"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_risk_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as e:
        limits_cfg(text, tmp_path)
    assert names in str(e.value) and "\n" not in str(e.value), str(e.value)
