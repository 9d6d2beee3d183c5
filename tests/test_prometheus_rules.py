"""The alerting and recording rules, tested as Prometheus users test them: promtool check
config, check rules, and test rules with deploy/prometheus/rules_test.yml; then that every
alert is tested firing and not firing, has its runbook in the README, and uses only metrics
the metrics program exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from shared import config, metrics, promconf

PROM = config.ROOT / "deploy" / "prometheus"
RULES = yaml.safe_load((PROM / "rules.yml").read_text())
TESTS = yaml.safe_load((PROM / "rules_test.yml").read_text())
ALERTS = [r for g in RULES["groups"] for r in g["rules"] if "alert" in r]
RECORDS = [r for g in RULES["groups"] for r in g["rules"] if "record" in r]
REQUIRED = ("TradestackProgramDown", "TradestackBookStale", "TradestackOrderEntryUnavailable",
            "TradestackRejectsHigh", "TradestackTickToTradeSlow")


def promtool(*args: str, cwd: Path = PROM) -> str:
    """Run promtool; fail with its output (or with how to get it, when it is missing)."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found on PATH: `deploy/install test` installs it with Debian's "
                    "prometheus package (apt-get install prometheus)")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def test_promtool_check_config() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in out and "rules.yml" in out  # it checks the rule files it names too


def test_promtool_check_rules() -> None:
    assert f"SUCCESS: {len(ALERTS) + len(RECORDS)} rules found" in promtool("check", "rules", "rules.yml")


def test_promtool_test_rules() -> None:
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in TESTS["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t["exp_alerts"] else quiet).add(t["alertname"])
    names = {a["alert"] for a in ALERTS}
    assert set(REQUIRED) <= names
    assert names - firing == set(), "never seen firing"
    assert names - quiet == set(), "never seen not firing"
    recorded = {r["record"] for r in RECORDS}
    exprs = " ".join(t["expr"] for c in TESTS["tests"] for t in c.get("promql_expr_test", []))
    assert {r for r in recorded if r not in exprs} == set(), "recording rules without a test"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_each_alert_says_what_to_do_and_where(alert: dict[str, Any]) -> None:
    ann = alert["annotations"]
    assert ann["summary"] and ann["description"]
    assert ann["runbook"] == f"README.md, Prometheus > Alerts > {alert['alert']}"
    assert alert["labels"]["severity"] in ("critical", "warning")
    readme = (config.ROOT / "README.md").read_text()
    alerts = readme[readme.index("#### Alerts"):]
    assert f"`{alert['alert']}`" in alerts, "no runbook entry in README's Alerts"


def exported() -> set[str]:
    """Every series name the metrics program exposes (counters get _total, histograms their parts)."""
    src = Path(metrics.__file__).read_text()
    names = {"up"}  # Prometheus's own, per target
    for kind, name in re.findall(r"(Counter|Gauge|Histogram)MetricFamily,?\s*\(?\s*\"(tradestack_\w+)\"", src):
        names |= {"Counter": {f"{name}_total"}, "Gauge": {name},
                  "Histogram": {f"{name}_bucket", f"{name}_count", f"{name}_sum"}}[kind]
    for name in re.findall(r"\.family\(\s*\"(tradestack_\w+)\"", src):  # metrics.Histogram's families
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_rules_use_only_exported_metrics() -> None:
    have = exported()
    assert {"tradestack_program_up", "tradestack_order_rejects_total", "tradestack_tick_to_trade_seconds_bucket",
            "tradestack_program_restarts_total"} <= have
    for rule in [*ALERTS, *RECORDS]:
        used = set(re.findall(r"(?<![:\w])(tradestack_\w+|up)(?![\w:])", rule["expr"]))
        assert used and used <= have, (rule.get("alert") or rule["record"], used - have)


def test_shipped_prometheus_yml_is_the_rendered_default() -> None:
    assert (PROM / "prometheus.yml").read_text() == promconf.render(config.Config(), rules="rules.yml")


def test_a_fleets_rendered_config_passes_promtool(tmp_path: Path) -> None:
    cfg = config.parse({"metrics": {"host": "0.0.0.0", "port": 9200},
                        "prometheus": {"enabled": True, "targets": ["10.0.0.2:9108", "10.0.0.3:9108"],
                                       "scrape_interval": "1s", "evaluation_interval": "1s"}})
    (tmp_path / "prometheus.yml").write_text(promconf.render(cfg))
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    doc = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert doc["rule_files"] == [str(promconf.RULES)]
    assert doc["scrape_configs"][0]["static_configs"][0]["targets"] == \
        ["127.0.0.1:9200", "10.0.0.2:9108", "10.0.0.3:9108"]


def test_reject_series_exist_before_the_first_reject() -> None:
    """increase() cannot count a series' first sample: each client's ``unavailable`` (and
    ``risk``) series is exported at 0 before any reject, so the first one fires the alert."""
    cfg = config.parse({"strategies": {"momentum": {}}})
    a = SimpleNamespace(cfg=cfg, clients={}, rejects={("strategy-1", "risk"): 2}, reconnects={}, gaps={},
                        levels={}, faults={})
    fam = next(f for f in metrics._orders(a) if f.name == "tradestack_order_rejects")
    got = {(s.labels["client_id"], s.labels["reason"]): s.value for s in fam.samples}
    assert got == {("strategy-1", "risk"): 2, ("strategy-1", "unavailable"): 0,
                   ("momentum", "risk"): 0, ("momentum", "unavailable"): 0}
